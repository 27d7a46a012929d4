"""Doctor: the software stack and the devices a manifest's arms will run on."""
from __future__ import annotations

import os
import platform

import torch

from suite.doctor.checks import Check
from suite.trainer import resolve_device

GIB = 2**30


def versions() -> str:
    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    nccl = None
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    return (f"python {platform.python_version()}, torch {torch.__version__}, CUDA {cuda}, cuDNN {cudnn or 'none'}, "
            f"NCCL {nccl or 'none'}")


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device`` (a GPU's, or this machine's RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def checks(loaded) -> list[Check]:
    found = [Check("environment", "versions", "pass", versions())]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [f"{torch.cuda.get_device_name(i)} {device_memory(torch.device('cuda', i)) / GIB:.0f} GiB"
             for i in range(gpus)]
    found.append(Check("environment", "devices", "pass",
                       f"{gpus} GPU(s){': ' + ', '.join(names) if names else ''}; {os.cpu_count()} CPU cores, "
                       f"{device_memory(torch.device('cpu')) / GIB:.0f} GiB RAM"))
    wanted = sorted({a.config.recipe.device for a in loaded.arms}) if loaded is not None else []
    for name in wanted:
        device = resolve_device(name)
        missing = device.type == "cuda" and (device.index or 0) >= gpus
        found.append(Check("environment", f"recipe.device {name}", "fail" if missing else "pass",
                           f"runs on {device}" if not missing else f"{device} is not on this machine",
                           note="use a machine with that GPU, or --set recipe.device=auto"))
    return found
