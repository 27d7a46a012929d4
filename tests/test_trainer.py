"""The shared trainer: loss policies, a falling loss, resume after a kill, no second run of a finished one."""
import json

import pytest
import torch
import torch.nn.functional as F

from helpers import stop_after_epoch
from suite.checkpoints import CheckpointSeries
from suite.data import DataConfig, build_data
from suite.methods import mbquant
from suite.losses import inplace_distillation, labels_only, recursive_distillation, soft_cross_entropy
from suite.methods.common import weight_groups
from suite.trainer import Recipe, fit, seed_everything

TINY = Recipe(epochs=4, batch_size=32, lr=0.1, steps_per_epoch=6, eval_batch_size=256)


class Killed(Exception):
    """A process killed mid-run, as the trainer sees it."""


def tiny_data(seed=0):
    return build_data(DataConfig(dataset="digits", image_size=8, train_limit=192, val_limit=96), 32, seed)


def tiny_trainable(distillation="inplace", seed=0):
    seed_everything(seed)
    return mbquant.build("resnet8", 10, [2, 4, 6, 8], mbquant.Options(distillation=distillation))


def test_loss_policies_follow_the_spec():
    torch.manual_seed(0)
    y = torch.randint(0, 5, (6,))
    z8, z6, z4 = torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 5)
    ce = F.cross_entropy
    # In-place distillation: the largest bit-width (run first) on labels; every other one half soft-CE
    # against the largest's softmax, half CE.
    assert torch.equal(inplace_distillation(z8, y, []), ce(z8, y))
    expected = 0.5 * (-(F.softmax(z8, 1) * F.log_softmax(z4, 1)).sum(1).mean() + ce(z4, y))
    assert torch.allclose(inplace_distillation(z4, y, [z8, z6]), expected)
    # Off: plain CE for everyone. Recursive: the next higher bit-width teaches.
    assert torch.equal(labels_only(z4, y, [z8, z6]), ce(z4, y))
    assert torch.allclose(recursive_distillation(z4, y, [z8, z6]), soft_cross_entropy(z4, z6))


def test_joint_step_runs_bit_widths_descending_with_the_largest_as_teacher(tmp_path):
    trainable = tiny_trainable()
    seen, policy = [], trainable.loss

    def spy(logits, targets, earlier):
        seen.append((trainable.model.layer1[0].conv1.active_bits, len(earlier)))
        return policy(logits, targets, earlier)

    trainable.loss = spy
    data = tiny_data()
    fit(trainable, data.train, data.val, Recipe(epochs=1, batch_size=32, steps_per_epoch=1), seed=0,
        run_dir=tmp_path, progress=False)
    assert seen == [(8, 0), (6, 1), (4, 2), (2, 3)]


@pytest.mark.parametrize("distillation", ["inplace", "none"])
def test_a_few_steps_lower_the_loss(tmp_path, distillation):
    data = tiny_data()
    result = fit(tiny_trainable(distillation), data.train, data.val, TINY, seed=0, run_dir=tmp_path, progress=False)
    first, last = result.history[0]["train_loss_mean"], result.history[-1]["train_loss_mean"]
    assert last < 0.8 * first
    assert set(result.final) == {2, 4, 6, 8}


def test_killed_run_resumes_to_the_same_result_and_finished_run_is_not_rerun(tmp_path):
    data = tiny_data()
    straight = fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "a", progress=False)
    with pytest.raises(Killed):
        fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False,
            log=stop_after_epoch(0, Killed))
    assert list((tmp_path / "b").glob("last-*.pt")) and not (tmp_path / "b" / "result.json").exists()
    resumed = fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from == 1
    assert [h["train_loss_mean"] for h in resumed.history] == [h["train_loss_mean"] for h in straight.history]
    assert resumed.final == straight.final

    logged = []
    again = fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False,
                log=lambda m, e: logged.append(e))
    assert again.already_finished and not logged and again.final == straight.final
    assert json.loads((tmp_path / "b" / "result.json").read_text())["best_epoch"] == straight.best_epoch


def test_weight_decay_exemptions_follow_the_recipe():
    t = mbquant.build("mobilenetv1", 10, [2, 4], mbquant.Options())
    quantizer = t.params_of("quantizer")
    plain = weight_groups(t.model, Recipe(), exclude=quantizer)
    assert len(plain) == 1  # every weight decays (the ResNet recipes)
    groups = weight_groups(t.model, Recipe(no_weight_decay_on=["bn", "depthwise"]), exclude=quantizer)
    exempt = {id(p) for p in groups[1].params}
    assert groups[1].weight_decay == 0.0
    dw = t.model.stage_1_layer_0.body[0].weight
    assert id(dw) in exempt and id(t.model.stage_1_layer_0.body[3].weight) not in exempt
    assert id(t.model.head[1].weight) in exempt and id(t.model.classifier.bias) not in exempt
    quant = {id(p) for p in quantizer}
    assert not quant & {id(p) for g in groups for p in g.params}


def test_compiled_training_forward_gives_the_eager_run(tmp_path, monkeypatch):
    """``recipe.compile`` trains through torch.compile(model) (here its graph-capture-only ``eager`` backend, which
    needs no compiler): same losses and accuracies as the eager run, checkpoints keyed like the eager model's."""
    compiled, real_compile = [], torch.compile

    def capture_only(model, mode):
        compiled.append((model, mode))
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", capture_only)
    data = tiny_data()
    short = Recipe(epochs=1, batch_size=32, lr=0.1, steps_per_epoch=2, eval_batch_size=256)
    eager = fit(tiny_trainable(), data.train, data.val, short, seed=0, run_dir=tmp_path / "eager", progress=False)
    assert not compiled
    on = Recipe(**{**short.__dict__, "compile": True})
    trainable = tiny_trainable()
    graph = fit(trainable, data.train, data.val, on, seed=0, run_dir=tmp_path / "compiled", progress=False)
    assert compiled == [(trainable.model, "default")]
    assert graph.history == eager.history and graph.final == eager.final
    saved, _ = CheckpointSeries(tmp_path / "compiled", "best").latest()
    assert saved["model"].keys() == trainable.model.state_dict().keys()
