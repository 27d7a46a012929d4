"""The reference-number registry: ``results/paper/reference_numbers.csv``, one row per reported cell.

Columns: ``table, row, column`` (where the cell stands in its source), ``dataset, model, method, bits``,
``value`` (top-1 %, empty until transcribed), ``source`` (citation) and ``page``, ``source_kind`` (``paper`` for
MBQuant's own tables, ``baseline-publication`` / ``released-model`` for numbers a baseline published itself),
``manifest, arm`` (the suite experiment and arm that reproduce it; empty when none does) and ``note``.
An empty ``value`` is never filled in by the suite: the report reads it as "not transcribed".

A researcher who holds the paper fills cells with ``suite references template`` (the missing cells as CSV) and
``suite references import FILE`` (validated, merged, the changes printed); ``suite references`` lists them all.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REGISTRY = Path("results/paper/reference_numbers.csv")
COLUMNS = ["table", "row", "column", "dataset", "model", "method", "bits", "value", "source", "page", "source_kind",
           "manifest", "arm", "note"]
OPTIONAL = {"page"}  # columns a registry written before they existed may lack
SOURCE_KINDS = {"paper", "baseline-publication", "released-model"}
UNIT, UNIT_RANGE = "top-1 %", (0.0, 100.0)  # every registered cell is a top-1 accuracy
CELL = ["manifest", "arm", "bits"]  # what identifies a cell the suite reproduces
TEMPLATE_COLUMNS = ["table", "row", "column", "manifest", "arm", "bits", "unit", "value", "source", "page"]


class ReferenceError(ValueError):
    """A registry or an import file that cannot be used; the message names the file, the line and the column."""


def _number(text: str, where: str, column: str, bounds: tuple[float, float] | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ReferenceError(f"{where}: column {column}: {text!r} is not a number") from None
    if bounds and not bounds[0] <= value <= bounds[1]:  # also refuses NaN
        raise ReferenceError(f"{where}: column {column}: {text} is outside [{bounds[0]:g}, {bounds[1]:g}] ({UNIT})")
    return value


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ReferenceError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReferenceError(f"{path}: not a CSV file ({str(err).strip()})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReferenceError(f"{path}: missing columns {missing} (expected {required})")
    return df.apply(lambda col: col.str.strip())


def read_registry(path: Path = REGISTRY) -> pd.DataFrame:
    """The whole registry, validated; errors name the file, the row and the column."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    df = _read_csv(path, [c for c in COLUMNS if c not in OPTIONAL])
    for column in OPTIONAL - set(df.columns):
        df[column] = ""
    for i, r in df.iterrows():
        where = f"{path}:{i + 2}"  # the header is line 1
        if r["source_kind"] not in SOURCE_KINDS:
            raise ReferenceError(f"{where}: column source_kind: {r['source_kind']!r} not in {sorted(SOURCE_KINDS)}")
        if r["bits"]:
            _number(r["bits"], where, "bits")
        if r["value"]:
            _number(r["value"], where, "value", UNIT_RANGE)
            if not r["source"]:
                raise ReferenceError(f"{where}: column source: a transcribed value needs its source")
    duplicated = df[df["manifest"] != ""].duplicated(CELL, keep=False)
    if duplicated.any():
        first = df[df["manifest"] != ""][duplicated].iloc[0]
        raise ReferenceError(f"{path}: the cell {tuple(first[CELL])} has more than one row")
    return df[COLUMNS]


def reference_for_report(path: Path = REGISTRY) -> pd.DataFrame:
    """Transcribed values that a suite experiment reproduces, keyed as the report expects."""
    df = read_registry(path)
    df = df[(df["value"] != "") & (df["manifest"] != "") & (df["arm"] != "")]
    return pd.DataFrame({
        "manifest": df["manifest"], "arm": df["arm"], "bits": df["bits"].astype(float).astype(int),
        "top1": df["value"].astype(float), "source": df["source"] + " (" + df["table"] + ")",
    }).reset_index(drop=True)


