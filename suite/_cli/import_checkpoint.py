"""``suite import-checkpoint``: a released MBQuant checkpoint evaluated at every bit-width and tracked as a run."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from suite._cli import options as common
from suite._cli.options import Options, arg, positive


@dataclass(frozen=True, kw_only=True)
class ImportCheckpointOptions(Options):
    command = "import-checkpoint"
    summary = "evaluate a released MBQuant checkpoint at every bit-width and track it like a run"

    checkpoint: Path = arg(type=Path, help="torch.save'd release checkpoint (or bare state dict)")
    model: str = arg("--model", default="resnet20", help="released model: resnet20, resnet8 (CIFAR), resnet18, "
                                                         "mobilenetv1 (ImageNet) (default: resnet20)")
    dataset: str = arg("--dataset", default="cifar100",
                       help="cifar10, cifar100, or digits for an offline demo; sets the class count (default: "
                            "cifar100)")
    setting: str = arg("--setting", default="2468", help="2468 (amortization) or 234 (serial) (default: 2468)")
    data_root: str | None = arg("--data-root",
                                help="dataset parent folder (default: $SUITE_DATA_ROOT, else ./data)")
    set: list[str] = arg("--set", action="append", metavar="data.KEY=VALUE",
                         help="override a data field, e.g. --set data.val_limit=500 (repeatable)")
    batch_size: int = arg("--batch-size", type=positive, default=256, help="evaluation batch size (default: 256)")
    device: str = arg("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    trust_checkpoint: bool = arg("--trust-checkpoint", action="store_true",
                                 help="allow arbitrary pickled objects in the file (only for files you trust)")
    results: Path = common.results()
    plugin: list[str] = common.plugins()


def main(options: ImportCheckpointOptions) -> int:
    from suite.evaluate import checkpoint_manifest
    from suite.manifest import parse_set_options, resolve_manifest
    from suite.runner import run_manifest

    doc, profile = checkpoint_manifest(
        options.checkpoint, model=options.model, dataset=options.dataset, setting=options.setting,
        data_root=options.data_root, data_overrides=parse_set_options(options.set),
        eval_batch_size=options.batch_size, device=options.device, trusted=options.trust_checkpoint,
    )
    loaded = resolve_manifest(doc, options.checkpoint, profile)
    loaded.command = "python -m suite " + shlex.join(options.argv())
    run_manifest(loaded, options.results, progress=False)
    return 0
