"""Command line: ``python -m suite {run,plan,doctor,import-runs,list,references,report,quickstart,
import-checkpoint}`` (also installed as ``suite``). Each subcommand is a module of ``suite._cli``; this one parses
the command line into that subcommand's options and runs it, turning a user's error into one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from suite._cli import SUBCOMMANDS
from suite._cli.options import Options

# Before torch loads: idle OpenMP threads sleep instead of spinning, so a process sharing the machine with another
# busy one does not slow to a crawl (the quantizers' many small operations each open a parallel region).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The errors that mean "the input cannot be used" (exit code 2, one line), by the module that defines them. Only
# modules already imported are looked at: an error whose module never loaded cannot have been raised, and
# importing them all would load torch for `suite list`.
USER_ERRORS = {
    "suite.manifest_file": ("ManifestError",), "suite.data": ("DatasetNotFound", "DataError"),
    "suite.release.names": ("InteropError",), "suite.registry": ("PluginError",), "suite.tracking": ("StoreError",),
    "suite.checkpoints": ("CheckpointError",), "suite.references": ("ReferenceError",), "suite.paths": ("PathEscape",),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other refusal (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="suite", description="MBQuant reproducibility suite")
    sub = parser.add_subparsers(dest="command", required=True)
    for entry in SUBCOMMANDS:
        module, name = entry.split(":")
        options = getattr(importlib.import_module(module), name)
        p = sub.add_parser(options.command, help=options.summary)
        options.add_arguments(p)
        p.set_defaults(_options=options)
    return parser


def parse(argv: list[str]) -> Options:
    """The options of the subcommand ``argv`` names (a usage error exits with code 2, in one line)."""
    namespace = build_parser().parse_args(argv)
    return namespace._options.from_namespace(namespace)


def _user_errors() -> tuple[type[BaseException], ...]:
    loaded = (sys.modules.get(module) for module in USER_ERRORS)
    return (OSError, *(error for module, names in zip(loaded, USER_ERRORS.values()) if module
                       for error in (getattr(module, name, None) for name in names) if isinstance(error, type)))


def torch_distributed_initialized() -> bool:
    """Whether this process joined a torchrun process group (without importing torch when it did not)."""
    module = sys.modules.get("torch.distributed")
    return bool(module and module.is_available() and module.is_initialized())


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    getattr(sys.stdout, "reconfigure", lambda **_: None)(line_buffering=True)  # progress lines appear as they happen, also under tox / CI
    from suite import interrupts

    try:
        with interrupts.installed():
            if getattr(options, "plugin", None):
                from suite.methods import load_plugin

                for module in options.plugin:
                    load_plugin(module)
            return sys.modules[type(options).__module__].main(options)
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except interrupts.Interrupted as err:
        print(f"\n{err}: the runs are closed as KILLED; run the same command again to resume", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        if isinstance(err, OSError) and err.filename:  # any other write that found the disk full: say how full
            from suite.paths import disk_full

            err = disk_full(err, err.filename) or err
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if torch_distributed_initialized():
            import torch.distributed

            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
