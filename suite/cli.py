"""Command line: ``python -m suite {run,plan,doctor,list,references,report,quickstart,import-checkpoint,import-runs}`` (also
installed as ``suite``)."""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path

# Before torch loads: idle OpenMP threads sleep instead of spinning, so a process sharing the machine with another
# busy one does not slow to a crawl (the quantizers' many small operations each open a parallel region).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXPERIMENTS = Path("experiments")
RESULTS = Path("results")
REPORT = Path("reports/report.pdf")
REFERENCES = Path("results/paper/reference_numbers.csv")
# MLflow's runs table (its "Model training" view; the UI otherwise opens on its GenAI traces view)
UI_URL = "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other refusal (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _positive_real(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _positive(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _manifests(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def cmd_run(args) -> int:
    from suite.manifest import load_manifest, parse_set_options
    from suite.runner import preflight, run_manifest

    loaded = load_manifest(args.manifest, args.profile, parse_set_options(args.set)).subset(args.arm, args.seed)
    if args.launcher == "local" or loaded.manifest.task != "train":
        from suite.bundles import offline_bundle

        with offline_bundle(args.offline) as tracking:  # --offline: this process's bundle, sealed when it ends
            run_manifest(loaded, args.results, progress=not args.no_progress, tracking=tracking)
        return 0
    from suite.launch import Cluster, jobs_for, run_on_gpus, submit_to_slurm
    from suite.paths import inside

    preflight(loaded)  # a missing dataset fails once, here, not in every job
    chosen = {a.name for a in loaded.arms}
    planned = [(arm, seed) for arm, seed in loaded.jobs if arm in chosen and seed in loaded.manifest.seeds]
    base = ["run", str(args.manifest), "--profile", args.profile, "--results", str(args.results), "--no-progress",
            *[f"--set={s}" for s in args.set], *[f"--plugin={p}" for p in args.plugin],
            *([f"--offline={args.offline}"] if args.offline else [])]
    jobs = jobs_for(planned, base)
    folder = inside(args.results, "launch", f"{loaded.manifest.name}.{loaded.profile}")
    cluster = Cluster(**(loaded.manifest.cluster.model_dump() if loaded.manifest.cluster else {}) | {
        k: v for k, v in dict(partition=args.partition, time_minutes=args.time, gpus_per_job=args.gpus_per_job,
                              cpus_per_task=args.cpus_per_task, account=args.account,
                              jobs_per_gpu=args.jobs_per_gpu).items() if v is not None})
    if args.launcher == "gpus":
        failed = run_on_gpus(jobs, folder, gpus_per_job=cluster.gpus_per_job, jobs_per_gpu=cluster.jobs_per_gpu,
                             cpu_slots=args.cpu_slots)
        return 1 if failed else 0
    submit_to_slurm(jobs, folder, cluster, executor=args.submitit_executor)
    return 0


def cmd_plan(args) -> int:
    from suite.manifest import load_manifest, parse_set_options
    from suite.plan import plan

    loaded = load_manifest(args.manifest, args.profile, parse_set_options(args.set)).subset(args.arm, args.seed)
    plan(loaded, args.results, step_seconds=args.step_time, probe_batch=args.probe_batch,
         jobs_per_gpu=args.jobs_per_gpu, gain=args.gain)
    return 0


def cmd_doctor(args) -> int:
    from suite.doctor.checks import Options
    from suite.doctor.preflight import failed, render, run_doctor, save
    from suite.manifest import load_manifest, parse_set_options

    loaded = load_manifest(args.manifest, args.profile, parse_set_options(args.set)) if args.manifest else None
    what = f"{args.manifest} (profile {args.profile})" if loaded else "this machine (no manifest)"
    print(f"suite doctor: {what}")
    checks = run_doctor(loaded, Options(args.results, args.memory_gib, args.compile))
    print("\n" + render(checks))
    if args.json:
        save(checks, args.json)
    return 1 if failed(checks) else 0


def cmd_import_runs(args) -> int:
    from suite.bundles import BundleError, import_bundles, verify_bundles
    from suite.tracking import Tracker

    try:
        bundles = verify_bundles(args.bundles)  # all proven intact before the store is opened
        if not bundles:
            print(f"nothing to import from {args.bundles} yet")
            return 0
        tracker = Tracker(args.results)
        imported, present = import_bundles(bundles, tracker)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"imported {imported} run(s) into {tracker.uri}; {present} were there already")
    return 0


