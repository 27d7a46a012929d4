"""Declarative experiment manifests (``experiments/*.yaml``): schema, profiles, overrides, arms.

A manifest is validated in full before anything runs: the base document, every profile, every arm, and the
command line's ``--set`` overrides. An unknown or ill-typed key is an error that names the file and the field.
Resolution order: base document <- profile <- ``--set`` <- arm.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import shlex
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic_core import PydanticCustomError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, field_validator, \
    model_validator

from suite.analyses import ANALYSES
from suite.claims import Claim
from suite.cluster import ClusterSpec
from suite.data import LOADER_ONLY, PIPELINE_VERSION, DataConfig
from suite.fields import FieldError, check_distinct
from suite.manifest_file import MAX_DEPTH, ManifestError, load_yaml, read_manifest_file
from suite.paths import identifier_problem, inside
from suite.methods import method as registered_method, supported_archs
from suite.recipe import ADDED_LATER, Recipe
from suite.tasks import TASKS

MAX_SEED = 2**31 - 1
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]


def _numeric_fields(cls) -> set[str]:
    """Fields of a dataclass annotated with int or float (possibly optional), which must not take a boolean."""
    hints = typing.get_type_hints(cls)
    out = set()
    for f in dataclasses.fields(cls):
        args = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if args & {int, float} and bool not in args:
            out.add(f.name)
    return out


_NUMBER = re.compile(r"\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")  # what YAML would read as a number


def reject_non_numbers(section: Any, cls, prefix: str) -> None:
    """Where a number is expected, YAML's true/false would pass as 1/0 and a quoted '2' as 2: name the field."""
    if isinstance(section, dict):
        for name in _numeric_fields(cls) & set(section):
            value = section[name]
            if isinstance(value, bool):
                raise FieldError(f"{prefix}{name}", f"must be a number, got a boolean ({str(value).lower()})")
            if isinstance(value, str):
                hint = ": drop the quotes" if _NUMBER.fullmatch(value) else ""
                raise FieldError(f"{prefix}{name}", f"must be a number, got a string ({value!r}){hint}")


class _Strict(BaseModel):
    # strict: a quoted "90" is not the number 90, nor "yes" a boolean
    model_config = ConfigDict(extra="forbid", strict=True)


def _identifier(value: str) -> str:
    problem = identifier_problem(value)
    if problem:
        raise PydanticCustomError("identifier", problem)
    return value


# Becomes a file name, an MLflow experiment or metric name, or a tag: checked before anything opens.
Identifier = Annotated[str, AfterValidator(_identifier)]


def _registered(registry):
    """A validator of names ``registry`` holds, importing nothing they name."""
    def check(name: str) -> str:
        try:
            return registry.known(name)
        except ValueError as err:
            raise PydanticCustomError("registered", str(err)) from None
    return check


TaskName = Annotated[str, AfterValidator(_registered(TASKS))]
AnalysisName = Annotated[str, AfterValidator(_registered(ANALYSES))]


class PaperReference(_Strict):
    ref: str = Field(description='the paper table or figure this reproduces, e.g. "Table 3" or "Fig. 3"')
    verified: bool = Field(False, description="whether this mapping was checked against the paper")
    note: str = ""


class ModelSpec(_Strict):
    arch: str


class MethodSpec(_Strict):
    name: str
    bits: list[StrictInt] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _method_options(self):
        method = registered_method(self.name)
        check_distinct("bits", self.bits)
        reject_non_numbers(self.options, method.Options, "options.")
        try:
            options = TypeAdapter(method.Options).validate_python(self.options)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            hint = _did_you_mean(first, _known_fields(method.Options, [str(p) for p in first["loc"]]))
            raise ValueError(f"options.{where}: {first['msg']}{hint}") from None
        method.check_bits(self.bits, options)
        self.options = asdict(options)  # normalised: every option explicit, so the run's params say everything
        return self


class CheckpointSpec(_Strict):
    """The checkpoint a ``task: evaluate`` manifest evaluates (the release's format)."""

    path: str
    sha256: str = Field(description="the file's SHA-256: part of the run's identity, checked before evaluating")
    trusted: bool = Field(False, description="allow arbitrary pickled objects in the file (only for files you trust)")


class Arm(_Strict):
    name: Identifier
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides, e.g. method.options.selection")


