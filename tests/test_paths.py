"""Names that become paths are identifiers, and every folder the suite writes is proven to lie inside its root."""
import pytest

from suite.paths import PathEscape, identifier_problem, inside, is_identifier

HOSTILE = ["../../../escape", "..", ".", "/etc/passwd", "a/b", "a\\b", "", " ", "a\0b", ".hidden", "x" * 65,
           "mbquant resnet18", "tab\there", "line\nbreak", "é", "$(touch pwned)", "*", "~"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_not_identifiers(name):
    assert not is_identifier(name) and repr(name) in identifier_problem(name)


@pytest.mark.parametrize("name", ["table6_inplace_distillation", "mbquant-resnet18", "smoke", "v1.2", "x" * 64, "_a"])
def test_the_suites_own_names_are_identifiers(name):
    assert is_identifier(name) and identifier_problem(name) is None


@pytest.mark.parametrize("parts", [("..", "x"), ("runs", "..", "..", "x"), ("/tmp/elsewhere",), ("a", "/b")])
def test_a_path_leaving_its_root_is_refused(parts, tmp_path):
    with pytest.raises(PathEscape, match="would lie outside"):
        inside(tmp_path / "results", *parts)


def test_a_link_leading_out_of_the_root_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs").symlink_to(tmp_path)
    with pytest.raises(PathEscape):
        inside(tmp_path / "results", "runs", "a")


def test_a_path_inside_is_returned_as_given(tmp_path):
    assert inside(tmp_path / "results", "runs", "a", "..", "b") == tmp_path / "results" / "runs" / "a" / ".." / "b"
    assert inside("relative", "launch", "x.smoke").as_posix() == "relative/launch/x.smoke"


def test_what_a_run_writes_under_results_is_ignored_by_git(tmp_path, capsys):
    """A run's store, locks, logs and checkpoints never show up in ``git status`` of a clone using ``results/``."""
    import subprocess
    from pathlib import Path

    from suite.cli import main
    from test_launch import write_manifest

    results = tmp_path / "results"
    assert main(["run", str(write_manifest(tmp_path)), "--results", str(results), "--no-progress",
                 "--launcher", "gpus", "--cpu-slots", "1"]) == 0
    written = sorted(f"results/{p.relative_to(results).as_posix()}" for p in results.rglob("*") if p.is_file())
    assert any(p.endswith(".pt") for p in written) and any(p.endswith(".log") for p in written), written
    repo = Path(__file__).resolve().parents[1]
    shown = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching", "--stdin"], cwd=repo,
                           input="\n".join(written), capture_output=True, text=True).stdout.splitlines()
    assert [line.split("\t")[1] for line in shown if line.startswith("::")] == []


@pytest.mark.parametrize("name", HOSTILE)
def test_any_text_made_an_identifier_is_one(name):
    from suite.paths import to_identifier

    assert is_identifier(to_identifier(name))
