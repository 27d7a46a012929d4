"""Released-checkpoint interop: key mapping against the release's TSV spec, exact round trip, evaluation, CLI."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from suite.cli import main
from suite.checkpoints import sha256_file
from suite.data import NUM_CLASSES, DataConfig, build_data
from suite.release import (
    DDP_PREFIX, CheckpointMismatch, InteropError, build_release_model, export_release_checkpoint,
    load_release_checkpoint, release_layout, SETTINGS as RELEASE_SETTINGS,
)
from suite.methods import mbquant
from suite.collect import load_runs
from suite.tracking import tracking_uri
from suite.trainer import evaluate

SPEC = Path(__file__).resolve().parent / "reference"  # the release's key lists (see reference/README.md)
SETTINGS = {"2468": [2, 4, 6, 8], "234": [2, 3, 4]}
BOUND = re.compile(r"^(.*)\.(uW|lW|uA|lA)\.(\d)$")
SUITE_BOUND = {"uW": "w_upper", "lW": "w_lower", "uA": "a_upper", "lA": "a_lower"}


def read_tsv(setting: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    rows = []
    for line in (SPEC / f"cifar_resnet20_{setting}_state_dict.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(eval(shape)), getattr(torch, dtype.removeprefix("torch."))))
    return rows


def spec_state_dict(setting: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every key of the release's spec, valid enough to evaluate (positive BN variances,
    lower bound < upper bound), init flags 0."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in read_tsv(setting):
        leaf = key.rsplit(".", 2)[-2] if BOUND.match(key) else key.rsplit(".", 1)[-1]
        if dtype == torch.int64:
            t = torch.zeros(shape, dtype=dtype) if leaf == "init" else torch.randint(0, 10_000, shape, generator=g)
        elif leaf == "running_var":
            t = torch.rand(shape, generator=g) + 0.5
        elif leaf in ("uW", "uA"):
            t = torch.rand(shape, generator=g) + 0.1
        elif leaf in ("lW", "lA"):
            t = -torch.rand(shape, generator=g) - 0.1
        else:
            t = torch.randn(shape, generator=g)
        state[key] = t.to(dtype)
    return state


def release_checkpoint(setting: str, prefix: bool = True, seed: int = 0) -> dict:
    state = spec_state_dict(setting, seed)
    bits = SETTINGS[setting]
    return {
        "epoch": 200, "arch": "resnet20_quant",
        "state_dict": {(DDP_PREFIX if prefix else "") + k: v for k, v in state.items()},
        "acc1": np.array([60.0 + b for b in bits]), "best_acc1": np.float64(66.5),
        "optimizer_m": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]},
        "optimizer_q": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0]}]},
        "scheduler_m": {"last_epoch": 200, "T_max": 200}, "scheduler_q": {"last_epoch": 200, "T_max": 200},
    }


@pytest.fixture(scope="module")
def digits_val():
    cfg = DataConfig(dataset="digits", image_size=8, val_limit=48)
    return build_data(cfg, batch_size=16, seed=0, eval_batch_size=48)


# ------------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("setting", ["2468", "234"])
def test_layout_is_the_release_spec(setting):
    """Every key of the release, with its shape and dtype, in the release's own order."""
    layout = release_layout(build_release_model("resnet20", "cifar100", setting))
    assert [(e.key, e.shape, e.dtype) for e in layout] == read_tsv(setting)
    ignored = {e.key for e in layout if e.suite_key is None}
    assert all(re.search(r"\.(output_scale\.\d|bkwd_scaling_factor[WA]|init)$", k) for k in ignored)
    assert len(ignored) == 20 * (7 + 2 + 1)  # 20 quantized convs x (output scales, bkwd W/A, init)


@pytest.mark.parametrize("name, arch, setting, tsv", [
    ("resnet18", "resnet18_quant", "2468", "imagenet_resnet18_2468"),
    ("resnet18", "resnet18_quant", "234", "imagenet_resnet18_234"),
    ("mobilenetv1", "mv1_quant", "2468", "imagenet_mobilenetv1_2468"),
])
def test_imagenet_layouts_are_the_release_spec(name, arch, setting, tsv):
    """The generic mapping rules reproduce the release's ImageNet key lists exactly, in order."""
    layout = release_layout(build_release_model(name, "imagenet", setting))
    rows = [line.split("\t") for line in (SPEC / f"{tsv}_state_dict.tsv").read_text().splitlines()]
    assert [(e.key, e.shape, str(e.dtype)) for e in layout] == [(k, tuple(eval(s)), d) for k, s, d in rows]


