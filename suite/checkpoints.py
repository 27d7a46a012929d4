"""Checkpoints in the run store: data only, each file verified, never half-written, the previous one kept.

A series (``last``, ``best``) lives in a run directory as ``<name>-<counter>.pt`` files (the counter: training
steps done, so later is larger), each with a ``.sha256`` beside it. Files are written to a temporary name and renamed into place, checksum first, so a data
file is always complete and has its checksum. They are read with ``torch.load(weights_only=True)``: tensors,
containers and numbers only, so nothing in the store can run code. ``latest`` returns the newest file that reads
back intact and fits the run reading it; a damaged or unfitting one is reported, moved aside as ``*.corrupt`` and
the one before it is used. Small JSON records (a finished run's result) get the same checksum beside them.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from suite.paths import disk_full

_NAME = re.compile(r"^(?P<series>[a-z]+)-(?P<counter>\d{10})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read back; the message names the file and why."""


class UnfitCheckpoint(CheckpointError):
    """An intact file whose contents do not fit the run reading it (shapes, keys, counters); the message says why."""


class UnsafeCheckpoint(CheckpointError):
    """A file holding pickled objects beyond tensors and plain data (which could run code when loaded)."""


def load_data(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, safe_globals=(),
              trusted: bool = False) -> Any:
    """``torch.load`` of data only (tensors, containers, numbers, and ``safe_globals``); with ``trusted`` any
    pickle (only for files from a source you trust). Any file that cannot be read is a CheckpointError."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    try:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise UnsafeCheckpoint(f"{path}: holds objects other than tensors and plain data, refused "
                                   f"({str(err).splitlines()[-1][:200]})") from None
        raise CheckpointError(f"{path}: is not a readable PyTorch checkpoint ({str(err)[:200]})") from None
    except (EOFError, KeyError, IndexError, RuntimeError, ValueError, AttributeError, zipfile.BadZipFile,
            UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: is not a readable PyTorch checkpoint, or is truncated "
                              f"({type(err).__name__}: {str(err)[:160] or 'no detail'})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def set_aside(path: Path) -> None:
    """Move ``path`` and its checksum aside as ``*.corrupt``: kept for inspection, never read again."""
    for p in (path, _checksum_path(path)):
        if p.exists():
            os.replace(p, p.with_name(p.name + ".corrupt"))


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _verified(path: Path, damage: str) -> Path:
    """``path``, once its content matches the SHA-256 written beside it; CheckpointError otherwise."""
    checksum = _checksum_path(path)
    if not checksum.exists():
        raise CheckpointError(f"{path}: its checksum file {checksum.name} is missing")
    if sha256_file(path) != checksum.read_text().strip():
        raise CheckpointError(f"{path}: content does not match its SHA-256 ({damage})")
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """One checkpoint file, verified against its checksum and loaded as data only; CheckpointError otherwise."""
    path = _verified(Path(path), "the file is damaged")
    return load_data(path, map_location)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as JSON at ``path`` with its checksum beside it, both written atomically, checksum first."""
    path, text = Path(path), json.dumps(obj, indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()
    _write_atomically(_checksum_path(path), lambda t: t.write_text(digest + "\n"))
    _write_atomically(path, lambda t: t.write_text(text))


def read_json(path: str | os.PathLike) -> Any:
    """A JSON record written by ``write_json``, verified against its checksum; CheckpointError otherwise."""
    path = _verified(Path(path), "the file is damaged or was edited")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: is not readable JSON ({err})") from None


class CheckpointSeries:
    """The checkpoints of one kind (``name``) in ``folder``, newest last; ``keep`` files are retained."""

    def __init__(self, folder: str | os.PathLike, name: str, keep: int = 2, warn: Callable[[str], None] = print):
        self.folder, self.name, self.keep, self.warn = Path(folder), name, keep, warn

    def files(self) -> list[Path]:
        """Complete checkpoint files of this series, oldest first."""
        found = []
        for p in self.folder.glob(f"{self.name}-*.pt"):
            m = _NAME.match(p.name)
            if m and m["series"] == self.name:
                found.append((int(m["counter"]), p))
        return [p for _, p in sorted(found)]

    def save(self, obj: Any, counter: int) -> Path:
        """Write ``obj`` as the newest checkpoint; ``counter`` (training steps done) orders the series."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.name}-{counter:010d}.pt"
        tmp = self.folder / f".{path.name}.{os.getpid()}.tmp"
        try:
            torch.save(obj, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            digest = sha256_file(tmp)
            _write_atomically(_checksum_path(path), lambda t: t.write_text(digest + "\n"))  # checksum first
            os.replace(tmp, path)
        except Exception as err:
            full = disk_full(err, path)
            if full is None:
                raise
            raise full from None
        finally:
            tmp.unlink(missing_ok=True)
        for old in self.files()[:-self.keep]:
            old.unlink(missing_ok=True)
            _checksum_path(old).unlink(missing_ok=True)
        return path

    def latest(self, map_location: str | torch.device = "cpu",
               check: Callable[[Any], None] | None = None) -> tuple[Any, Path] | None:
        """The newest checkpoint that reads back intact and passes ``check`` (which raises UnfitCheckpoint saying
        why the contents do not fit), with its path; None when there is none. Each damaged or unfitting file on the
        way is named, moved aside as ``<file>.corrupt`` (with its checksum) and skipped."""
        for path in reversed(self.files()):
            try:
                saved = read_checkpoint(path, map_location)
                try:
                    if check is not None:
                        check(saved)
                except UnfitCheckpoint as err:
                    raise CheckpointError(f"{path}: does not fit this run ({err})") from None
                return saved, path
            except CheckpointError as err:
                self.warn(f"warning: {err}; moved aside as {path.name}.corrupt, using the checkpoint before it")
                set_aside(path)
        return None
