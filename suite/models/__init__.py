"""The model registry: a plain dict from name to builder; every model builds from its name plus kwargs.

Every model exposes ``model.set_bits(b)``, the one bit-width switch used by the trainer, evaluation and users.
"""
from __future__ import annotations

from suite.models.mbquant_mobilenet import mbquant_mobilenetv1
from suite.models.mbquant_resnet_cifar import mbquant_resnet8, mbquant_resnet20
from suite.models.mbquant_resnet_imagenet import mbquant_resnet18, mbquant_resnet34
from suite.models.mobilenet import mobilenetv1
from suite.models.resnet import resnet8, resnet18, resnet20, resnet34

# Single-branch models: body layers from a method's conv / norm factories (the baselines').
SINGLE_BRANCH = {
    "resnet20": resnet20,
    "resnet8": resnet8,
    "resnet18": resnet18,  # ImageNet, torchvision topology
    "resnet34": resnet34,
    "mobilenetv1": mobilenetv1,
}
# MBQuant's multi-branch networks, ``mbquant_<arch>`` for each architecture they exist for.
MULTI_BRANCH = {
    "mbquant_resnet20": mbquant_resnet20,
    "mbquant_resnet8": mbquant_resnet8,
    "mbquant_resnet18": mbquant_resnet18,  # ImageNet (imagenet-models.md)
    "mbquant_resnet34": mbquant_resnet34,
    "mbquant_mobilenetv1": mbquant_mobilenetv1,
}
MODELS = SINGLE_BRANCH | MULTI_BRANCH


def create_model(name: str, **kwargs):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
