"""Titles that name what actually ran first and what it stands in for second.

A manifest's ``title`` describes the paper's setting ("... CIFAR-100 ResNet-20 ..."); a shortened profile may run
another model on other data (ResNet-8 on the 8x8 digits). Every page, experiment and run says which:
"ResNet-8 on digits 8x8, smoke profile — stand-in for Table 3: <title>".
"""
from __future__ import annotations

from suite.manifest import LoadedManifest, Manifest, ManifestError, load_manifest

ARCH_NAMES = {"resnet8": "ResNet-8", "resnet20": "ResNet-20", "resnet18": "ResNet-18", "resnet34": "ResNet-34",
              "mobilenetv1": "MobileNetV1"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "digits": "digits"}


def setup_name(config: Manifest) -> str:
    """"ResNet-8 on digits 8×8": the model, the data and its resolution."""
    arch, data = config.model.arch, config.data
    side = data.image_size
    return f"{ARCH_NAMES.get(arch, arch)} on {DATASET_NAMES.get(data.dataset, data.dataset)} {side}×{side}"


def what_ran(loaded: LoadedManifest) -> str:
    """Every setup the arms ran, in the arms' order, each once."""
    return ", ".join(dict.fromkeys(setup_name(arm.config) for arm in loaded.arms))


def _paper_setups(loaded: LoadedManifest) -> str | None:
    """What the paper profile runs (every arm), or None when it cannot be read back."""
    try:
        return what_ran(load_manifest(loaded.path, "paper"))
    except (ManifestError, OSError):
        return None


def honest_title(loaded: LoadedManifest) -> str:
    """The title a page or run carries: the manifest's own where the paper's setting ran; otherwise what ran, its
    profile, and what it stands in for."""
    m, ran = loaded.manifest, what_ran(loaded)
    if ran == _paper_setups(loaded):
        return m.title
    stand_in = f"stand-in for {m.paper.ref}" if m.paper.ref else "stand-in"
    return f"{ran}, {loaded.profile} profile — {stand_in}: {m.title}"
