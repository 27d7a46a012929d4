"""``suite list``: the shipped experiment manifests, read as YAML only (no torch, no method is loaded)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite._cli.options import EXPERIMENTS, Options, arg


@dataclass(frozen=True, kw_only=True)
class ListOptions(Options):
    command = "list"
    summary = "list the shipped experiment manifests"

    experiments: Path = arg("--experiments", type=Path, default=EXPERIMENTS,
                            help=f"folder of manifests (default: {EXPERIMENTS})")


def main(options: ListOptions) -> int:
    from suite.manifest_file import manifests_in, read_manifest_file

    for path in manifests_in(options.experiments):
        doc = read_manifest_file(path)
        paper = doc.get("paper", {})
        arms = [a.get("name") for a in doc.get("arms", [])] or [doc.get("method", {}).get("name")]
        verified = "verified" if paper.get("verified") else "mapping not yet checked against the paper"
        print(f"{path}  [{paper.get('ref', '?')}, {verified}]\n    {doc.get('title', '')}\n"
              f"    method {doc.get('method', {}).get('name')} bits {doc.get('method', {}).get('bits')}; "
              f"arms: {', '.join(map(str, arms))}; seeds {doc.get('seeds')}; "
              f"profiles: {', '.join(doc.get('profiles', {}))}")
    return 0
