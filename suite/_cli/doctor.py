"""``suite doctor``: a preflight of this machine (for a manifest, or alone), as a table of pass / warn / fail."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite._cli import options as common
from suite._cli.options import Options, arg, positive_real


@dataclass(frozen=True, kw_only=True)
class DoctorOptions(Options):
    command = "doctor"
    summary = ("a preflight of this machine for a manifest (minutes): environment, data, step time and memory, "
               "distributed, store; a table of pass / warn / fail")

    manifest: Path | None = arg(type=Path, nargs="?", default=None,
                                help="the manifest to check the machine for (none: the machine alone)")
    memory_gib: float | None = arg("--memory-gib", type=positive_real, metavar="GIB",
                                   help="memory budget per device (default: the device's memory, or this machine's "
                                        "RAM)")
    compile: str = arg("--compile", choices=["auto", "none", "first", "all"], default="auto",
                       help="arms whose compiled step is measured too (auto: the first arm on a GPU, none on a CPU)")
    json: Path | None = arg("--json", type=Path, metavar="FILE", help="also write the checks as JSON")
    profile: str = common.profile()
    set: list[str] = common.overrides()
    results: Path = common.results()


def main(options: DoctorOptions) -> int:
    from suite.doctor.checks import Options as CheckOptions
    from suite.doctor.preflight import failed, render, run_doctor, save
    from suite.manifest import load_manifest, parse_set_options

    loaded = load_manifest(options.manifest, options.profile, parse_set_options(options.set)) \
        if options.manifest else None
    what = f"{options.manifest} (profile {options.profile})" if loaded else "this machine (no manifest)"
    print(f"suite doctor: {what}")
    checks = run_doctor(loaded, CheckOptions(options.results, options.memory_gib, options.compile))
    print("\n" + render(checks))
    if options.json:
        save(checks, options.json)
    return 1 if failed(checks) else 0
