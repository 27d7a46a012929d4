"""Manifest validation: every shipped manifest resolves; bad input names the file and the field."""
import re
from pathlib import Path

import pytest
import yaml

from suite.manifest import ManifestError, load_manifest, parse_set_options

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))
BASE = Path(__file__).resolve().parents[1] / "experiments" / "table3_cifar100_resnet20_2468.yaml"


def write_variant(tmp_path, edit) -> Path:
    doc = yaml.safe_load(BASE.read_text())
    edit(doc)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_every_experiment_has_its_tox_env_and_every_env_an_experiment():
    """``tox -e repro-<table>`` is how a user re-runs a table: each shipped manifest must be reachable that way."""
    tox = (EXPERIMENTS[0].parents[1] / "tox.ini").read_text()
    commanded = set(re.findall(r"-m suite run experiments/(\S+)\.yaml", tox))
    assert EXPERIMENTS and commanded == {p.stem for p in EXPERIMENTS}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_manifest_resolves_in_every_profile(path):
    for profile in ("paper", "smoke"):
        loaded = load_manifest(path, profile)
        assert loaded.manifest.name == path.stem
        assert loaded.manifest.paper.ref
        assert loaded.arms and all(a.config.method.bits for a in loaded.arms)
    smoke = load_manifest(path, "smoke").manifest
    assert smoke.task == "costs" or smoke.data.dataset == "digits"  # smoke training runs on offline data


def test_profile_and_set_overrides_resolve_in_order():
    loaded = load_manifest(BASE, "smoke", parse_set_options(["recipe.epochs=7", "method.bits=[2, 4]"]))
    assert loaded.manifest.recipe.epochs == 7 and loaded.manifest.recipe.batch_size == 64
    assert loaded.arms[0].config.method.bits == [2, 4]
    assert loaded.arms[0].config.method.options["selection"] == "amortization"  # defaults made explicit


def test_fig3_has_four_arms_with_distinct_settings():
    loaded = load_manifest(Path(BASE.parent, "fig3_selection_x_distillation.yaml"), "paper")
    settings = {(a.config.method.options["selection"], a.config.method.options["distillation"]) for a in loaded.arms}
    assert settings == {(s, d) for s in ("amortization", "serial") for d in ("inplace", "none")}
    assert len({a.run_key(0) for a in loaded.arms}) == 4


@pytest.mark.parametrize("edit,field,message", [
    (lambda d: d["recipe"].update(epoch=3), "recipe.epoch", "Unexpected keyword argument"),
    (lambda d: d["recipe"].update(epochs="many"), "recipe.epochs", "must be a number, got a string ('many')"),
    (lambda d: d.update(colour="red"), "colour", "Extra inputs are not permitted"),
    (lambda d: d["data"].update(dataset="mnist"), "data.dataset", "Input should be"),
    (lambda d: d["method"]["options"].update(selectoin="serial"), "method", "options.selectoin"),
    (lambda d: d["method"].update(bits=[2, 3, 4]), "method", "bit-width 3 cannot be served"),
    (lambda d: d["method"].update(name="magic"), "method", "unknown method 'magic'"),
    (lambda d: d["profiles"]["smoke"].update({"recipe.epoks": 1}), "recipe.epoks", "profile `smoke`"),
])
def test_bad_manifests_name_the_file_and_field(tmp_path, edit, field, message):
    path = write_variant(tmp_path, edit)
    with pytest.raises(ManifestError) as err:
        load_manifest(path, "paper")
    text = str(err.value)
    assert str(path) in text and field in text and message in text


def test_bad_overrides_and_profiles(tmp_path):
    with pytest.raises(ManifestError, match=r"--set.*\n.*field `recipe.lr`"):
        load_manifest(BASE, "smoke", {"recipe.lr": "fast"})
    with pytest.raises(ManifestError, match="no profile named 'huge'"):
        load_manifest(BASE, "huge")
    with pytest.raises(ManifestError, match="KEY=VALUE"):
        parse_set_options(["recipe.epochs"])
    path = write_variant(tmp_path, lambda d: d.update(arms=[{"name": "x", "set": {"method.options.variant": "v3"}}],
                                                      claims=[]))  # no arm left for the claims to name
    with pytest.raises(ManifestError, match=r"arms\[0\] `x`[\s\S]*method"):
        load_manifest(path, "paper")
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(tmp_path / "absent.yaml")


@pytest.mark.parametrize("section,typo,suggestion", [
    ("recipe", {"epoch": 2}, "field `recipe.epoch`: Unexpected keyword argument; did you mean `epochs`?"),
    ("top", {"tolerence": 1.0}, "field `tolerence`: Extra inputs are not permitted; did you mean `tolerance`?"),
    ("options", {"selction": "serial"}, "options.selction: Unexpected keyword argument; did you mean `selection`?"),
])
def test_a_misspelt_key_gets_the_field_it_probably_meant(tmp_path, section, typo, suggestion):
    doc = {"name": "typo", "version": 1, "title": "t", "paper": {"ref": "none"}, "data": {"dataset": "digits"},
           "model": {"arch": "resnet8"}, "method": {"name": "mbquant", "bits": [2, 4]}, "recipe": {"epochs": 1},
           "seeds": [0], "profiles": {"paper": {}}}
    if section == "top":
        doc |= typo
    elif section == "recipe":
        doc["recipe"] = typo
    else:
        doc["method"]["options"] = typo
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError, match=re.escape(suggestion)):
        load_manifest(path)
