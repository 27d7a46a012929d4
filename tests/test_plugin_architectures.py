"""An architecture from outside the tree: defined in this file, registered at run time, and trained by every
built-in method that builds on its topology, through the cost counter and the switching-error analysis; then
run from a manifest with ``--plugin`` and through the ``suite.models`` entry-point group."""
from importlib.metadata import EntryPoint

import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow.tracking import MlflowClient
from torch import nn

import suite.models as models
import suite.registry
from suite.cli import main
from suite.costs import measure_cost
from suite.data import DataConfig, build_data
from suite.layers.base import QuantizedLayer
from suite.methods import BUILT_IN, method, supported_archs
from suite.models.base import BitSwitchable
from suite.quant_error import measure_switching_error
from suite.tracking import tracking_uri
from suite.trainer import Recipe, fit

WIDTH, SIDE = 8, 8


# -- the toy architecture: everything a new single-branch network needs, in one file -----------------------------

class ToyNet(BitSwitchable):
    """FP stem -> two body convs + norms from the method's factories -> global pool -> FP classifier."""

    def __init__(self, *, num_classes, bits, conv, norm):
        super().__init__()
        self.bits = list(bits)
        self.stem, self.stem_bn = nn.Conv2d(3, WIDTH, 3, 1, 1, bias=False), nn.BatchNorm2d(WIDTH)
        self.conv1, self.bn1 = conv(WIDTH, WIDTH, 3, 1, 1), norm(WIDTH)
        self.conv2, self.bn2 = conv(WIDTH, WIDTH, 3, 1, 1), norm(WIDTH)
        self.fc = nn.Linear(WIDTH, num_classes)
        self.set_bits(max(self.bits))

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))

    def dataflow(self):
        """(body norm, the conv it follows, the body conv that conv reads or None after the stem)."""
        yield self.bn1, self.conv1, None
        yield self.bn2, self.conv2, self.conv1


def toy_net(**kwargs):
    return ToyNet(**kwargs)


PLUGIN = '''
from suite.models import register_model
from test_plugin_architectures import ToyNet


@register_model("toy_net")
def toy_net(**kwargs):
    return ToyNet(**kwargs)
'''


@pytest.fixture
def toy_arch():
    models.register_model("toy_net", toy_net)
    yield "toy_net"
    models.MODELS.pop("toy_net", None)


def manifest_doc(arch: str, method_name: str) -> dict:
    return {
        "name": "toy_arch", "version": 1, "title": "a plugin architecture", "paper": {"ref": "none"},
        "data": {"dataset": "digits", "image_size": SIDE, "train_limit": 64, "val_limit": 32},
        "model": {"arch": arch}, "method": {"name": method_name, "bits": [2, 4]},
        "recipe": {"epochs": 1, "batch_size": 32, "steps_per_epoch": 2},
        "seeds": [0], "profiles": {"paper": {}}, "analyses": ["quant_error"],
    }


# -- the tests --------------------------------------------------------------------------------------------------

def test_every_single_branch_method_trains_costs_and_switches_on_a_new_architecture(toy_arch, tmp_path):
    runnable = [name for name in BUILT_IN if toy_arch in supported_archs(name)]  # plugins other tests added aside
    assert sorted(runnable) == ["adabits", "anyprecision", "bitmixer", "dedicated"]  # MBQuant has its own networks
    bits = [2, 4, 8]
    data = build_data(DataConfig(dataset="digits", image_size=SIDE, train_limit=64, val_limit=32), 32, 0)
    body_macs = 2 * WIDTH * WIDTH * 9 * SIDE * SIDE  # two 3x3 WIDTH -> WIDTH convs at SIDE x SIDE
    for name in runnable:
        spec = method(name)
        torch.manual_seed(0)
        trainable = spec.build(toy_arch, 10, bits, spec.Options())
        before = [p.detach().clone() for p in trainable.model.parameters()]
        result = fit(trainable, data.train, data.val, Recipe(epochs=1, batch_size=32, lr=0.1, steps_per_epoch=2),
                     seed=0, run_dir=tmp_path / name, progress=False)
        assert len(result.history) == 1, name
        assert any(not torch.equal(a, p) for a, p in zip(before, trainable.model.parameters())), name

        model = trainable.model
        for b in bits:
            cost = measure_cost(model, b, (3, SIDE, SIDE))
            assert (cost.quantized_macs, cost.quantized_bitops) == (body_macs, b * b * body_macs), (name, b)
        assert spec.storage_bits(model)["weights"] > 0, name

        table = measure_switching_error(model, bits, next(iter(data.val))[0])
        layers = table[table["layer"] != "logits"]
        quantized = sum(isinstance(m, QuantizedLayer) for m in model.serving(max(bits)).modules())
        assert quantized == 2 and len(layers) == quantized * (len(bits) - 1), name
        assert (layers["output_drift"] > 0).all(), name


def test_a_plugin_architecture_runs_from_a_manifest_with_training_and_analysis(tmp_path, results_dir, monkeypatch,
                                                                               capsys):
    (tmp_path / "toy_arch_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    manifest = tmp_path / "toy_arch.yaml"
    manifest.write_text(yaml.safe_dump(manifest_doc("toy_net", "adabits")))
    argv = ["run", str(manifest), "--results", str(results_dir), "--no-progress"]
    assert main(argv) == 2 and "'toy_net' is not an architecture adabits builds" in capsys.readouterr().err
    try:
        assert main([*argv, "--plugin", "toy_arch_plugin"]) == 0
    finally:
        models.MODELS.pop("toy_net", None)
    client = MlflowClient(tracking_uri(results_dir))
    exp = client.get_experiment_by_name("toy_arch")
    [run] = client.search_runs([exp.experiment_id], "tags.`suite.kind` = 'arm-run' and attributes.status = 'FINISHED'")
    assert any(k.startswith("qerr_") for k in run.data.metrics), run.data.metrics


def test_a_plugin_that_provides_nothing_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty_plugin.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", "x.yaml", "--plugin", "empty_plugin"]) == 2
    assert "plugin 'empty_plugin' defines no METHOD (a suite.methods.Method) and registers no architecture" \
        in capsys.readouterr().err


def test_entry_points_register_installed_architectures(monkeypatch):
    found = [EntryPoint("toy_net", "test_plugin_architectures:toy_net", models.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(suite.registry, "entry_points", lambda group: found if group == models.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(models.load_entry_points, "loaded", False)
    try:
        assert "toy_net" in supported_archs("dedicated") and "toy_net" not in supported_archs("mbquant")
        assert isinstance(models.create_model("toy_net", num_classes=3, bits=[4], conv=nn.Conv2d,
                                              norm=nn.BatchNorm2d), ToyNet)
    finally:
        models.MODELS.pop("toy_net", None)


def test_a_broken_entry_point_is_named_when_used(monkeypatch):
    found = [EntryPoint("gone", "no_such_package_anywhere:net", models.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(suite.registry, "entry_points", lambda group: found)
    monkeypatch.setattr(models.load_entry_points, "loaded", False)
    try:
        assert "gone" in supported_archs("dedicated")  # listed without importing it
        with pytest.raises(ValueError, match=r"entry point gone = no_such_package_anywhere:net \(suite.models\) "
                                             "failed to load: No module named 'no_such_package_anywhere'"):
            models.create_model("gone")
    finally:
        if "gone" in models.MODELS:
            del models.MODELS["gone"]  # not pop: that would load it
