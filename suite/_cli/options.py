"""A subcommand's options as one frozen dataclass: each field says how argparse reads it (``arg``), so the same
object is filled by the parser and written back as the command line that means exactly it (``argv``), which is
how a launcher gives a job its options: nothing to keep in step by hand.

Only the standard library is imported here and by each subcommand module's top level, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

EXPERIMENTS = Path("experiments")
RESULTS = Path("results")
REPORT = Path("reports/report.pdf")
REFERENCES = Path("results/paper/reference_numbers.csv")


@dataclass(frozen=True)
class _Arg:
    flags: tuple[str, ...]  # none: a positional argument, named after the field
    help: str
    launcher_only: bool  # read by the launcher itself; the jobs it starts do not get it
    argparse: dict[str, Any]


def arg(*flags: str, help: str, default: Any = MISSING, launcher_only: bool = False, **argparse_kwargs) -> Any:
    """A field read from the command line: ``flags`` and the other keywords as for ``add_argument``. An option
    without a default defaults to None (``action="append"``: to an empty list); a positional one is required."""
    if default is MISSING and flags:
        default = [] if argparse_kwargs.get("action") == "append" else False \
            if argparse_kwargs.get("action") == "store_true" else None
    spec = {"arg": _Arg(flags, help, launcher_only, argparse_kwargs)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=spec)
    return field(default=default, metadata=spec)


def _has_default(f) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _default(f) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass(frozen=True, kw_only=True)
class Options:
    """The base of every subcommand's options; a subclass names its subcommand and its one-line summary."""

    command: ClassVar[str]
    summary: ClassVar[str]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            cls.add_field(parser, f.name)

    @classmethod
    def add_field(cls, parser: argparse.ArgumentParser, name: str) -> None:
        """The argument that reads field ``name`` into ``parser``."""
        f = next(f for f in fields(cls) if f.name == name)
        spec = f.metadata["arg"]
        kwargs = {**spec.argparse, "help": spec.help}
        if _has_default(f):
            kwargs["default"] = _default(f)
        if spec.flags:
            parser.add_argument(*spec.flags, dest=f.name, **kwargs)
        else:
            parser.add_argument(f.name, **kwargs)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> Options:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in names})

    def argv(self, *, launcher: bool = True) -> list[str]:
        """The command line (after ``python -m suite``) that parses back into these options; without the
        launcher's own options when ``launcher`` is false. Options left at their default are not written."""
        out = [self.command]
        for f in fields(self):
            spec, value = f.metadata["arg"], getattr(self, f.name)
            if spec.launcher_only and not launcher or _has_default(f) and value == _default(f):
                continue
            if not spec.flags:
                out += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            elif spec.argparse.get("action") == "store_true":
                out.append(spec.flags[0])
            elif isinstance(value, list):
                out += [f"{spec.flags[0]}={v}" for v in value]
            else:
                out.append(f"{spec.flags[0]}={value}")
        return out


# --------------------------------------------------------------------------------------------- argparse types


def positive_real(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def positive(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


# ------------------------------------------------------------------------- options several subcommands share


def results() -> Any:
    return arg("--results", type=Path, default=RESULTS, help="run store and MLflow database (default: results)")


def profile() -> Any:
    return arg("--profile", default="paper", help="named profile of the manifest (default: paper)")


def overrides() -> Any:
    return arg("--set", action="append", metavar="KEY=VALUE",
               help="override a manifest field, e.g. --set recipe.epochs=3 (repeatable)")


def arms() -> Any:
    return arg("--arm", action="append", default=None, metavar="NAME", help="only this arm (repeatable)")


def seeds() -> Any:
    return arg("--seed", action="append", default=None, type=int, metavar="K", help="only this seed (repeatable)")


def no_progress() -> Any:
    return arg("--no-progress", action="store_true", help="no progress bars")


def plugins() -> Any:
    return arg("--plugin", action="append", metavar="MODULE",
               help="import MODULE: the method it defines as METHOD and the architectures it registers (repeatable)")


def report_out() -> Any:
    return arg("--out", type=Path, default=REPORT, help=f"PDF path (default: {REPORT})")


def report_references() -> Any:
    return arg("--references", type=Path, default=None, help=f"reference-number registry (default: {REFERENCES})")