def _configuration(model: torch.nn.Module) -> list:
    """Every module's class, plain attributes (strategy, release quirks, conv kernel...) and tensor shapes."""
    return [(path, type(m).__name__, {k: v for k, v in vars(m).items() if not k.startswith("_")},
             {k: tuple(v.shape) for k, v in m.state_dict(keep_vars=True).items() if "." not in k})
            for path, m in model.named_modules()]


@pytest.mark.parametrize("name, dataset", [("resnet20", "cifar100"), ("resnet8", "cifar10"),
                                           ("resnet18", "imagenet"), ("mobilenetv1", "imagenet")])
@pytest.mark.parametrize("setting", ["2468", "234"])
def test_release_model_is_what_mbquant_builds_for_variant_release(name, dataset, setting):
    """The release format builds its model from the registry without the method: the same network, layer for layer."""
    bits, selection = RELEASE_SETTINGS[setting]
    options = mbquant.Options(selection=selection, variant="release", branches=4)
    expected = mbquant.build(name, NUM_CLASSES[dataset], bits, options).model
    assert _configuration(build_release_model(name, dataset, setting)) == _configuration(expected)

def test_unknown_names_list_the_known_ones():
    with pytest.raises(InteropError, match="unknown model 'resnet50'; known: resnet20, resnet8, resnet18, mobilenetv1"):
        build_release_model("resnet50")
    with pytest.raises(InteropError, match="unknown setting '246'; known: 2468, 234"):
        build_release_model("resnet20", setting="246")
    with pytest.raises(InteropError, match="unknown dataset 'svhn'"):
        build_release_model("resnet20", dataset="svhn")


# ------------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("setting", ["2468", "234"])
@pytest.mark.parametrize("prefix", [True, False], ids=["ddp", "plain"])
def test_import_puts_every_tensor_where_the_mapping_says(tmp_path, setting, prefix):
    ckpt = release_checkpoint(setting, prefix)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)
    model, report = load_release_checkpoint(path, "resnet20", "cifar100", setting, return_report=True)
    state = spec_state_dict(setting)
    assert report.prefix == (DDP_PREFIX if prefix else "")
    assert set(report.loaded) | set(report.ignored) == set(state) and not set(report.loaded) & set(report.ignored)
    assert len(report.loaded) == 1253 - 200 and report.metadata["epoch"] == 200
    assert model.bits == SETTINGS[setting] and not model.training

    modules = dict(model.named_modules())
    own = model.state_dict()
    for key in report.loaded:  # independent re-derivation of each target from the key's name
        m = BOUND.match(key)
        if m:
            path_, name, slot = m.groups()
            got = getattr(modules[path_], SUITE_BOUND[name])[int(slot)]
        else:
            got = own[key]
        assert torch.equal(got, state[key]), key
    conv = modules["layer1.0.conv1"]
    assert torch.equal(conv.a_upper[2], state["layer1.0.conv1.uA.2"])
    assert torch.equal(conv.w_lower[3], state["layer1.0.conv1.lW.3"])
    assert report.loaded["layer1.0.conv1.uA.2"] == "layer1.0.conv1.a_upper[2]"
    shortcut_bn = modules["layer2.0.shortcut.1"].bn[3]
    assert torch.equal(shortcut_bn.running_mean, state["layer2.0.shortcut.1.bn.3.running_mean"])
    assert torch.equal(modules["layer3.2.bn2"].bn[7].weight, state["layer3.2.bn2.bn.7.weight"])
    assert "never read" in report.ignored["layer1.0.conv1.output_scale.6"]


def test_bare_state_dict_and_loaded_dict_are_accepted():
    model, report = load_release_checkpoint(spec_state_dict("2468"), return_report=True)
    assert report.metadata == {} and report.prefix == ""
    assert torch.equal(model.fc.bias, spec_state_dict("2468")["fc.bias"])