def registered_cells(path: Path = REGISTRY) -> pd.DataFrame:
    """Every cell a suite experiment reproduces, with its status: the value, or "missing"."""
    df = read_registry(path)
    cells = df[df["manifest"] != ""].copy()
    cells["status"] = cells["value"].where(cells["value"] != "", "missing")
    return cells.sort_values(["manifest", "arm", "bits"], key=lambda c: c.map(_sort_key), ignore_index=True)


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def template(path: Path = REGISTRY, manifests: list[str] | None = None) -> pd.DataFrame:
    """The cells still missing (of ``manifests``, default all), as the CSV ``import_file`` reads back."""
    cells = registered_cells(path)
    if manifests:
        unknown = sorted(set(manifests) - set(cells["manifest"]))
        if unknown:
            raise ReferenceError(f"{path}: no registered cell of {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(set(cells['manifest'])))})")
        cells = cells[cells["manifest"].isin(manifests)]
    missing = cells[cells["status"] == "missing"].assign(unit=UNIT, value="", source="", page="")
    return missing[TEMPLATE_COLUMNS].reset_index(drop=True)


@dataclass(frozen=True)
class Change:
    cell: tuple[str, str, str]  # (manifest, arm, bits)
    where: str  # table, row, column
    value: str
    source: str
    page: str

    def __str__(self) -> str:
        manifest, arm, bits = self.cell
        return f"{manifest} / {arm} / {bits}-bit ({self.where}): {self.value} from {self.source}, p. {self.page}"


def _validated_changes(registry: pd.DataFrame, registry_path: Path, file: Path) -> list[Change]:
    """Every filled row of ``file`` checked against the registry; the first invalid one raises, naming it."""
    rows = _read_csv(file, ["manifest", "arm", "bits", "value", "source", "page"])
    index = {tuple(r[CELL]): i for i, r in registry.iterrows() if r["manifest"]}
    changes, seen = [], {}
    for i, r in rows.iterrows():
        where = f"{file}:{i + 2}"
        if not r["value"]:
            continue  # a template row left blank
        cell = (r["manifest"], r["arm"], r["bits"])
        if cell not in index:
            raise ReferenceError(f"{where}: columns manifest, arm, bits: {cell} is not a registered cell "
                                 f"(see `python -m suite references`)")
        known = registry.loc[index[cell]]
        for column in ("table", "row", "column"):  # optional in the file, but if given they must agree
            if column in rows.columns and r[column] and r[column] != known[column]:
                raise ReferenceError(f"{where}: column {column}: {r[column]!r}, but the registry's cell is "
                                     f"{known[column]!r}")
        if "unit" in rows.columns and r["unit"] and r["unit"] != UNIT:
            raise ReferenceError(f"{where}: column unit: {r['unit']!r}, but the cell is in {UNIT}")
        value = _number(r["value"], where, "value", UNIT_RANGE)
        for column in ("source", "page"):
            if not r[column]:
                raise ReferenceError(f"{where}: column {column}: a value needs its {column}")
        if known["value"] and float(known["value"]) != value:
            raise ReferenceError(f"{where}: column value: {r['value']} would overwrite {known['value']} in "
                                 f"{registry_path} (from {known['source']}); change that row by hand if the "
                                 f"registry is wrong")
        if cell in seen and seen[cell] != value:
            raise ReferenceError(f"{where}: column value: the cell {cell} is given twice with different values")
        seen[cell] = value
        if not known["value"]:
            where_in_source = ", ".join(known[c] for c in ("table", "row", "column"))
            changes.append(Change(cell, where_in_source, r["value"], r["source"], r["page"]))
    return changes


def import_file(file: Path, registry_path: Path = REGISTRY) -> list[Change]:
    """Merge the filled rows of ``file`` into the registry at ``registry_path``; the cells it changed.

    All or nothing: one invalid row raises ``ReferenceError`` and the registry is left as it was."""
    registry_path = Path(registry_path)
    registry = read_registry(registry_path)
    changes = list(dict.fromkeys(_validated_changes(registry, registry_path, Path(file))))
    if not changes:
        return []
    index = {tuple(r[CELL]): i for i, r in registry.iterrows() if r["manifest"]}
    for change in changes:
        registry.loc[index[change.cell], ["value", "source", "page"]] = [change.value, change.source, change.page]
    registry_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=registry_path.parent, prefix=f".{registry_path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as out:
            registry.to_csv(out, index=False)
        os.replace(tmp, registry_path)  # a reader never sees half a registry
    finally:
        Path(tmp).unlink(missing_ok=True)
    return changes