def cmd_list(args) -> int:
    from suite.manifest import read_manifest_file

    for path in _manifests(args.experiments):
        doc = read_manifest_file(path)
        paper = doc.get("paper", {})
        arms = [a.get("name") for a in doc.get("arms", [])] or [doc.get("method", {}).get("name")]
        verified = "verified" if paper.get("verified") else "mapping not yet checked against the paper"
        print(f"{path}  [{paper.get('ref', '?')}, {verified}]\n    {doc.get('title', '')}\n"
              f"    method {doc.get('method', {}).get('name')} bits {doc.get('method', {}).get('bits')}; "
              f"arms: {', '.join(map(str, arms))}; seeds {doc.get('seeds')}; "
              f"profiles: {', '.join(doc.get('profiles', {}))}")
    return 0


def cmd_references(args) -> int:
    from suite import references

    if args.action == "template":
        names = [Path(m).stem if m.endswith((".yaml", ".yml")) else m for m in args.manifests]
        references.template(args.references, names).to_csv(sys.stdout, index=False)
    elif args.action == "import":
        changes = references.import_file(args.file, args.references)
        for change in changes:
            print(f"  filled {change}")
        print(f"{len(changes)} cell(s) filled in {args.references}" if changes else
              f"nothing to fill: every value in {args.file} is blank or already in {args.references}")
    else:
        cells = references.registered_cells(args.references)
        for manifest, group in cells.groupby("manifest", sort=True):
            filled = (group["status"] != "missing").sum()
            print(f"{manifest}: {filled} of {len(group)} cell(s) transcribed")
            for r in group.itertuples():
                print(f"    {r.arm:<34} {r.bits:>2}-bit  {r.status:<8} {r.table}, {r.row}, {r.column}")
        print("fill them: python -m suite references template > cells.csv, then references import cells.csv")
    return 0


def cmd_report(args) -> int:
    from suite.report import build_report

    pages = build_report(args.results, args.out, args.references)
    print(f"wrote {args.out} ({pages} pages)")
    return 0


def cmd_quickstart(args) -> int:
    from suite.manifest import load_manifest
    from suite.report import build_report
    from suite.runner import run_manifest

    started = time.perf_counter()
    # Validate every manifest before running any, so a typo fails in seconds, not after an hour of training.
    loaded = [m for m in (load_manifest(p, args.profile) for p in _manifests(args.experiments))
              if args.all or m.manifest.quickstart]
    for manifest in loaded:
        run_manifest(manifest, args.results, progress=not args.no_progress)
    pages = build_report(args.results, args.out, args.references)
    print(f"quickstart: {len(loaded)} manifest(s) at profile {args.profile!r} in "
          f"{time.perf_counter() - started:.0f} s; report {args.out.resolve()} ({pages} pages)\n"
          f"browse the runs: {Path(sys.executable).with_name('mlflow')} ui --backend-store-uri "
          f"sqlite:///{(args.results / 'mlflow.db').resolve()} --port 5000\n"
          f"  then open {UI_URL}")
    return 0


def cmd_import_checkpoint(args) -> int:
    from suite.evaluate import checkpoint_manifest
    from suite.manifest import parse_set_options, resolve_manifest
    from suite.runner import run_manifest

    doc, profile = checkpoint_manifest(
        args.checkpoint, model=args.model, dataset=args.dataset, setting=args.setting, data_root=args.data_root,
        data_overrides=parse_set_options(args.set), eval_batch_size=args.batch_size, device=args.device,
        trusted=args.trust_checkpoint,
    )
    loaded = resolve_manifest(doc, args.checkpoint, profile)
    loaded.command = "python -m suite " + shlex.join(args.argv)
    run_manifest(loaded, args.results, progress=False)
    return 0


