"""The reference-number registry: ``results/paper/reference_numbers.csv``, one row per reported cell.

Columns: ``table, row, column`` (where the cell stands in its source), ``dataset, model, method, bits``,
``value`` (top-1 %, empty until transcribed), ``source`` (citation), ``source_kind`` (``paper`` for MBQuant's
own tables, ``baseline-publication`` / ``released-model`` for numbers a baseline published itself),
``manifest, arm`` (the suite experiment and arm that reproduce it; empty when none does) and ``note``.
An empty ``value`` is never filled in by the suite: the report reads it as "not transcribed".
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

REGISTRY = Path("results/paper/reference_numbers.csv")
COLUMNS = ["table", "row", "column", "dataset", "model", "method", "bits", "value", "source", "source_kind",
           "manifest", "arm", "note"]
SOURCE_KINDS = {"paper", "baseline-publication", "released-model"}


def read_registry(path: Path = REGISTRY) -> pd.DataFrame:
    """The whole registry, validated; errors name the file, the row and the column."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected {COLUMNS})")
    for i, r in df.iterrows():
        line = i + 2  # header is line 1
        if r["source_kind"] not in SOURCE_KINDS:
            raise ValueError(f"{path}:{line}: column source_kind: {r['source_kind']!r} not in {sorted(SOURCE_KINDS)}")
        for col in ("value", "bits"):
            if r[col] != "":
                try:
                    float(r[col])
                except ValueError:
                    raise ValueError(f"{path}:{line}: column {col}: {r[col]!r} is not a number") from None
        if r["value"] != "" and not r["source"]:
            raise ValueError(f"{path}:{line}: column source: a transcribed value needs its source")
    return df


def reference_for_report(path: Path = REGISTRY) -> pd.DataFrame:
    """Transcribed values that a suite experiment reproduces, keyed as the report expects."""
    df = read_registry(path)
    df = df[(df["value"] != "") & (df["manifest"] != "") & (df["arm"] != "")]
    return pd.DataFrame({
        "manifest": df["manifest"], "arm": df["arm"], "bits": df["bits"].astype(float).astype(int),
        "top1": df["value"].astype(float), "source": df["source"] + " (" + df["table"] + ")",
    }).reset_index(drop=True)
