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


def setups(loaded: LoadedManifest) -> list[str]:
    """Every setup the arms ran, in the arms' order, each once."""
    return list(dict.fromkeys(setup_name(arm.config) for arm in loaded.arms))


def what_ran(loaded: LoadedManifest) -> str:
    return ", ".join(setups(loaded))


def _reloaded(loaded: LoadedManifest, profile: str) -> LoadedManifest | None:
    """Every arm of ``profile`` (with the invocation's ``--set`` values where it is the invocation's own profile),
    or None when the manifest cannot be read back."""
    try:
        return load_manifest(loaded.path, profile, loaded.overrides if profile == loaded.profile else None)
    except (ManifestError, OSError):
        return None


def is_paper_setting(loaded: LoadedManifest) -> bool:
    """Whether every setup that ran is one the paper profile runs (a subset of its arms included)."""
    paper = _reloaded(loaded, "paper")
    return paper is not None and set(setups(loaded)) <= set(setups(paper))


def honest_title(loaded: LoadedManifest) -> str:
    """The title a page or run carries: the manifest's own where the paper's setting ran; otherwise what ran, its
    profile, and what it stands in for."""
    m = loaded.manifest
    if is_paper_setting(loaded):
        return m.title
    stand_in = f"stand-in for {m.paper.ref}" if m.paper.ref else "stand-in"
    return f"{what_ran(loaded)}, {loaded.profile} profile — {stand_in}: {m.title}"


def invocation_name(loaded: LoadedManifest) -> str:
    """An invocation's parent run: what ran and the profile first, the manifest second:
    "ResNet-8 on digits 8×8 [smoke] — table3_cifar100_resnet20_2468"."""
    return f"{what_ran(loaded)} [{loaded.profile}] — {loaded.manifest.name}"


def experiment_name(loaded: LoadedManifest) -> str:
    """The MLflow experiment an invocation's runs go to: the manifest's ``experiment`` if it names one; the manifest's
    name where the paper's setting ran; else one experiment per stand-in profile, named by what its arms run (all of
    them, also when ``--arm`` runs a few): "ResNet-8 on digits 8×8, smoke profile — stand-in for Table 3
    (table3_cifar100_resnet20_2468)"."""
    m, full = loaded.manifest, _reloaded(loaded, loaded.profile) or loaded
    if m.experiment or is_paper_setting(full):
        return m.experiment_name
    stand_in = f"stand-in for {m.paper.ref}" if m.paper.ref else "stand-in"
    return f"{what_ran(full)}, {loaded.profile} profile — {stand_in} ({m.name})"
