"""The CUDA path: the same model gives the same logits on the GPU as on the CPU, and the shared trainer trains
and evaluates there; a run stopped mid-epoch resumes exactly; checkpoints move between devices; identical steps
are bitwise identical; bf16 keeps the quantizers in float32; fp32 is not TF32; compile follows eager; the
distributed probe passes. Skipped without a GPU; needs torch and the suite's core (no MLflow, no pydantic);
``tools/gpu-check.sh`` runs it."""
import os
import signal

import pytest
import torch

from suite import interrupts, numerics
from suite.checkpoints import CheckpointSeries
from suite.data import DataConfig, build_data
from suite.layers import adabits as adabits_layers, lsq, quant
from suite.methods import METHODS
from suite.trainer import Recipe, fit, seed_everything, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [  # (method, arch, bits, options, input side)
    ("mbquant", "resnet20", [2, 4, 6, 8], {}, 32),
    ("mbquant", "resnet18", [2, 3, 4], {"selection": "serial"}, 64),
    ("mbquant", "mobilenetv1", [2, 4, 6, 8], {}, 64),
    ("dedicated", "resnet18", [2, 4, 6, 8], {}, 64),
    ("anyprecision", "resnet20", [2, 4, 6, 8], {}, 32),
    ("adabits", "mobilenetv1", [2, 4, 6, 8], {"grid": "centered"}, 64),
    ("bitmixer", "resnet18", [2, 3, 4], {}, 64),
]


def build(name, arch, bits, options):
    seed_everything(0)
    method = METHODS[name]
    return method.build(arch, 10, bits, method.Options(**options))


@pytest.mark.parametrize("name, arch, bits, options, side", CASES, ids=lambda v: str(v))
def test_gpu_logits_match_the_cpu(name, arch, bits, options, side):
    """In float64: in float32 the two devices' summation orders move a few activations across a rounding
    threshold, and a deep network at 2-4 bits amplifies one such flip into logit changes of ~20 % (measured
    between float32 and float64 on the CPU alone), which would hide a real bug."""
    trainable = build(name, arch, bits, options)
    x = torch.rand(8, 3, side, side)
    if trainable.initialize:
        trainable.initialize(trainable.model, [(x, None)] * len(bits))
    model, x = trainable.model.eval().double(), x.double()
    cpu = {}
    with torch.no_grad():
        for b in bits:
            model.set_bits(b)
            cpu[b] = model(x)
        model.cuda()
        for b in bits:
            model.set_bits(b)
            gpu = model(x.cuda()).cpu()
            torch.testing.assert_close(gpu, cpu[b], rtol=1e-6, atol=1e-9 * cpu[b].abs().max().item())


