"""The GPU path's semantics, checked on the CPU with stand-ins: a checkpoint written on another device resumes,
SyncBN holds under bf16 autocast, every rank draws its own augmentation, epochs see the same data whether loader
workers persist or not, the arithmetic is the one the recipe names, the quantizers compute in float32 under bf16,
and a multi-task SLURM job requeues from rank 0 alone. tests/test_cuda.py runs the same on a real GPU."""
import os
import signal
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import suite.checkpoints
from helpers import free_port, joined_world
from suite import interrupts, launch, numerics, rng
from suite.cli import main
from suite.data import DataConfig, build_data
from suite.distributed import SINGLE, GlobalBatchNorm2d, from_environment, sync_batch_norm
from suite.layers.adabits import nested_grid, pact_quantize
from suite.layers.lsq import lsq_quantize
from suite.layers.quant import clamp_discretize, discretize, quantize_activation
from suite.methods import METHODS
from suite.recipe import Recipe
from suite.trainer import _reseed, fit, seed_everything, train_step

DIGITS = DataConfig(dataset="digits", image_size=8, train_limit=192, val_limit=96)
SHORT = Recipe(epochs=2, batch_size=32, lr=0.1, steps_per_epoch=5, eval_batch_size=96)


def tiny(seed: int = 0):
    seed_everything(seed)
    return METHODS["mbquant"].build("resnet8", 10, [2, 4], METHODS["mbquant"].Options())


# -- resuming a checkpoint written on another device -----------------------------------------------------------

def test_a_mid_epoch_checkpoint_resumes_wherever_torch_load_would_place_its_tensors(tmp_path, monkeypatch):
    """A checkpoint read onto the run's device (a GPU) carried its RNG states there, which torch cannot restore.
    Stand-in: any ``torch.load`` onto a device other than the CPU places the tensors on ``meta``; the trainer must
    read onto the CPU, and ends exactly where an unbroken run does."""
    data = build_data(DIGITS, 32, 0)
    straight = fit(tiny(), data.train, data.val, SHORT, seed=0, run_dir=tmp_path / "a", progress=False)

    real_load = torch.load

    def load_elsewhere(path, map_location=None, **kwargs):
        return real_load(path, map_location="cpu" if map_location == "cpu" else "meta", **kwargs)

    monkeypatch.setattr(suite.checkpoints.torch, "load", load_elsewhere)
    trainable, calls = tiny(), []
    loss = trainable.loss

    def stop_in_epoch_2(logits, targets, earlier):
        calls.append(1)
        if len(calls) == 2 * (SHORT.steps_per_epoch + 2) + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss(logits, targets, earlier)

    trainable.loss = stop_in_epoch_2
    with interrupts.installed(), pytest.raises(interrupts.Interrupted, match="in epoch 2 after step 3"):
        fit(trainable, data.train, data.val, SHORT, seed=0, run_dir=tmp_path / "b", progress=False)
    resumed_model = tiny()
    resumed = fit(resumed_model, data.train, data.val, SHORT, seed=0, run_dir=tmp_path / "b", progress=False)
    assert resumed.history == straight.history and resumed.final == straight.final


def test_rng_states_restore_on_fewer_devices_and_on_the_cpu(monkeypatch):
    """A checkpoint of a run on a 2-GPU process (older format: every device's CUDA state) resumes on one GPU, or
    on the CPU, without asking for a device that is not there."""
    seed_everything(3)
    saved = rng.capture(torch.device("cpu"))
    expected = torch.rand(4)
    set_on = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: set_on.append((state, device)))
    cuda_states = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    for device, calls in ((torch.device("cpu"), 0), (torch.device("cuda", 0), 1)):
        seed_everything(4)
        rng.restore(saved | {"cuda": cuda_states}, device)
        assert torch.equal(torch.rand(4), expected) and len(set_on) == calls
    assert torch.equal(set_on[0][0], cuda_states[0]) and set_on[0][1] == torch.device("cuda", 0)


def test_each_rank_resumes_its_own_random_state():
    states = [{"rank": r} for r in range(3)]
    assert [rng.of_rank(states, r, 3) for r in range(3)] == states
    assert rng.of_rank({"rank": 0}, 0, 1) == {"rank": 0}  # an older single-process checkpoint
    assert rng.of_rank(states, 0, 2) is None  # written by another number of processes


# -- SyncBN under bf16 autocast ---------------------------------------------------------------------------------

