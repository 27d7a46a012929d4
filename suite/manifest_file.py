"""Reading a manifest file: YAML with unique keys and a bounded depth, not yet validated (``suite.manifest`` does
that). Only PyYAML is imported, so ``suite list`` reads every manifest without loading torch or the methods."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A manifest that cannot be run; the message names the file and the field."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a mapping that repeats a key is an error (plain YAML keeps the last value silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_DEPTH = 64  # the deepest manifest nests 5 levels; YAML's parser recurses per level, so bound it first
_OPENS = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
          yaml.FlowSequenceStartToken)
_CLOSES = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def load_yaml(text: str) -> Any:
    """YAML with unique keys, refused before parsing when it nests deeper than MAX_DEPTH (the scanner that measures
    the depth does not recurse; the parser does, and would fail with a RecursionError)."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        depth += isinstance(token, _OPENS) - isinstance(token, _CLOSES)
        if depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep (line {token.start_mark.line + 1})")
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_manifest_file(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        doc = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: cannot be read ({err})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: a manifest must be a YAML mapping")
    doc.setdefault("name", path.stem)
    return doc


def manifests_in(folder: Path) -> list[Path]:
    """The manifests of a folder (``experiments/``), in name order."""
    return sorted(Path(folder).glob("*.yaml"))