class Manifest(_Strict):
    name: Identifier
    version: StrictInt = Field(ge=1, description="bump when the experiment's meaning changes")
    title: str
    claim: str = Field("", description="the paper's claim this experiment checks, in one sentence")
    claims: list[Claim] = Field(default_factory=list, description="the claim as checks over this manifest's own "
                                "results, each with its verdict in the report (suite.claims)")
    headline: Identifier | None = Field(None, description="the arm that difference panels and claim checks set against "
                                 "every other (default: the first MBQuant arm, else the first arm)")
    task: TaskName = Field(
        "train", description="train: every (arm, seed) through the trainer; costs: storage and BitOPs of every "
        "arm's model, measured without training or data; evaluate: a released checkpoint at every bit-width "
        "(suite.tasks)")
    experiment: Identifier | None = Field(None, description="MLflow experiment of the runs (default: the manifest name; a "
                                            "profile that stands in for the paper's setting: one named by what ran)")
    checkpoint: CheckpointSpec | None = None
    paper: PaperReference
    data: DataConfig
    model: ModelSpec
    method: MethodSpec
    recipe: Recipe
    seeds: list[Seed] = Field(min_length=1)
    analyses: list[AnalysisName] = Field(
        default_factory=list, description="measurements on each trained model (its best checkpoint), logged to "
        "the run (suite.analyses); quant_error: weight / activation switching error per layer and bit-width")
    arms: list[Arm] = Field(default_factory=list)
    profiles: dict[Identifier, dict[str, Any]] = Field(default_factory=dict)
    tolerance: float | None = Field(None, description="top-1 points within which a reproduction agrees with the paper")
    cluster: ClusterSpec | None = None
    quickstart: bool = Field(False, description="part of `python -m suite quickstart` (at its smoke profile); the "
                             "other manifests run with `quickstart --all`")
    pipeline_check: bool = Field(False, description="the runs only show that every arm runs end to end (too short "
                                 "to learn): the report draws no accuracy comparison from them")

    @field_validator("arms")
    @classmethod
    def _unique_arm_names(cls, arms):
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return arms

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, doc):
        if isinstance(doc, dict):
            reject_non_numbers(doc.get("recipe"), Recipe, "recipe.")
            reject_non_numbers(doc.get("data"), DataConfig, "data.")
            if isinstance(doc.get("tolerance"), (bool, str)):
                raise FieldError("tolerance", f"must be a number, got {doc['tolerance']!r}")
        return doc

    @model_validator(mode="after")
    def _consistent(self):
        if (self.task == "evaluate") != (self.checkpoint is not None):
            raise FieldError("checkpoint", "is needed by task: evaluate, and only there")
        check_distinct("seeds", self.seeds)
        archs = supported_archs(self.method.name)
        if self.model.arch not in archs:
            raise FieldError("model.arch", f"{self.model.arch!r} is not an architecture {self.method.name} builds "
                                           f"(known: {', '.join(archs)})")
        arms = {a.name for a in self.arms} or {self.method.name}
        if self.headline is not None and self.headline not in arms:
            raise FieldError("headline", f"{self.headline!r} is not an arm (known: {', '.join(sorted(arms))})")
        methods = {a.set.get("method.name", self.method.name) for a in self.arms} | {self.method.name}
        for i, claim in enumerate(self.claims):
            if claim.arm is not None and claim.arm not in arms:
                raise FieldError(f"claims[{i}].arm", f"{claim.arm!r} is not an arm (known: {', '.join(sorted(arms))})")
            unknown = [a for a in claim.against if a not in arms | methods]
            if unknown:
                raise FieldError(f"claims[{i}].against", f"{', '.join(map(repr, unknown))}: neither an arm nor a "
                                                         f"method of this manifest")
            if claim.bits is not None and (claim.check != "top1_not_below" or set(claim.bits) - set(self.method.bits)):
                raise FieldError(f"claims[{i}].bits", f"names bit-widths a top1_not_below check compares, among "
                                                      f"method.bits {self.method.bits}; got {claim.bits}")
        if self.tolerance is not None and not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise FieldError("tolerance", f"must be a finite number >= 0 (top-1 points), got {self.tolerance}")
        train = self.data.train_size()
        if self.task == "train" and train is not None and self.recipe.batch_size > train:
            raise FieldError("recipe.batch_size", f"must be at most the {train} training images of "
                                                  f"{self.data.dataset} (every batch would be dropped), got "
                                                  f"{self.recipe.batch_size}")
        return self

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name


