"""Doctor: the distributed path as a job will take it, a torchrun world of every GPU of this node (2 gloo
processes on a CPU), running ``suite.doctor.probe``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from suite.data import num_classes
from suite.doctor.checks import Check

# The first step's losses, float64: one process and several differ only in summation order (~1e-15). Later steps
# are not held to it: a quantized network's values sit on a discrete grid, where such last-bit differences move
# ties across rounding and clipping edges (measured up to ~1e-2 after 3 steps); the ranks' weights must agree.
DDP_LOSS_RTOL = 1e-9
SYNC_BN_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}  # fused kernels vs the suite's two-pass form; bf16 output rounding
PROBE_TIMEOUT_S = 180  # one node: a healthy probe takes seconds to a minute
SMALLEST_SIDE = {"resnet8": 8, "resnet20": 8}  # the probe's image side: small, as any side runs the same code


def world_of_this_node() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def probe(loaded, perturb_rank: int | None = None) -> tuple[dict | None, str]:
    """Run the probe on the first arm's method and architecture (MBQuant on ResNet-8 without a manifest); returns
    (its figures, its output)."""
    if loaded is not None:
        cfg = loaded.arms[0].config
        arch, method, bits, options = cfg.model.arch, cfg.method.name, cfg.method.bits, cfg.method.options
        classes = min(num_classes(cfg.data.dataset), 10)
    else:
        arch, method, bits, options, classes = "resnet8", "mbquant", [2, 4], {}, 10
    side = SMALLEST_SIDE.get(arch, 32)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={world_of_this_node()}", "-m", "suite.doctor.probe", arch, method,
                   json.dumps(bits), json.dumps(options), str(classes), str(side), str(out)]
        command += [str(perturb_rank)] if perturb_rank is not None else []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            return None, f"no answer within {PROBE_TIMEOUT_S} s"
        output = (done.stdout + done.stderr).strip()
        return (json.loads(out.read_text()) if out.exists() else None), output


def compare(figures: dict) -> list[Check]:
    world, backend = figures["world"], figures["backend"]
    found = [Check("distributed", f"all-reduce ({world} x {backend}, {figures['device']})",
                   "pass" if figures["allreduce_correct"] else "fail",
                   f"{'correct' if figures['allreduce_correct'] else 'WRONG sum'}, "
                   f"{figures['allreduce_seconds'] * 1e3:.2f} ms per 1 MiB", "the exact sum",
                   note="the process group adds wrongly: check the NCCL / network setup")]
    ddp, one = figures["losses"]["ddp"], figures["losses"]["one"]
    first, later = ([max(abs(d[b] - o[b]) / max(abs(o[b]), 1e-12) for b in o) for d, o in zip(ddp, one)] + [0.0])[:2]
    later = max([later] + [max(abs(d[b] - o[b]) / max(abs(o[b]), 1e-12) for b in o) for d, o in zip(ddp[2:], one[2:])])
    spread = figures["ranks_differ_by"]
    ok = first <= DDP_LOSS_RTOL and spread == 0
    what = f"{world} processes vs one" if world > 1 else "a world of one process vs no process group"
    found.append(Check("distributed", f"DDP + SyncBN steps ({what})", "pass" if ok else "fail",
                       f"first step's losses within {first:.1e} (relative; {later:.1e} after {len(one)} steps); "
                       f"ranks' weights differ by {spread:.1e}",
                       f"first step <= {DDP_LOSS_RTOL:g}; ranks' weights identical",
                       note="the ranks do not train as one process would: a rank sees other data or other weights"))
    sharded, whole = figures["evaluation"]["sharded"], figures["evaluation"]["whole"]
    found.append(Check("distributed", "sharded evaluation", "pass" if sharded == whole else "fail",
                       "equal to one process's" if sharded == whole else f"{sharded} vs one process's {whole}",
                       "equal", note="the validation shards do not cover every image exactly once"))
    for precision, value in figures.get("sync_bn_kernels", {}).items():
        ok = not isinstance(value, str) and value <= SYNC_BN_TOLERANCE[precision]
        found.append(Check("distributed", f"torch SyncBatchNorm vs the suite's global BN ({precision})",
                           "pass" if ok else "fail", value if isinstance(value, str) else f"max |diff| {value:.1e}",
                           f"<= {SYNC_BN_TOLERANCE[precision]:g}",
                           note="torch's fused SyncBN disagrees here: report it; train with sync_bn off meanwhile"))
    return found


def checks(loaded, perturb_rank: int | None = None) -> list[Check]:
    figures, output = probe(loaded, perturb_rank)
    if figures is None:
        tail = " | ".join(line for line in output.splitlines()[-3:])
        return [Check("distributed", f"torchrun world of {world_of_this_node()}", "fail", f"the probe failed: {tail}",
                      note="run `python -m suite.doctor.probe ...` under torchrun to see its whole output")]
    return compare(figures)