@pytest.mark.parametrize("name, arch, bits, options, side", CASES[:4], ids=lambda v: str(v))
def test_training_on_the_gpu_follows_the_cpu(tmp_path, name, arch, bits, options, side):
    """One epoch of two joint steps through the shared trainer on each device, from the same initialisation and
    batches: the per-bit training losses agree, and the GPU run really ran on the GPU. (float32: a second epoch
    drifts by a few % as rounding flips compound, see above.)"""
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(16, 3, side, side, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    history = {}
    for device in ("cpu", "cuda"):
        trainable = build(name, arch, bits, options)
        recipe = Recipe(epochs=1, batch_size=16, lr=0.05, device=device)
        result = fit(trainable, data, data, recipe, seed=0, run_dir=tmp_path / device, progress=False)
        assert next(trainable.model.parameters()).device.type == device
        assert set(result.final) == set(bits)
        history[device] = torch.tensor([[h[f"train_loss_b{b}"] for b in bits] for h in result.history])
    assert torch.isfinite(history["cuda"]).all()
    torch.testing.assert_close(history["cuda"], history["cpu"], rtol=2e-2, atol=1e-3)


# -- the GPU path's semantics on a real device (tests/test_gpu_path.py holds their CPU stand-ins) ------------------

DIGITS = DataConfig(dataset="digits", image_size=16, train_limit=256, val_limit=128)
CUDA_RECIPE = Recipe(epochs=2, batch_size=32, lr=0.05, steps_per_epoch=5, eval_batch_size=128, device="cuda")


def stopped_by(signum, trainable, at_call):
    """``trainable`` whose loss sends ``signum`` to this process at the ``at_call``-th loss of the run."""
    calls, loss = [], trainable.loss

    def signalling(logits, targets, earlier):
        calls.append(1)
        if len(calls) == at_call:
            os.kill(os.getpid(), signum)
        return loss(logits, targets, earlier)

    trainable.loss = signalling
    return trainable


@pytest.mark.parametrize("name", ["mbquant", "bitmixer"])
def test_a_fit_stopped_mid_epoch_by_sigusr2_resumes_on_the_gpu_to_the_unbroken_result(tmp_path, name):
    """SLURM's warning signal mid-epoch, then a requeue: the checkpoint (RNG states, Adam's step counters) is read
    back onto the GPU run and the resumed run ends bitwise equal to an unbroken one (deterministic kernels)."""
    data = build_data(DIGITS, 32, 0)
    straight = fit(build(name, "resnet8", [2, 4], {}), data.train, data.val, CUDA_RECIPE, seed=0,
                   run_dir=tmp_path / "a", progress=False)
    trainable = stopped_by(signal.SIGUSR2, build(name, "resnet8", [2, 4], {}), 2 * (CUDA_RECIPE.steps_per_epoch + 2) + 1)
    with interrupts.installed(), pytest.raises(interrupts.Interrupted, match="SIGUSR2 in epoch 2 after step 3"):
        fit(trainable, data.train, data.val, CUDA_RECIPE, seed=0, run_dir=tmp_path / "b", progress=False)
    resumed_model = build(name, "resnet8", [2, 4], {})
    resumed = fit(resumed_model, data.train, data.val, CUDA_RECIPE, seed=0, run_dir=tmp_path / "b", progress=False)
    assert resumed.history == straight.history and resumed.final == straight.final
    saved, _ = CheckpointSeries(tmp_path / "b", "last").latest()
    steps = [s["step"] for o in saved["optimizers"] for s in o["state"].values() if "step" in s]
    assert all(s.device.type == "cpu" for s in steps)  # read onto the CPU: no host sync per Adam step


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(tmp_path):
    data = build_data(DIGITS, 32, 0)
    trainable = stopped_by(signal.SIGTERM, build("mbquant", "resnet8", [2, 4], {}), 2 * 3 + 1)
    with interrupts.installed(), pytest.raises(interrupts.Interrupted):
        fit(trainable, data.train, data.val, CUDA_RECIPE, seed=0, run_dir=tmp_path, progress=False)
    cpu = Recipe(**{**CUDA_RECIPE.__dict__, "device": "cpu"})
    moved = build("mbquant", "resnet8", [2, 4], {})
    result = fit(moved, data.train, data.val, cpu, seed=0, run_dir=tmp_path, progress=False)
    assert result.resumed_from == 0 and len(result.history) == 2
    assert next(moved.model.parameters()).device.type == "cpu"


def one_step(name, precision=None, seed=0):
    trainable = build(name, "resnet20", [2, 4, 6, 8], {})
    trainable.model.cuda()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(32, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (32,), generator=g).cuda()
    if trainable.initialize:
        trainable.initialize(trainable.model, [(x, y)] * 4)
    optimizers = trainable.optimizers_for(Recipe())
    losses = train_step(trainable, trainable.model, optimizers, x, y, precision)
    return trainable, losses


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_identical_steps_are_bitwise_equal_under_deterministic_kernels(name):
    numerics.configure("fp32", deterministic=True)
    (a, la), (b, lb) = one_step(name), one_step(name)
    assert all(torch.equal(la[k], lb[k]) for k in la)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


QUANTIZER_FUNCTIONS = [(quant, "_BoundedQuant"), (quant, "_ClampRound"), (quant, "_RoundSTE"), (lsq, "_LSQ"),
                       (adabits_layers, "_PACT"), (adabits_layers, "_NestedGridSTE")]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_methods_step_under_bf16_quantizes_in_float32(name, monkeypatch):
    """Under bf16 autocast every quantizer of every method computes on float32 (bf16 activations upcast first)."""
    seen = []

    class Spy:
        def __init__(self, function):
            self.function = function

        def apply(self, x, *rest):
            out = self.function.apply(x, *rest)
            seen.append((self.function.__name__, x.dtype, out.dtype))
            return out

    for module, attribute in QUANTIZER_FUNCTIONS:
        monkeypatch.setattr(module, attribute, Spy(getattr(module, attribute)))
    numerics.configure("bf16", deterministic=True)
    _, losses = one_step(name, torch.bfloat16)
    assert seen and {(x, out) for _, x, out in seen} == {(torch.float32, torch.float32)}, (name, set(seen))
    assert all(torch.isfinite(v) for v in losses.values())


def test_fp32_is_ieee_float32_and_tf32_is_not():
    """A float32 convolution on the GPU against float64: ~1e-7 relative with TF32 off; TF32 (10-bit mantissa) is
    visibly coarser on Ampere and later."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(16, 64, 32, 32, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)

    def error(precision):
        numerics.configure(precision, deterministic=True)
        y = torch.nn.functional.conv2d(x.cuda(), w.cuda(), padding=1).double().cpu()
        return ((y - exact).abs().max() / exact.abs().max()).item()

    assert error("fp32") < 1e-5
    if torch.cuda.get_device_capability()[0] >= 8:
        assert error("tf32") > 1e-4
    numerics.configure("fp32", deterministic=True)


def test_compiled_training_follows_eager_for_two_steps(tmp_path):
    data = build_data(DIGITS, 32, 0)
    short = Recipe(epochs=1, batch_size=32, lr=0.05, steps_per_epoch=2, eval_batch_size=128, device="cuda")
    eager = fit(build("mbquant", "resnet8", [2, 4], {}), data.train, data.val, short, seed=0,
                run_dir=tmp_path / "eager", progress=False)
    compiled = fit(build("mbquant", "resnet8", [2, 4], {}), data.train, data.val,
                   Recipe(**{**short.__dict__, "compile": True}), seed=0, run_dir=tmp_path / "compiled",
                   progress=False)
    for b in (2, 4):
        assert compiled.history[0][f"train_loss_b{b}"] == pytest.approx(eager.history[0][f"train_loss_b{b}"], rel=1e-3)


def test_the_distributed_probe_passes_on_every_gpu_of_this_node():
    """A torchrun world of every GPU: NCCL all-reduce, DDP with SyncBN equal to one process in float64, sharded
    evaluation, and torch's SyncBatchNorm kernels against the suite's global BN in float32 and under bf16."""
    from suite.doctor import distributed

    checks = distributed.checks(None)
    assert all(c.status == "pass" for c in checks), [(c.name, c.measured) for c in checks]
    assert any("SyncBatchNorm" in c.name and "bf16" in c.name for c in checks)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs: SyncBN over NCCL between processes")
def test_sync_bn_under_bf16_trains_over_nccl(tmp_path):
    import subprocess
    import sys

    import yaml

    manifest = tmp_path / "ddp.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "ddp_bf16", "version": 1, "title": "SyncBN under bf16 on GPUs", "paper": {"ref": "none"},
        "data": {"dataset": "digits", "image_size": 16, "train_limit": 256, "val_limit": 64},
        "model": {"arch": "resnet8"}, "method": {"name": "mbquant", "bits": [2, 4]},
        "recipe": {"epochs": 1, "batch_size": 32, "steps_per_epoch": 3, "sync_bn": True, "precision": "bf16",
                   "device": "cuda"}, "seeds": [0], "profiles": {"paper": {}}}))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "suite", "run", str(manifest), "--results", str(tmp_path / "results"),
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
