"""Every malformed manifest or --set value of the corpus (tests/malformed/corpus.yaml) is refused before anything
is opened: exit code 2, one message naming the file and the field, no traceback, nothing written."""
from pathlib import Path

import pytest
import yaml

import suite.runner
from helpers import EXPERIMENTS
from suite.cli import main

BASE = EXPERIMENTS / "table3_cifar100_resnet20_2468.yaml"
CASES = yaml.safe_load((Path(__file__).parent / "malformed" / "corpus.yaml").read_text())


def test_the_corpus_is_large_and_every_case_says_what_it_expects():
    assert len(CASES) >= 60
    assert len({c["name"] for c in CASES}) == len(CASES)
    assert all("field" in c or "expect" in c for c in CASES)


class ReachedTheStore(AssertionError):
    pass


def no_store(*args, **kwargs):
    raise ReachedTheStore("validation let this input through to the tracking store")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_malformed_input_is_refused_before_anything_is_opened(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(suite.runner, "Tracker", no_store)
    manifest = BASE
    if "text" in case or "replace" in case:
        text = BASE.read_text()
        for old, new in case.get("replace", []):
            assert old in text, f"the corpus edit {old!r} no longer matches {BASE.name}"
            text = text.replace(old, new, 1)
        manifest = tmp_path / "manifest.yaml"
        manifest.write_bytes(case["text"].encode("latin-1") if "text" in case else text.encode())
    results = tmp_path / "results"
    argv = ["run", str(manifest), "--profile", case.get("profile", "smoke"), "--results", str(results),
            "--no-progress", *[f"--set={s}" for s in case.get("set", [])]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    if case.get("file", True):
        assert str(manifest) in err
    if "field" in case:
        assert f"`{case['field']}" in err or f"{case['field']}:" in err, err
    if "expect" in case:
        assert case["expect"] in err, err
    assert not results.exists()


@pytest.mark.parametrize("shape", ["block", "flow"])
def test_a_manifest_nested_far_beyond_the_recursion_limit_is_one_line(shape, tmp_path, capsys):
    """YAML's parser recurses per level: the depth is measured first, without recursion. Block style indents every
    level, so its file grows with the square of the depth: 5,000 levels (25 MB) is five times Python's recursion
    limit."""
    manifest = tmp_path / "deep.yaml"
    if shape == "block":
        manifest.write_text("".join(f"{'  ' * i}k{i}:\n" for i in range(5_000)))
    else:
        manifest.write_text("recipe: " + "[" * 100_000 + "\n")
    assert main(["run", str(manifest), "--results", str(tmp_path / "results"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {manifest}: not valid YAML: nested more than 64 levels deep") and err.count("\n") == 1
    assert not (tmp_path / "results").exists()