@pytest.mark.parametrize("setting", ["2468", "234"])
def test_round_trip_is_exact(tmp_path, setting):
    original = tmp_path / "release.pth.tar"
    torch.save(release_checkpoint(setting, prefix=True), original)
    model = load_release_checkpoint(original, setting=setting)
    exported = export_release_checkpoint(model, tmp_path / "exported.pth.tar")

    a = torch.load(original, weights_only=False)
    b = torch.load(exported, weights_only=False)
    assert list(b) == ["epoch", "arch", "state_dict", "acc1", "best_acc1", "optimizer_m", "optimizer_q",
                       "scheduler_m", "scheduler_q"]
    assert (b["epoch"], b["arch"], b["best_acc1"]) == (a["epoch"], a["arch"], a["best_acc1"])
    assert isinstance(b["acc1"], np.ndarray) and np.array_equal(b["acc1"], a["acc1"])
    assert all(b[k] is None for k in ("optimizer_m", "optimizer_q", "scheduler_m", "scheduler_q"))
    sa, sb = a["state_dict"], b["state_dict"]
    assert list(sb) == list(sa)  # same keys, same order, prefix kept
    for k in sa:
        assert sb[k].shape == sa[k].shape and sb[k].dtype == sa[k].dtype, k
        assert torch.equal(sb[k], sa[k]), k
        assert sb[k].untyped_storage().nbytes() == sb[k].numel() * sb[k].element_size(), k  # no shared storage
    # and without the prefix, for the release run without DDP
    plain = torch.load(export_release_checkpoint(model, tmp_path / "plain.pth", ddp_prefix=False), weights_only=False)
    assert list(plain["state_dict"]) == [k[len(DDP_PREFIX):] for k in sa]


@pytest.mark.parametrize("setting", ["2468", "234"])
def test_imported_model_evaluates_at_every_bit_width(digits_val, setting):
    model = load_release_checkpoint(release_checkpoint(setting), setting=setting)
    x, _ = next(iter(digits_val.val))
    with torch.no_grad():
        for b in SETTINGS[setting]:
            model.set_bits(b)
            logits = model(x)
            assert logits.shape == (len(x), 100) and torch.isfinite(logits).all(), b
    results = evaluate(model, SETTINGS[setting], digits_val.val, torch.device("cpu"))
    assert sorted(results) == SETTINGS[setting]
    assert all(0 <= t1 <= t5 <= 100 for t1, t5 in results.values())


# -------------------------------------------------------------------------------------------------- errors


def _mismatch(state) -> str:
    with pytest.raises(CheckpointMismatch) as info:
        load_release_checkpoint({"state_dict": state, "epoch": 1})
    return str(info.value)


def test_unknown_key_is_named():
    state = spec_state_dict("2468")
    state["layer1.0.conv1.alpha"] = torch.zeros(3)
    assert "unknown key: layer1.0.conv1.alpha (found shape (3,)" in _mismatch(state)


def test_missing_key_is_named():
    state = spec_state_dict("2468")
    del state["layer2.0.shortcut.1.bn.3.running_var"]
    del state["layer3.0.conv1.init"]  # an ignored key must be present too
    msg = _mismatch(state)
    assert "missing key: layer2.0.shortcut.1.bn.3.running_var (expected shape (88,)" in msg
    assert "missing key: layer3.0.conv1.init (expected shape (1,)" in msg


def test_wrong_shape_names_key_and_both_shapes():
    state = spec_state_dict("2468")
    state["layer1.0.conv1.uA.2"] = torch.zeros(6)
    assert "shape mismatch: layer1.0.conv1.uA.2: expected (7,), found (6,)" in _mismatch(state)


def test_wrong_class_count_names_the_dataset(tmp_path):
    with pytest.raises(CheckpointMismatch, match=r"(?s)digits: 10 classes.*fc.weight: expected \(10, 64\), "
                                                 r"found \(100, 64\)"):
        load_release_checkpoint(release_checkpoint("2468"), dataset="digits")


def test_uncalibrated_flag_warns():
    state = spec_state_dict("2468")
    state["layer1.0.conv1.init"] = torch.ones(1, dtype=torch.int64)
    with pytest.warns(UserWarning, match="init != 0"):
        load_release_checkpoint(state)


# --------------------------------------------------------------------------------------- export + CLI, end to end


def _calibrated_digits_model():
    torch.manual_seed(0)
    data = build_data(DataConfig(dataset="digits", image_size=8), batch_size=32, seed=0)
    trainable = mbquant.build("resnet20", 10, [2, 4, 6, 8], mbquant.Options())
    trainable.initialize(trainable.model, iter(data.train))
    return trainable.model