def _bn_under_bf16(rank: int, world: int, port: int, out: str) -> None:
    with joined_world(rank, world, port) as dist:
        torch.manual_seed(0)
        x = torch.randn(8, 4, 5, 5) * 3 + 1
        bn = sync_batch_norm(nn.Sequential(nn.BatchNorm2d(4)), torch.device("cpu"))[0]
        assert type(bn) is GlobalBatchNorm2d
        share = x[rank * 4:(rank + 1) * 4].requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = bn(share.to(torch.bfloat16))
        y.float().square().sum().backward()
    if dist.main:
        torch.save({"y": y.detach(), "dtype": y.dtype, "running": (bn.running_mean, bn.running_var)}, out)


def test_sync_bn_under_bf16_autocast_runs_and_keeps_float32_statistics(tmp_path):
    """Two gloo processes, each half of a batch, BatchNorm under CPU bf16 autocast: the global statistics are
    those of the whole batch in float32 (to bf16 rounding of the input), the output has the input's dtype."""
    mp.spawn(_bn_under_bf16, args=(2, free_port(), str(tmp_path / "bn.pt")), nprocs=2)
    got = torch.load(tmp_path / "bn.pt")
    torch.manual_seed(0)
    x = (torch.randn(8, 4, 5, 5) * 3 + 1).to(torch.bfloat16).float()
    reference = nn.BatchNorm2d(4)
    expected = reference(x)[:4]
    assert got["dtype"] == torch.bfloat16
    torch.testing.assert_close(got["y"].float(), expected, atol=0.02, rtol=0.01)
    for value, ref in zip(got["running"], (reference.running_mean, reference.running_var)):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)


# -- the data streams of several ranks ----------------------------------------------------------------------------

def _crop_offsets(loader) -> list[int]:
    """The horizontal crop offset of every image of the loader's first batch (the images are replaced by one ramp,
    so a crop's first pixel is its offset)."""
    images = loader.dataset
    while hasattr(images, "dataset"):
        images = images.dataset
    ramp = torch.arange(images.images.shape[-1], dtype=torch.float32)
    images.images = ramp.expand_as(images.images).contiguous()
    return next(iter(loader))[0][:, 0, 0, 0].long().tolist()


def test_every_rank_draws_its_own_augmentation_and_rank_0_draws_one_processes():
    cfg = DataConfig(dataset="digits", image_size=32, train_limit=256)
    one = build_data(cfg, 64, 0).train
    ranks = [build_data(cfg, 64, 0, rank=r, world_size=2).train for r in (0, 1)]
    crops = {}
    for name, loader, rank in (("one", one, 0), ("rank0", ranks[0], 0), ("rank1", ranks[1], 1)):
        _reseed(loader, 7, rank)
        crops[name] = _crop_offsets(loader)
    assert crops["rank0"] == crops["one"][:32]  # rank 0: the single process's stream
    assert crops["rank1"] != crops["rank0"]  # the j-th image of each rank: crops of its own
    _reseed(ranks[1], 7, 1)
    model_stream = torch.get_rng_state()
    seed_everything(7)
    assert torch.equal(model_stream, torch.get_rng_state())  # the model's random draws: alike on every rank


def test_an_epoch_sees_the_same_augmentation_whether_workers_persist_or_the_run_resumed():
    """Persistent workers kept their first epoch's seeds: a run resumed at epoch 2 saw other crops than an
    unbroken one. Training workers now restart each epoch with the trainer's seeds."""
    cfg = DataConfig(dataset="digits", image_size=32, train_limit=128, workers=1, persistent_workers=True)
    unbroken = build_data(cfg, 64, 0).train
    for epoch in (0, 1):
        _reseed(unbroken, 100 + epoch)
        second_epoch = _crop_offsets(unbroken)
    resumed = build_data(cfg, 64, 0).train
    _reseed(resumed, 101)
    assert _crop_offsets(resumed) == second_epoch
    assert not unbroken.persistent_workers


# -- the arithmetic a recipe names --------------------------------------------------------------------------------

@pytest.fixture
def restore_numerics():
    saved = (numerics.tf32_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled())
    yield
    numerics.set_tf32(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:3]
    torch.use_deterministic_algorithms(saved[3])


def test_fp32_means_ieee_float32_and_determinism_is_set_by_the_recipe(tmp_path, restore_numerics):
    data = build_data(DIGITS, 32, 0)
    numerics.set_tf32(True)  # torch's own default for convolutions on Ampere / Hopper GPUs
    fit(tiny(), data.train, data.val, Recipe(epochs=1, batch_size=32, steps_per_epoch=1), seed=0,
        run_dir=tmp_path / "fp32", progress=False)
    assert not numerics.tf32_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    fit(tiny(), data.train, data.val, Recipe(epochs=1, batch_size=32, steps_per_epoch=1, precision="tf32",
                                             deterministic=False), seed=0, run_dir=tmp_path / "tf32", progress=False)
    assert numerics.tf32_enabled() and not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark


# -- quantizers under bf16 autocast -------------------------------------------------------------------------------

QUANTIZERS = {  # name -> quantizer of an activation tensor
    "mbquant bounds": lambda x: quantize_activation(x, torch.tensor([0.0]), torch.tensor([2.5]), 8),
    "any-precision": lambda x: clamp_discretize(x, 256),
    "dorefa round": lambda x: discretize(torch.clamp(x, 0, 1), 256),
    "adabits pact": lambda x: pact_quantize(x, torch.tensor(2.5), 8),
    "adabits grid": lambda x: nested_grid(torch.clamp(x, 0, 1), 8, "centered"),
    "bit-mixer lsq": lambda x: lsq_quantize(x, torch.tensor(0.01), 0, 255, x[0].numel()),
}


@pytest.mark.parametrize("name", QUANTIZERS)
def test_every_quantizer_computes_in_float32_under_bf16_autocast(name):
    """Under autocast the activations arrive in bf16. Quantizers whose parameters are scalars computed in bf16,
    MBQuant's (per-branch bounds) in float32: at 8 bits several % of activations landed on other levels."""
    quantize = QUANTIZERS[name]
    x = (torch.rand(4, 8, 6, 6) * 3).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = quantize(x)
    assert q.dtype == torch.float32
    assert torch.equal(q, quantize(x.detach().float()))
    q.sum().backward()
    assert x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_methods_joint_step_trains_under_bf16(name):
    seed_everything(0)
    spec = METHODS[name]
    trainable = spec.build("resnet8", 10, [2, 4], spec.Options())
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    if trainable.initialize:
        trainable.initialize(trainable.model, [(x, y)] * 2)
    losses = train_step(trainable, trainable.model, trainable.optimizers_for(Recipe()), x, y, torch.bfloat16)
    assert sorted(losses) == [2, 4] and all(torch.isfinite(v) for v in losses.values())


# -- SLURM: one requeue, from rank 0 --------------------------------------------------------------------------------

class FakeJobEnvironment:
    num_tasks, local_rank = 2, 0

    def __init__(self, rank: int):
        self.global_rank = rank


@pytest.mark.parametrize("rank", [0, 1])
def test_a_preempted_multi_task_job_requeues_from_rank_0_and_other_ranks_exit_cleanly(rank, monkeypatch):
    """On SIGUSR2 every task stops after the same step; only rank 0 requeues. Another rank that raised would exit
    non-zero, and SLURM (KillOnBadExit) could kill rank 0 before it requeued."""
    submitit = pytest.importorskip("submitit")
    requeued = []
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: FakeJobEnvironment(rank))
    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment",
                        lambda: type("Env", (), {"export": lambda self, **_: None})())
    monkeypatch.setattr(launch, "run_suite", lambda argv: 128 + launch.PREEMPTION)
    monkeypatch.setenv("LOCAL_RANK", "0")
    job = launch.SuiteJob(("run", "x.yaml"))
    previous = signal.signal(launch.PREEMPTION, lambda signum, frame: requeued.append(signum))  # submitit's
    try:
        if rank:
            assert job() == 0 and requeued == []
        else:  # submitit's handler requeues and exits; this stand-in returns, so the job reports the stop
            with pytest.raises(RuntimeError, match="exited with code 140"):
                job()
            assert requeued == [launch.PREEMPTION]
    finally:
        signal.signal(launch.PREEMPTION, previous)


def test_the_command_line_gives_back_the_signal_handlers_it_found(capsys):
    """A job runner's handlers (submitit's SIGTERM bypass, its SIGUSR2 requeue) are back once the suite returns."""
    mine = {s: (lambda signum, frame: None) for s in interrupts.SIGNALS}
    previous = {s: signal.signal(s, h) for s, h in mine.items()}
    try:
        assert main(["list", "--experiments", tempfile.mkdtemp()]) == 0
        assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == mine
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_the_process_group_routes_cpu_and_cuda_tensors_to_their_own_backends():
    from suite.distributed import backend

    assert backend(cuda=True) == "cpu:gloo,cuda:nccl" and backend(cuda=False) == "gloo"
    assert from_environment() is SINGLE  # no torchrun environment: one process, nothing joined
