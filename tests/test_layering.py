"""Dependencies point one way (layers -> models -> methods -> trainer -> lifecycle -> tasks -> runner -> launch -> cli),
checked on the real import graph."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "suite"
TASK_MODULES = ("suite.tasks.train", "suite.tasks.costs", "suite.tasks.evaluate")  # not the registry, nor its base


def loaded_after_import(module: str, prefix: str = "suite") -> set[str]:
    """The modules (under ``prefix``; "" for all) a fresh interpreter has loaded after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith({prefix!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module, forbidden", [
    ("suite.layers.multibranch", ("suite.models", "suite.methods")),
    ("suite.models", ("suite.methods", "suite.trainer")),
    ("suite.models", ("suite.models.",)),  # the registry imports an architecture on first use only
    ("suite.methods", ("suite.trainer", "suite.runner", "suite.methods.", "suite.models.")),
    ("suite.contract", ("suite.methods", "suite.models")),
    ("suite.trainer", ("suite.runner", "suite.tracking", "suite.manifest", "suite.methods", "suite.models",
                       "suite.lifecycle", "suite.invocation", "suite.tasks")),
    ("suite.invocation", ("suite.lifecycle", *TASK_MODULES, "suite.runner", "suite.report")),
    ("suite.lifecycle", (*TASK_MODULES, "suite.runner", "suite.report")),
    ("suite.tasks.train", ("suite.runner", "suite.report")),
    ("suite.runner", ("suite.report",)),
])
def test_importing_a_layer_loads_nothing_above_it(module, forbidden):
    loaded = loaded_after_import(module)
    assert not {m for m in loaded if m.startswith(forbidden)}, loaded


@pytest.mark.parametrize("registry", ["suite.tasks", "suite.analyses"])
def test_the_task_and_analysis_registries_load_no_torch_mlflow_or_entry(registry):
    """A manifest checks its task and analyses by name: that loads none of them, nor what they need."""
    loaded = loaded_after_import(registry, "")
    assert not {m for m in loaded if m.startswith(("torch", "mlflow", "suite.quant_error", *TASK_MODULES))}, loaded


def test_a_broken_method_breaks_only_its_own_lookup():
    """The trainer and the registry import no method, so a method that fails to import fails where it is used."""
    code = ("import sys; sys.modules['suite.methods.bitmixer'] = None\n"  # any import of it now raises
            "import suite.trainer, suite.methods as m\n"
            "print(m.method('dedicated').name, sorted(m.METHODS))\n"
            "try:\n    m.method('bitmixer')\nexcept ImportError:\n    print('bitmixer broken')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["dedicated ['adabits', 'anyprecision', 'bitmixer', 'dedicated', 'mbquant']",
                                    "bitmixer broken"]


def test_the_release_format_loads_no_tracking_cli_or_method():
    """Reading and writing the release's checkpoints needs torch and the model, not MLflow or a method."""
    loaded = loaded_after_import("suite.release", "")
    forbidden = ("mlflow", "suite.methods", "suite.cli", "suite._cli", "suite.runner", "suite.evaluate")
    assert not {m for m in loaded if m.startswith(forbidden)}, sorted(m for m in loaded if m.startswith("suite"))


def test_no_function_level_suite_imports_outside_the_cli():
    """Imports at module top show a module's dependencies at a glance; only the CLI defers them (start-up time)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py" or path.parent.name == "_cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("suite") or \
                            isinstance(inner, ast.Import) and any(a.name.startswith("suite") for a in inner.names):
                        offenders.append(f"{path.relative_to(PACKAGE.parent)}:{inner.lineno}")
    assert not offenders


def loaded_by_command(*argv: str) -> set[str]:
    """The modules a fresh ``python -m suite ARGV`` has loaded when it ends (``--help`` included)."""
    code = ("import runpy, sys\nsys.argv = ['suite', *sys.argv[1:]]\ntry:\n    runpy.run_module('suite', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('-- modules --', *sys.modules, sep='\\n')")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    return set(out.split("-- modules --\n")[1].split())


def every_help() -> list[tuple[str, ...]]:
    """``--help`` of the command line and of every subcommand (and of their own subcommands)."""
    import argparse

    from suite.cli import build_parser

    def helps(parser, prefix):
        yield (*prefix, "--help")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from helps(sub, (*prefix, name))

    return list(helps(build_parser(), ()))


@pytest.mark.parametrize("argv", [("list",), *every_help()], ids=" ".join)
def test_list_and_every_help_load_no_torch_and_no_method(argv):
    loaded = loaded_by_command(*argv)
    assert "torch" not in loaded and not {m for m in loaded if m.startswith(("suite.methods", "suite.models"))}


def test_the_launchers_do_not_import_the_command_line():
    """A launched job is ``python -m suite ...``, its options written by the ``run`` options: no import cycle."""
    assert not {m for m in loaded_after_import("suite.launch") if m.startswith(("suite.cli", "suite._cli"))}