def test_export_of_a_suite_model_then_cli_import_is_tracked(tmp_path, digits_val, capsys):
    model = _calibrated_digits_model()
    path = export_release_checkpoint(model, tmp_path / "suite_digits.pth.tar", epoch=3, acc1=[10, 20, 30, 40])
    raw = torch.load(path, weights_only=False)
    sd = raw["state_dict"]
    assert raw["arch"] == "resnet20_quant" and raw["epoch"] == 3 and raw["best_acc1"] == 25.0
    assert all(k.startswith(DDP_PREFIX) for k in sd)
    assert sd["module.layer1.0.conv1.output_scale.4"].item() == 1.0  # the release's option.py defaults
    assert sd["module.layer1.0.conv1.bkwd_scaling_factorA"].item() == 0.0
    assert sd["module.layer1.0.conv1.init"].tolist() == [0]

    # The exported checkpoint reproduces the model's logits exactly at every bit-width.
    reimported = load_release_checkpoint(path, dataset="digits")
    x, _ = next(iter(digits_val.val))
    model.eval()
    with torch.no_grad():
        for b in model.bits:
            model.set_bits(b), reimported.set_bits(b)
            assert torch.equal(model(x), reimported(x)), b

    results = tmp_path / "results"
    argv = ["import-checkpoint", str(path), "--model", "resnet20", "--dataset", "digits", "--setting", "2468",
            "--set", "data.image_size=8", "--set", "data.val_limit=48", "--results", str(results)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top-1 %" in out and "checkpoint acc1 %" in out and "release-checkpoints" in out

    runs = load_runs(results)
    assert sorted(runs["bits"]) == [2, 4, 6, 8]
    row = runs.iloc[0]
    assert row["manifest"] == "release_digits_resnet20_2468" and row["profile"] == "smoke"
    assert row["method"] == "mbquant" and row["dataset"] == "digits" and row["model"] == "resnet20"
    assert runs["top1"].between(0, 100).all() and runs["top5"].between(0, 100).all()
    run = MlflowClient(tracking_uri(results)).get_run(row["run_id"])
    digest = sha256_file(path)
    assert run.data.tags["suite.checkpoint_sha256"] == digest == run.data.params["checkpoint.sha256"]
    assert run.data.params["checkpoint.path"] == str(path.resolve())
    assert run.data.metrics["release_acc1_b6"] == 30.0
    expected = evaluate(reimported, [2, 4, 6, 8], digits_val.val, torch.device("cpu"))
    for b, (t1, t5) in expected.items():
        assert run.data.metrics[f"final_top1_b{b}"] == pytest.approx(t1)
        assert run.data.metrics[f"final_top5_b{b}"] == pytest.approx(t5)

    # A mismatched dataset (100 classes expected) is a message and exit code 2, not a traceback.
    assert main(["import-checkpoint", str(path), "--dataset", "cifar100", "--results", str(results)]) == 2
    assert "fc.weight: expected (100, 64), found (10, 64)" in capsys.readouterr().err


def test_cli_missing_cifar_folder_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "release.pth.tar"
    torch.save(release_checkpoint("2468"), path)
    argv = ["import-checkpoint", str(path), "--dataset", "cifar100", "--data-root", str(tmp_path / "nowhere"),
            "--results", str(tmp_path / "results")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CIFAR-100 not found" in err and str(tmp_path / "nowhere") in err
    assert not (tmp_path / "results").exists()  # nothing tracked before the data is there


def test_arbitrary_pickles_need_trust(tmp_path):
    import argparse

    path = tmp_path / "with_args.pth"
    torch.save({**release_checkpoint("2468"), "args": argparse.Namespace(arch="resnet20_quant")}, path)
    with pytest.raises(InteropError, match="trusted=True"):
        load_release_checkpoint(path)
    assert load_release_checkpoint(path, trusted=True).bits == [2, 4, 6, 8]


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"a text file, not a checkpoint\n", "is not a readable PyTorch checkpoint"),
    ("truncated", "is not a readable PyTorch checkpoint, or is truncated"),
])
def test_unreadable_checkpoint_files_get_one_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.pth.tar"
    if content == "truncated":
        torch.save(release_checkpoint("2468"), path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    assert main(["import-checkpoint", str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {message}") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_a_checkpoint_is_refused_for_a_setting_it_does_not_serve():
    """Both settings store the same keys and shapes; what differs is which bit-widths were ever calibrated."""
    for trained, asked, never_calibrated, first_missing in (("2468", "234", {3, 5, 7}, 3), ("234", "2468", {5, 6, 7, 8}, 6)):
        state = spec_state_dict(trained)
        for key in [k for k in state if ".uA." in k or ".lA." in k]:
            for b in never_calibrated:
                state[key][b - 2] = 0
        with pytest.raises(CheckpointMismatch, match=rf"does not serve setting {asked}.*conv1\.uA\.0\[{first_missing - 2}\]"):
            load_release_checkpoint(state, setting=asked)
        assert load_release_checkpoint(state, setting=trained).bits == SETTINGS[trained]