def torch_distributed_initialized() -> bool:
    """Whether this process joined a torchrun process group (without importing torch when it did not)."""
    module = sys.modules.get("torch.distributed")
    return bool(module and module.is_available() and module.is_initialized())


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="suite", description="MBQuant reproducibility suite")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a manifest (every arm and seed) through the shared trainer")
    run.add_argument("manifest", type=Path, help="the experiment to run, e.g. experiments/table3_cifar100_resnet20_2468.yaml")
    run.add_argument("--launcher", choices=["local", "gpus", "submitit"], default="local",
                     help="local: this process (default; under torchrun, all of its processes); gpus: every (arm, seed) "
                          "as its own process on this machine's GPUs; submitit: a SLURM job array")
    run.add_argument("--gpus-per-job", type=_positive, default=None, metavar="K",
                     help="GPUs per job (gpus, submitit): K > 1 runs each job under torchrun")
    run.add_argument("--jobs-per-gpu", type=_positive, default=None, metavar="K",
                     help="gpus launcher: K jobs share each GPU (or CPU slot) at once; `suite doctor` suggests K "
                          "(default: the profile's cluster block, else 1)")
    run.add_argument("--cpu-slots", type=_positive, default=None, metavar="N", help="gpus launcher without GPUs: N CPU jobs")
    run.add_argument("--partition", default=None, help="SLURM partition (submitit; else the profile's cluster block)")
    run.add_argument("--time", type=_positive, default=None, metavar="MINUTES", help="SLURM time limit per job (submitit)")
    run.add_argument("--cpus-per-task", type=_positive, default=None, help="CPUs per GPU process (submitit)")
    run.add_argument("--account", default=None, help="SLURM account (submitit)")
    run.add_argument("--submitit-executor", choices=["slurm", "local", "debug"], default="slurm",
                     help="submitit's executor: slurm, or its local / debug executors (tests, dry runs)")
    run.add_argument("--offline", type=Path, default=None, metavar="DIR",
                     help="track into a bundle under DIR instead of the store (for nodes that cannot reach it); "
                          "merge bundles later with import-runs DIR")
    run.set_defaults(func=cmd_run)

    pl = sub.add_parser("plan", help="every (arm, seed) job of a manifest: its state, steps left and estimated "
                                     "device-hours (a short measured probe of the step on this device)")
    pl.add_argument("manifest", type=Path, help="the experiment to plan, e.g. experiments/table1_imagenet_2468.yaml")
    pl.add_argument("--step-time", type=_positive_real, default=None, metavar="SECONDS",
                    help="seconds per joint step at the manifest's batch, instead of the probe")
    pl.add_argument("--probe-batch", type=_positive, default=None,
                    help="images in the probe's batch (default: 32, or 8 for images above 64 pixels)")
    pl.add_argument("--jobs-per-gpu", type=_positive, default=1, metavar="K",
                    help="K jobs sharing each GPU (the gpus launcher's --jobs-per-gpu): adds their wall time")
    pl.add_argument("--gain", type=_positive_real, default=None, metavar="G",
                    help="throughput of K jobs sharing a GPU relative to one job's, as `suite doctor` measured it")
    pl.set_defaults(func=cmd_plan)

    doc = sub.add_parser("doctor", help="a preflight of this machine for a manifest (minutes): environment, data, "
                                        "step time and memory, distributed, store; a table of pass / warn / fail")
    doc.add_argument("manifest", type=Path, nargs="?", default=None,
                     help="the manifest to check the machine for (none: the machine alone)")
    doc.add_argument("--memory-gib", type=_positive_real, default=None, metavar="GIB",
                     help="memory budget per device (default: the device's memory, or this machine's RAM)")
    doc.add_argument("--compile", choices=["auto", "none", "first", "all"], default="auto",
                     help="arms whose compiled step is measured too (auto: the first arm on a GPU, none on a CPU)")
    doc.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the checks as JSON")
    doc.set_defaults(func=cmd_doctor)

    imp_runs = sub.add_parser("import-runs", help="merge the run bundles under DIR (run --offline) into the store")
    imp_runs.add_argument("bundles", type=Path, metavar="DIR", help="the folder given to run --offline")
    imp_runs.set_defaults(func=cmd_import_runs)

    lst = sub.add_parser("list", help="list the shipped experiment manifests")
    lst.add_argument("--experiments", type=Path, default=EXPERIMENTS,
                     help=f"folder of manifests (default: {EXPERIMENTS})")
    lst.set_defaults(func=cmd_list)

    refs = sub.add_parser("references", help="the paper's numbers the verdicts compare with: list every registered "
                                             "cell, write a template of the missing ones, import a filled one")
    refs_sub = refs.add_subparsers(dest="action", metavar="{list,template,import}")
    refs_sub.add_parser("list", help="every registered cell per manifest with its value or \"missing\" (default)")
    refs_template = refs_sub.add_parser("template", help="the missing cells as CSV on standard output, to fill in")
    refs_template.add_argument("manifests", nargs="*", metavar="MANIFEST",
                               help="only these manifests (names or experiments/*.yaml paths; default: all)")
    refs_import = refs_sub.add_parser("import", help="validate a filled template and merge it into the registry "
                                                     "(all rows or none); prints what changed")
    refs_import.add_argument("file", type=Path, metavar="FILE", help="a filled template (references template)")
    for p in (refs, refs_template, refs_import):
        p.add_argument("--references", type=Path, default=REFERENCES, help=f"the registry (default: {REFERENCES})")
    refs.set_defaults(func=cmd_references, action="list")

    rep = sub.add_parser("report", help="collect the tracked runs into the PDF report")
    rep.set_defaults(func=cmd_report)

    quick = sub.add_parser("quickstart", help="the manifests marked `quickstart: true` (every method, the costs, the "
                                              "ImageNet pipeline checks) at the smoke profile, then the report")
    quick.add_argument("--experiments", type=Path, default=EXPERIMENTS,
                       help=f"folder of manifests (default: {EXPERIMENTS})")
    quick.add_argument("--all", action="store_true", help="every manifest, the ablations included (longer)")
    quick.add_argument("--profile", default="smoke",
                       help="the manifests' profile to run (default: smoke, minutes on a CPU; paper: the published "
                            "protocol)")
    quick.set_defaults(func=cmd_quickstart)

    imp = sub.add_parser("import-checkpoint", help="evaluate a released MBQuant checkpoint at every bit-width and "
                                                   "track it like a run")
    imp.add_argument("checkpoint", type=Path, help="torch.save'd release checkpoint (or bare state dict)")
    imp.add_argument("--model", default="resnet20", help="released model: resnet20, resnet8 (CIFAR), resnet18, "
                                                         "mobilenetv1 (ImageNet) (default: resnet20)")
    imp.add_argument("--dataset", default="cifar100",
                     help="cifar10, cifar100, or digits for an offline demo; sets the class count (default: cifar100)")
    imp.add_argument("--setting", default="2468", help="2468 (amortization) or 234 (serial) (default: 2468)")
    imp.add_argument("--data-root", default=None, help="dataset parent folder (default: $SUITE_DATA_ROOT, else ./data)")
    imp.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                     help="override a data field, e.g. --set data.val_limit=500 (repeatable)")
    imp.add_argument("--batch-size", type=_positive, default=256, help="evaluation batch size (default: 256)")
    imp.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    imp.add_argument("--trust-checkpoint", action="store_true",
                     help="allow arbitrary pickled objects in the file (only for files you trust)")
    imp.set_defaults(func=cmd_import_checkpoint)

    for p in (run, pl, doc):
        p.add_argument("--profile", default="paper", help="named profile of the manifest (default: paper)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a manifest field, e.g. --set recipe.epochs=3 (repeatable)")
    for p in (run, pl):
        p.add_argument("--arm", action="append", default=None, metavar="NAME", help="only this arm (repeatable)")
        p.add_argument("--seed", action="append", default=None, type=int, metavar="K", help="only this seed (repeatable)")
    for p in (run, quick):
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for p in (run, rep, quick, imp, imp_runs, pl, doc):
        p.add_argument("--results", type=Path, default=RESULTS, help="run store and MLflow database (default: results)")
    for p in (rep, quick):
        p.add_argument("--out", type=Path, default=REPORT, help=f"PDF path (default: {REPORT})")
        p.add_argument("--references", type=Path, default=None,
                       help=f"reference-number registry (default: {REFERENCES})")

    for p in (run, quick, imp):
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import MODULE and register the method it defines as METHOD (repeatable)")

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    getattr(sys.stdout, "reconfigure", lambda **_: None)(line_buffering=True)  # progress lines appear as they happen, also under tox / CI
    from suite import interrupts
    from suite.checkpoints import CheckpointError
    from suite.data import DataError, DatasetNotFound
    from suite.manifest import ManifestError
    from suite.methods import PluginError, load_plugin
    from suite.paths import PathEscape, disk_full
    from suite.references import ReferenceError
    from suite.release import InteropError
    from suite.tracking import StoreError

    try:
        with interrupts.installed():
            for module in getattr(args, "plugin", []):
                load_plugin(module)
            return args.func(args)
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ManifestError, DatasetNotFound, DataError, InteropError, PluginError, StoreError, CheckpointError,
            ReferenceError, PathEscape, OSError) as err:  # OSError: a path given that cannot be used (a file where a folder belongs, ...)
        if isinstance(err, OSError) and err.filename:  # any other write that found the disk full: say how full
            err = disk_full(err, err.filename) or err
        print(f"error: {err}", file=sys.stderr)
        return 2
    except interrupts.Interrupted as err:
        print(f"\n{err}: the runs are closed as KILLED; run the same command again to resume", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if torch_distributed_initialized():
            import torch.distributed

            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
