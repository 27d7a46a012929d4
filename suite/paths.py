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


def to_identifier(text: str, limit: int = 64) -> str:
    """``text`` made an identifier: runs of other characters become '-', leading '.' and '-' dropped, cut at ``limit``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip(".-")[:limit] or "unnamed"


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


# What a write that ran out of space raises: the OS's ENOSPC, SQLite's message, or torch.save's own errors (its C++
# writer reports a short write as "unexpected pos" or an iostream error, without an errno).
_FULL = ("No space left", "disk is full", "unexpected pos", "iostream error")
_NEARLY_EMPTY = 1 << 20  # bytes free below which a failed write is taken for a full disk


class DiskFull(OSError):
    """A write that found no space left; says where and how much is free."""

    def __str__(self) -> str:
        return self.strerror


def disk_full(err: BaseException, path: str | Path) -> DiskFull | None:
    """``err`` restated as one line naming ``path`` and the free space of its disk, if it is a full disk; else None."""
    import errno
    import shutil

    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if getattr(err, "errno", None) != errno.ENOSPC and not (any(t in str(err) for t in _FULL) and free < _NEARLY_EMPTY):
        return None
    return DiskFull(errno.ENOSPC, f"no space left to write {path} ({free / 2**20:.1f} MiB free on its disk): free "
                                  "some space and run the same command again to resume from the last checkpoint")
