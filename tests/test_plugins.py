"""A method from outside the tree: defined in this file, registered as a plugin, and run through the trainer, the
cost counter, the switching-error analysis and a manifest on the command line, exactly like a built-in one."""
from dataclasses import dataclass
from functools import partial
from importlib.metadata import EntryPoint

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import suite.methods as registry
from helpers import EXPERIMENTS
import suite.registry
from suite.cli import main
from suite.costs import measure_cost
from suite.data import DataConfig, build_data
from suite.layers.base import SingleBranchConv
from suite.layers.norms import PerBitBatchNorm
from suite.layers.quant import discretize
from suite.losses import inplace_distillation
from suite.methods import Method, Trainable
from suite.methods.common import check_bit_list, weight_groups
from suite.models import create_model
from suite.quant_error import measure_switching_error
from suite.tracking import tracking_uri
from suite.trainer import Recipe, fit


# -- the toy method: everything a new method needs, in one file --------------------------------------------------

class MaxScaledConv(SingleBranchConv):
    """Weights scaled by max|w| onto a symmetric b-bit grid, inputs clamped to [0, 1] on 2^b levels."""

    def _weight_at(self, bits):
        scale = self.weight.abs().max().detach()
        return (2 * discretize((self.weight / scale + 1) / 2, 2**bits) - 1) * scale

    def _input_at(self, x, bits):
        return discretize(torch.clamp(x, 0, 1), 2**bits)


@dataclass
class ToyOptions:
    __pydantic_config__ = {"extra": "forbid"}


def build(arch, num_classes, bits, options):
    model = create_model(arch, num_classes=num_classes, bits=bits, conv=MaxScaledConv,
                         norm=partial(PerBitBatchNorm, bits=bits))
    return Trainable(model, list(bits), inplace_distillation, partial(weight_groups, model))


METHOD = Method("toy", ToyOptions, build, lambda bits, options: check_bit_list(bits, "toy"))


# -- the tests --------------------------------------------------------------------------------------------------

@pytest.fixture
def toy():
    registry.register(METHOD)
    yield METHOD
    registry.METHODS.pop("toy", None)


def test_toy_method_trains_costs_and_switches_like_a_builtin(toy, tmp_path):
    bits = [2, 4, 8]
    data = build_data(DataConfig(dataset="digits", image_size=8, train_limit=128, val_limit=64), 32, 0)
    torch.manual_seed(0)
    trainable = registry.method("toy").build("resnet8", 10, bits, ToyOptions())
    result = fit(trainable, data.train, data.val, Recipe(epochs=3, batch_size=32, lr=0.1, steps_per_epoch=4),
                 seed=0, run_dir=tmp_path, progress=False)
    assert result.history[-1]["train_loss_mean"] < result.history[0]["train_loss_mean"]

    model = trainable.model
    costs = {b: measure_cost(model, b, (3, 8, 8)) for b in bits}
    assert all(costs[b].quantized_bitops == b * b * costs[2].quantized_macs for b in bits)
    assert METHOD.storage_bits(model)["weights"] == 32 * sum(m.weight.numel() for m in model.modules()
                                                                if isinstance(m, MaxScaledConv))

    table = measure_switching_error(model, bits, next(iter(data.val))[0])
    layers = table[table["layer"] != "logits"]
    assert len(layers) == 2 * sum(isinstance(m, MaxScaledConv) for m in model.modules())
    assert (layers["weight_error"] > 0).all() and (layers["activation_error"] > 0).all()
    assert layers.groupby("bits")["weight_error"].mean()[2] > layers.groupby("bits")["weight_error"].mean()[4]


def test_plugin_method_runs_as_a_manifest_arm_from_the_command_line(tmp_path, results_dir, capsys):
    manifest = tmp_path / "toy.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "toy_vs_mbquant", "version": 1, "title": "a plugin beside a built-in", "paper": {"ref": "none"},
        "data": {"dataset": "digits", "image_size": 8, "train_limit": 96, "val_limit": 48},
        "model": {"arch": "resnet8"}, "method": {"name": "mbquant", "bits": [2, 4]},
        "recipe": {"epochs": 1, "batch_size": 32, "steps_per_epoch": 2},
        "seeds": [0], "profiles": {"paper": {}},
        "arms": [{"name": "mbquant"}, {"name": "toy", "set": {"method.name": "toy", "method.options": {}}}],
    }))
    argv = ["run", str(manifest), "--results", str(results_dir), "--no-progress"]
    assert main(argv) == 2 and "unknown method 'toy'" in capsys.readouterr().err  # not registered yet
    try:
        assert main([*argv, "--plugin", "test_plugins"]) == 0
    finally:
        registry.METHODS.pop("toy", None)
    client = MlflowClient(tracking_uri(results_dir))
    exp = client.get_experiment_by_name("toy_vs_mbquant")
    runs = client.search_runs([exp.experiment_id], "tags.`suite.kind` = 'arm-run' and attributes.status = 'FINISHED'")
    assert {r.data.tags["suite.method"] for r in runs} == {"mbquant", "toy"}


def test_entry_points_register_installed_methods(monkeypatch):
    found = [EntryPoint("toy", "test_plugins:METHOD", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(suite.registry, "entry_points", lambda group: found if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry.load_entry_points, "loaded", False)
    try:
        assert registry.method("toy") is METHOD
    finally:
        registry.METHODS.pop("toy", None)


def test_bad_plugins_are_named(capsys):
    assert main(["run", "x.yaml", "--plugin", "no_such_module_anywhere"]) == 2
    assert "plugin 'no_such_module_anywhere' cannot be imported" in capsys.readouterr().err
    with pytest.raises(registry.PluginError, match="already registered"):
        registry.register(Method("mbquant", ToyOptions, build))


@pytest.mark.parametrize("body, expect", [
    ("raise RuntimeError('half-written plugin')", "failed while being imported: RuntimeError: half-written plugin"),
    ("import sys\nsys.exit(0)", "called exit(0) while being imported"),
    ("import sys\nsys.exit('bye')", "called exit(bye) while being imported"),
])
def test_a_plugin_that_raises_or_exits_on_import_is_named_and_nothing_runs(body, expect, tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    results = tmp_path / "results"
    argv = ["run", str(EXPERIMENTS / "table3_cifar100_resnet20_2468.yaml"), "--results", str(results)]
    assert main([*argv, "--plugin", "broken_plugin"]) == 2
    err = capsys.readouterr().err
    assert f"error: plugin 'broken_plugin' {expect}" in err and "Traceback" not in err
    assert not results.exists()


@pytest.mark.parametrize("name", ["../x", "plugins/toy.py", "toy.py ", "", ".hidden"])
def test_a_plugin_is_a_module_name_not_a_path(name, capsys):
    assert main(["run", "x.yaml", "--plugin", name]) == 2
    assert "is not a module name" in capsys.readouterr().err