def set_dotted(doc: dict, dotted: str, value: Any) -> None:
    """``set_dotted(d, "recipe.epochs", 3)``; intermediate mappings are created, typos caught by validation."""
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        node = doc.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(parents[:depth + 1])
            raise FieldError(where, f"is {node!r}, not a mapping: cannot set {dotted}")
        doc = node
    doc[leaf] = value


def apply_overrides(doc: dict, overrides: dict[str, Any]) -> dict:
    doc = copy.deepcopy(doc)
    for dotted, value in overrides.items():
        set_dotted(doc, dotted, value)
    return doc


def _overridden(doc: dict, overrides: dict[str, Any], path: Path, source: str) -> dict:
    try:
        return apply_overrides(doc, overrides)
    except FieldError as err:
        raise ManifestError(f"{path}: invalid manifest ({source})\n  field `{err.field}`: {err.message}") from None


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    """``["recipe.epochs=3", "method.bits=[2,4]"]`` -> dict; values are parsed as YAML scalars / lists."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ManifestError(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        if key.count(".") >= MAX_DEPTH:
            raise ManifestError(f"--set {key[:40]}...: a field nested more than {MAX_DEPTH} levels deep")
        try:
            out[key.strip()] = load_yaml(raw)
        except yaml.YAMLError as err:
            shown = pair if len(pair) <= 80 else f"{pair[:77]}..."
            raise ManifestError(f"--set {shown!r}: the value is not valid YAML ({err})") from None
    return out


def _validate(doc: dict, path: Path, source: str) -> Manifest:
    try:
        return Manifest.model_validate(doc)
    except ValidationError as err:
        lines = [f"{path}: invalid manifest ({source})"]
        for e in err.errors():
            loc, message = [str(p) for p in e["loc"]], e["msg"]
            cause = e.get("ctx", {}).get("error")
            if isinstance(cause, FieldError):  # a range check inside a section: name the field itself
                loc, message = loc + cause.field.split("."), cause.message
            message += _did_you_mean(e, _known_fields(Manifest, loc))
            lines.append(f"  field `{'.'.join(loc) or '(top level)'}`: {message}")
        raise ManifestError("\n".join(lines)) from None
    except ManifestError:
        raise
    except ValueError as err:  # raised outside pydantic's field machinery
        raise ManifestError(f"{path}: invalid manifest ({source}): {err}") from None


def _known_fields(cls: Any, loc: list[str]) -> set[str]:
    """The field names beside the last part of ``loc`` (a path into ``cls``'s nested models and dataclasses)."""
    for part in loc[:-1]:
        try:
            hints = typing.get_type_hints(cls)
        except TypeError:
            return set()
        if part not in hints:
            return set()
        cls = next((a for a in typing.get_args(hints[part]) if a is not type(None)), hints[part])  # X | None -> X
    try:
        return set(typing.get_type_hints(cls)) - {"model_config"}
    except TypeError:
        return set()


def _did_you_mean(error: dict, known: set[str]) -> str:
    """", did you mean `epochs`?" for a misspelt key, when one known field is close."""
    if error["type"] not in ("unexpected_keyword_argument", "extra_forbidden") or not error["loc"]:
        return ""
    close = difflib.get_close_matches(str(error["loc"][-1]), sorted(known), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def config_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ResolvedArm(BaseModel):
    """One arm of a resolved manifest: the complete configuration its runs use."""

    name: str
    config: Manifest  # the manifest with the profile, --set and this arm's overrides applied

    @property
    def run_spec(self) -> dict:
        """What determines a run's result besides its seed (not which manifest or arm asks for it, nor settings that
        only change speed; fields added later count only where they differ from the earlier behaviour)."""
        c = self.config
        data = {k: v for k, v in asdict(c.data).items() if k not in LOADER_ONLY} | {"pipeline": PIPELINE_VERSION}
        recipe = {k: v for k, v in asdict(c.recipe).items() if ADDED_LATER.get(k, object()) != v}
        spec = {"data": data, "model": c.model.model_dump(), "method": c.method.model_dump(), "recipe": recipe}
        return spec | ({"checkpoint": c.checkpoint.model_dump()} if c.checkpoint else {})

    def run_key(self, seed: int) -> str:
        """A run's identity: identical configurations share it, across arms and manifests."""
        return config_hash({**self.run_spec, "seed": seed})

    def run_dir(self, results_dir: Path, seed: int) -> Path:
        """Where a run's checkpoints and result live: keyed by configuration, so a killed run resumes whichever
        manifest started it."""
        cfg = self.config
        return inside(results_dir, "runs", f"{cfg.model.arch}-{cfg.method.name}", f"{self.run_key(seed)}-seed{seed}")


class LoadedManifest(BaseModel):
    path: Path
    profile: str
    overrides: dict[str, Any] = {}  # the --set values applied
    manifest: Manifest  # profile and --set applied, arms not yet
    arms: list[ResolvedArm]
    command: str = ""  # the command that reproduces this invocation
    jobs: list[tuple[str, int]] = []  # every (arm, seed) the manifest plans, also when a subset is run

    def model_post_init(self, _context) -> None:
        if not self.jobs:
            seeds = self.manifest.seeds if self.manifest.task == "train" else [0]
            self.jobs = [(arm.name, seed) for arm in self.arms for seed in seeds]
        if not self.command:
            sets = "".join(f" --set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in self.overrides.items())
            self.command = f"python -m suite run {shlex.quote(str(self.path))} --profile {self.profile}{sets}"

    def subset(self, arms: list[str] | None = None, seeds: list[int] | None = None) -> "LoadedManifest":
        """Only the named arms and seeds (each must be the manifest's); the planned jobs stay the manifest's."""
        for asked, known, what in ((arms, [a.name for a in self.arms], "arm"), (seeds, self.manifest.seeds, "seed")):
            unknown = [a for a in asked or [] if a not in known]
            if unknown:
                raise ManifestError(f"{self.path}: no {what} {', '.join(map(repr, unknown))} in profile "
                                    f"`{self.profile}` (known: {', '.join(map(str, known))})")
        manifest = self.manifest.model_copy(update={"seeds": seeds or self.manifest.seeds})
        kept = [a for a in self.arms if not arms or a.name in arms]
        chosen = "".join(f" --arm {shlex.quote(a)}" for a in arms or []) + "".join(f" --seed {k}" for k in seeds or [])
        return self.model_copy(update={"manifest": manifest, "arms": kept, "command": self.command + chosen})

    @property
    def hash(self) -> str:
        m = self.manifest
        return config_hash([m.name, m.version, [a.run_spec for a in self.arms], m.seeds])

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.manifest.model_dump(mode="json"), sort_keys=False)


def load_manifest(path: str | Path, profile: str = "paper", overrides: dict[str, Any] | None = None) -> LoadedManifest:
    """Read, resolve and validate a manifest; raises ManifestError before anything is run or written."""
    return resolve_manifest(read_manifest_file(Path(path)), Path(path), profile, overrides)


def resolve_manifest(doc: dict, path: Path, profile: str = "paper",
                     overrides: dict[str, Any] | None = None) -> LoadedManifest:
    """Validate a manifest document (``path`` names it in errors), apply ``profile`` and ``overrides``, resolve arms."""
    base = _validate(doc, path, "base document")
    for name, profile_overrides in base.profiles.items():  # every profile must be valid, not only this one
        _validate(_overridden(doc, profile_overrides, path, f"profile `{name}`"), path, f"profile `{name}`")
    if profile not in base.profiles:
        known = ", ".join(base.profiles) or "none"
        raise ManifestError(f"{path}: field `profiles`: no profile named {profile!r} (defined: {known})")
    source = f"profile `{profile}` + --set" if overrides else f"profile `{profile}`"
    resolved_doc = _overridden(_overridden(doc, base.profiles[profile], path, source), overrides or {}, path, source)
    manifest = _validate(resolved_doc, path, source)
    arms = manifest.arms or [Arm(name=manifest.method.name)]
    resolved = []
    for i, arm in enumerate(arms):
        where = f"arms[{i}] `{arm.name}`"
        config = _validate(_overridden(resolved_doc, arm.set, path, where), path, where)
        resolved.append(ResolvedArm(name=arm.name, config=config))
    return LoadedManifest(path=path, profile=profile, overrides=overrides or {}, manifest=manifest, arms=resolved)


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"recipe.epochs": 200, ...}, the form MLflow params take."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): doc}
