"""The authors' released checkpoints (zysxmu/MBQuant): their names, key layout, import and export.

A released checkpoint is a ``torch.save``d dict ``{epoch, arch, state_dict, acc1, best_acc1, optimizer_m,
optimizer_q, scheduler_m, scheduler_q}`` whose state-dict keys carry a ``module.`` prefix when it was saved
under DDP (docs/spec/reference-checkpoint.md). ``names``: the release's models, settings and datasets;
``layout``: every release key and the suite tensor it maps to; ``load``: import into the suite's MBQuant model;
``export``: write a suite model back in the release's format (import -> export is an exact round trip).

The package depends only on torch, numpy and the suite's layers, models, checkpoints and data; evaluating a
checkpoint as a tracked run is the evaluate task's job (``suite.tasks.evaluate``, its manifest ``suite.evaluate``).
"""
from suite.release.export import export_release_checkpoint, release_state_dict
from suite.release.layout import ReleaseEntry, mapping_table, release_layout
from suite.release.load import (
    CheckpointMismatch, ImportReport, build_release_model, fill_from_release_state_dict, load_release_checkpoint,
    read_checkpoint, split_checkpoint,
)
from suite.release.names import (
    DDP_PREFIX, RELEASE_DATASETS, RELEASE_MODELS, RELEASE_SLOTS, SETTINGS, InteropError, setting_of,
)

__all__ = [
    "CheckpointMismatch", "DDP_PREFIX", "ImportReport", "InteropError", "RELEASE_DATASETS", "RELEASE_MODELS",
    "RELEASE_SLOTS", "ReleaseEntry", "SETTINGS", "build_release_model", "export_release_checkpoint",
    "fill_from_release_state_dict", "load_release_checkpoint", "mapping_table", "read_checkpoint",
    "release_layout", "release_state_dict", "setting_of", "split_checkpoint",
]
