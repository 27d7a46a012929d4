"""The README and docs/ stay true: their links lead somewhere, the tox environments and subcommands they name
exist, and the README stays short enough to read in two minutes."""
from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def tox_envs() -> set[str]:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    envs = set()
    for section in ini.sections():
        if not section.startswith("testenv:"):
            continue
        name = section.removeprefix("testenv:")
        factors = re.fullmatch(r"(.*)\{(.*)\}", name)  # repro-{table1,...}: one env per factor
        envs |= {factors[1] + f for f in factors[2].split(",")} if factors else {name}
    labels = {label.strip() for s in ini.sections() for label in ini.get(s, "labels", fallback="").split(",")}
    return envs | (labels - {""})


@pytest.fixture(scope="module")
def subcommands() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "suite", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    return set(re.search(r"\{([a-z,-]+)\}", out)[1].split(","))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_to_files(page):
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text())
    local = [t for t in targets if "://" not in t]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_tox_envs_and_subcommands_exist(page, subcommands):
    text = page.read_text()
    envs = set(re.findall(r"tox (?:-c \S+ )?-[em] ([a-z0-9-]+)", text))
    assert envs <= tox_envs(), f"{page.name} names tox envs that tox.ini lacks: {envs - tox_envs()}"
    named = set(re.findall(r"python -m suite ([a-z][a-z-]+)", text))
    assert named <= subcommands, f"{page.name} names subcommands that do not exist: {named - subcommands}"


def test_readme_is_short_and_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 100
    assert readme.index("tox -e quickstart") < readme.index("## Experiments")
    assert readme.index("tox -e tests") < readme.index("## Experiments")
    picture = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert picture and (ROOT / picture[1]).stat().st_size > 10_000
