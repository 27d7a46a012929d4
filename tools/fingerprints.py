"""Fingerprints of what every built-in method computes, to show a refactor changes no number.

For each method on ResNet-8 (bits 2-4-6-8), ResNet-18 (2-3-4) and MobileNetV1 (2-4-6-8): the initial weights,
the logits at every bit-width, the switching-error table, stored bits and MACs / BitOPs; on ResNet-8 also the
weights and last history row after two short epochs of ``fit`` on the digits data. Hashes, not values: two
checkouts agree when their files are byte-identical.

    python tools/fingerprints.py before.json        # in one checkout (PYTHONPATH=. from another tree)
    python tools/fingerprints.py after.json && cmp before.json after.json
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from suite.costs import measure_cost
from suite.data import DataConfig, build_data
from suite.methods import BUILT_IN, build_trainable, method
from suite.quant_error import measure_switching_error
from suite.recipe import Recipe
from suite.trainer import fit, seed_everything

CASES = [("resnet8", [2, 4, 6, 8], 8), ("resnet18", [2, 3, 4], 32), ("mobilenetv1", [2, 4, 6, 8], 32)]
FIT = Recipe(epochs=2, batch_size=32, steps_per_epoch=2, eval_batch_size=64, lr=0.1, device="cpu")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def tensor_digest(t: torch.Tensor) -> str:
    return digest(t.detach().contiguous().cpu().numpy().tobytes())


def state_digest(state: dict) -> str:
    return digest(b"".join(k.encode() + tensor_digest(v).encode() for k, v in state.items()))


def built(name: str, arch: str, bits: list[int]):
    seed_everything(0)
    options = {"selection": "serial"} if name == "mbquant" and 3 in bits else {}
    return build_trainable(name, arch, 10, bits, options)


def fingerprint(name: str, arch: str, bits: list[int], size: int) -> dict:
    trainable = built(name, arch, bits)
    model, out = trainable.model, {"init": state_digest(trainable.model.state_dict())}
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    if trainable.initialize:
        trainable.initialize(model, [(x, torch.zeros(4, dtype=torch.long))])
    model.eval()
    with torch.no_grad():
        for b in bits:
            model.set_bits(b)
            out[f"logits_b{b}"] = tensor_digest(model(x))
    out["switching_error"] = digest(measure_switching_error(model, bits, x).to_csv().encode())
    out["storage"] = str(method(name).storage_bits(model))
    out["costs"] = str([measure_cost(model, b, (3, size, size)) for b in bits])
    if arch == "resnet8":
        trainable = built(name, arch, bits)
        data = build_data(DataConfig(dataset="digits", image_size=8, train_limit=128, val_limit=64), 32, 0, 64)
        result = fit(trainable, data.train, data.val, FIT, seed=0, run_dir=Path(tempfile.mkdtemp()), progress=False,
                     calibration_loader=data.calibration)
        out["fit"], out["history"] = state_digest(trainable.model.state_dict()), str(result.history[-1])
    return out


def main(path: str) -> None:
    torch.set_num_threads(1)
    table = {}
    for name in BUILT_IN:
        for arch, bits, size in CASES:
            table[f"{name}/{arch}"] = fingerprint(name, arch, bits, size)
            print(f"{name} on {arch}: done", file=sys.stderr)
    Path(path).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
