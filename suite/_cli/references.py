"""``suite references``: the registry of the paper's numbers: list its cells, write a template of the missing
ones, import a filled template."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from suite._cli.options import REFERENCES, Options, arg


@dataclass(frozen=True, kw_only=True)
class ReferencesOptions(Options):
    command = "references"
    summary = ("the paper's numbers the verdicts compare with: list every registered cell, write a template of the "
               "missing ones, import a filled one")

    action: str = arg(default="list", help="list (default), template or import: the subcommands below")
    manifests: list[str] = arg(nargs="*", default=[], metavar="MANIFEST",
                               help="only these manifests (names or experiments/*.yaml paths; default: all)")
    file: Path | None = arg(type=Path, default=None, metavar="FILE", help="a filled template (references template)")
    references: Path = arg("--references", type=Path, default=REFERENCES, help=f"the registry (default: {REFERENCES})")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Its own subcommands (the action), each reading the fields it uses."""
        actions = parser.add_subparsers(dest="action", metavar="{list,template,import}")
        actions.add_parser("list", help="every registered cell per manifest with its value or \"missing\" (default)")
        template = actions.add_parser("template", help="the missing cells as CSV on standard output, to fill in")
        cls.add_field(template, "manifests")
        imported = actions.add_parser("import", help="validate a filled template and merge it into the registry "
                                                     "(all rows or none); prints what changed")
        cls.add_field(imported, "file")
        for p in (parser, template, imported):
            cls.add_field(p, "references")
        parser.set_defaults(action="list")


def main(options: ReferencesOptions) -> int:
    from suite import references

    if options.action == "template":
        names = [Path(m).stem if m.endswith((".yaml", ".yml")) else m for m in options.manifests]
        references.template(options.references, names).to_csv(sys.stdout, index=False)
    elif options.action == "import":
        changes = references.import_file(options.file, options.references)
        for change in changes:
            print(f"  filled {change}")
        print(f"{len(changes)} cell(s) filled in {options.references}" if changes else
              f"nothing to fill: every value in {options.file} is blank or already in {options.references}")
    else:
        cells = references.registered_cells(options.references)
        for manifest, group in cells.groupby("manifest", sort=True):
            filled = (group["status"] != "missing").sum()
            print(f"{manifest}: {filled} of {len(group)} cell(s) transcribed")
            for r in group.itertuples():
                print(f"    {r.arm:<34} {r.bits:>2}-bit  {r.status:<8} {r.table}, {r.row}, {r.column}")
        print("fill them: python -m suite references template > cells.csv, then references import cells.csv")
    return 0
