"""Names that become paths, MLflow keys and tags, and the proof that a written path stays where it was sent.

A manifest, profile or arm name ends up in file names (``<name>.<profile>.resolved.yaml``), MLflow experiment and
metric names, and tags; so it is an identifier, checked before anything opens. Every folder the suite writes into
is then resolved and proven to lie inside the root it was given (``--results``, the report folder, a bundle)."""
from __future__ import annotations

import re
from pathlib import Path

NAME_RULE = "letters, digits, '-', '_' and '.', not starting with '.', at most 64 characters"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class PathEscape(ValueError):
    """A path that would lie outside the root it must stay in."""


def is_identifier(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def identifier_problem(value: object) -> str | None:
    """Why ``value`` is not a name the suite accepts (None when it is)."""
    return None if is_identifier(value) else f"must be a name of {NAME_RULE}; got {value!r}"


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts``, raising PathEscape unless it lies inside ``root`` once both are resolved (links followed)."""
    path = Path(root).joinpath(*parts)
    base, resolved = Path(root).resolve(), path.resolve()
    if resolved != base and base not in resolved.parents:
        raise PathEscape(f"{path} would lie outside {root}")
    return path
