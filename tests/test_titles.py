"""Titles name what ran first and what it stands in for second."""
from pathlib import Path

import pytest

from suite.manifest import load_manifest
from suite.titles import honest_title, what_ran

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_a_smoke_stand_in_says_what_ran_and_what_it_stands_in_for():
    loaded = load_manifest(EXPERIMENTS / "table3_cifar100_resnet20_2468.yaml", "smoke")
    title = honest_title(loaded)
    assert title.startswith("ResNet-8 on digits 8×8, smoke profile — stand-in for Table 3: ")
    assert title.endswith(loaded.manifest.title)


def test_every_model_of_a_mixed_manifest_is_named_once():
    assert what_ran(load_manifest(EXPERIMENTS / "table1_imagenet_2468.yaml", "smoke")) == \
        "ResNet-18 on digits 32×32, MobileNetV1 on digits 32×32"


@pytest.mark.parametrize("name,profile", [("table3_cifar100_resnet20_2468", "paper"), ("table4_storage_cost", "smoke")])
def test_the_paper_setting_keeps_the_manifest_s_title(name, profile):
    """The paper profile, and a profile that runs the paper's setting (the costs), need no stand-in label."""
    loaded = load_manifest(EXPERIMENTS / f"{name}.yaml", profile)
    assert honest_title(loaded) == loaded.manifest.title
