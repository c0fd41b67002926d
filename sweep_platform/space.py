"""Sweep files: one YAML file in, one validated `SweepSpec` out, and from it the Optuna define-by-run space.

A sweep file names the trainable, the dataset, the fixed base config, the parameters to search (dotted key paths
into the trainable's config), the sampler, the scheduler and the resources per trial (format: search_spaces/README.md).

`load_sweep` validates everything before anything runs, and reports every problem at once, each line naming the file,
the key path and what is allowed: YAML syntax, the schema, the trainable, the metrics, every space key path against
the trainable's config type, every choice / fixed / range bound against its own field, the order of `when` and
`same_as` references, the grid, the scheduler. What it cannot know before sampling (cross-field rules such as BAST's
"SP needs layers_left == layers_right") is checked by the trainable's config type on each trial's config.

Downstream (the sweep driver):
    spec = load_sweep(path)
    OptunaSearch(space=define_by_run(spec), sampler=make_sampler(spec), metric=..., mode=...)
    config = trial_config(spec, tune_config)      # the flat dotted params Ray hands the trial -> nested config
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import textwrap
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sweep_platform import configfile
from sweep_platform.configfile import ConfigError

if typing.TYPE_CHECKING:  # optuna is imported lazily: loading a sweep file must not pay for it
    import optuna

SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes", "nsga2", "qmc")
PARAM_KINDS = ("choice", "int", "float", "fixed", "same_as")
# Samplers that handle several objectives (CMA-ES is single-objective only).
_MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "grid", "gp", "nsga2", "qmc")
# Optional packages a sampler needs at sampling time; checked at load time instead.
_SAMPLER_PACKAGES = {"cmaes": "cmaes", "gp": "scipy", "qmc": "scipy"}

# Metrics each trainable reports every epoch through ray.train.report (design.md names). A trainable may declare its
# own with a `metrics` attribute on its TrainableSpec; this table covers the built-ins until then.
_EPOCH_METRICS: dict[str, tuple[str, ...]] = {
    "bast": ("val_ad_deg", "val_mse", "val_loss", "train_loss"),
    "binaural": ("val_stft_dist", "val_env_dist", "val_loss", "train_loss"),
}
# Measured once per trial by the driver (model size in millions of parameters): usable as an extra objective, never
# as the metric ASHA stops on, which needs a value every epoch.
TRIAL_METRICS: tuple[str, ...] = ("params_m",)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PRIMITIVE = (str, int, float, bool, type(None))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---------------------------------------------------------------------------------------------------------- schema


class ParamSpec(_Strict):
    """One searched (or derived) parameter. Exactly one kind: choice, int, float, fixed or same_as.

    `when: {key: value-or-list}` makes it conditional on earlier parameters (all must hold; a list means any of);
    `else:` (fixed or same_as) is used when the condition is false; without `else` the key is left unset then.
    """

    choice: list[Any] | None = None
    int_range: tuple[int, int] | None = Field(None, alias="int")
    float_range: tuple[float, float] | None = Field(None, alias="float")
    fixed: Any = None
    same_as: str | None = None
    step: float | None = Field(None, gt=0, description="grid step of an int or float range")
    log: bool = Field(False, description="sample a range on a log scale")
    when: dict[str, Any] | None = None
    else_: ParamSpec | None = Field(None, alias="else")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data):
        if not isinstance(data, dict):
            raise ValueError(
                f"expected a mapping with one of {', '.join(PARAM_KINDS)}, e.g. {{choice: [a, b]}}, "
                f"{{float: [1.0e-5, 1.0e-3], log: true}} or {{fixed: {data!r}}}; got {data!r}")
        return data

    @property
    def kind(self) -> str:
        given = [k for k, f in (("choice", "choice"), ("int", "int_range"), ("float", "float_range"),
                                ("fixed", "fixed"), ("same_as", "same_as")) if f in self.model_fields_set]
        return given[0]

    @property
    def bounds(self) -> tuple[float, float] | None:
        return self.int_range or self.float_range

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        given = [k for k, f in (("choice", "choice"), ("int", "int_range"), ("float", "float_range"),
                                ("fixed", "fixed"), ("same_as", "same_as")) if f in self.model_fields_set]
        if len(given) != 1:
            what = f"got {', '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one of {', '.join(PARAM_KINDS)} ({what})")
        kind = given[0]
        if kind not in ("int", "float") and ({"step", "log"} & self.model_fields_set):
            raise ValueError(f"step and log apply to int and float ranges only, not to {kind}")
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
            bad = [v for v in self.choice if not isinstance(v, _PRIMITIVE)]
            if bad:
                raise ValueError(f"choice values must be strings, numbers, booleans or null (Optuna categorical); "
                                 f"got {bad[0]!r}")
            if len({repr(v) for v in self.choice}) != len(self.choice):
                raise ValueError(f"choice values must be distinct, got {self.choice}")
        if kind in ("int", "float"):
            lo, hi = self.bounds
            if lo > hi:
                raise ValueError(f"{kind} range [{lo}, {hi}]: the low end must not exceed the high end")
            if self.log and lo <= 0:
                raise ValueError(f"log scale needs a positive low end, got [{lo}, {hi}]")
            if self.log and self.step is not None and not (kind == "int" and self.step == 1):
                raise ValueError("log and step cannot be combined (Optuna)")
            if kind == "int" and self.step is not None and self.step != int(self.step):
                raise ValueError(f"an int range needs an integer step, got {self.step}")
        if self.when is not None:
            if not self.when:
                raise ValueError("when needs at least one condition, e.g. {loss.name: hybrid}")
            for key, want in self.when.items():
                values = want if isinstance(want, list) else [want]
                if not values or not all(isinstance(v, _PRIMITIVE) for v in values):
                    raise ValueError(f"when.{key}: give a value or a list of values, got {want!r}")
        if self.else_ is not None:
            if self.when is None:
                raise ValueError("else applies only together with when")
            if self.else_.kind not in ("fixed", "same_as") or self.else_.when is not None:
                raise ValueError("else must be {fixed: value} or {same_as: key}, without a when of its own")
        return self

    def describe(self) -> str:
        kind = self.kind
        if kind == "choice":
            text = "choice  " + " | ".join(_fmt(v) for v in self.choice)
        elif kind in ("int", "float"):
            lo, hi = self.bounds
            text = f"{kind:<7} [{_fmt(lo)}, {_fmt(hi)}]" + (" log" if self.log else "") + (
                f" step {_fmt(self.step)}" if self.step is not None else "")
        elif kind == "fixed":
            text = f"fixed   {_fmt(self.fixed)}"
        else:
            text = f"same as {self.same_as}"
        if self.when is not None:
            text += "  when " + ", ".join(
                f"{k} in {want}" if isinstance(want, list) else f"{k} = {_fmt(want)}" for k, want in self.when.items())
            if self.else_ is not None:
                text += ", else " + (f"{_fmt(self.else_.fixed)}" if self.else_.kind == "fixed"
                                     else f"same as {self.else_.same_as}")
        return text


class Objective(_Strict):
    metric: str
    mode: Literal["min", "max"] = "min"


class SchedulerSpec(_Strict):
    """ASHA (asynchronous successive halving) over epochs, or none (every trial runs all its epochs)."""

    type: Literal["asha", "none"] = "asha"
    grace_epochs: int = Field(1, ge=1, description="epochs every trial gets before it can be stopped")
    max_epochs: int | None = Field(None, ge=1, description="ASHA's max_t; default: base train.epochs")
    reduction_factor: float = Field(2.0, gt=1.0)

    @model_validator(mode="after")
    def _check(self) -> SchedulerSpec:
        extra = sorted({"grace_epochs", "max_epochs", "reduction_factor"} & self.model_fields_set)
        if self.type == "none" and extra:
            raise ValueError(f"{', '.join(extra)} only apply to type asha")
        return self

    def rungs(self) -> list[int]:
        """Epochs at which ASHA compares trials (grace * rf^k below max_epochs)."""
        if self.type != "asha" or self.max_epochs is None:
            return []
        out, t = [], float(self.grace_epochs)
        while t < self.max_epochs:
            out.append(int(round(t)))
            t *= self.reduction_factor
        return out


class ResourcesSpec(_Strict):
    """Per trial: a TorchTrainer with `workers` DDP workers, each with these CPUs and GPUs."""

    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)


class SamplerSpec(_Strict):
    type: Literal["tpe", "random", "grid", "gp", "cmaes", "nsga2", "qmc"] = "tpe"
    seed: int = 0
    group: bool = Field(False, description="TPE only: sample conditional groups of parameters jointly")
    n_startup_trials: int | None = Field(None, ge=0, description="TPE and GP only: random trials before modelling")

    @model_validator(mode="after")
    def _check(self) -> SamplerSpec:
        if "group" in self.model_fields_set and self.type != "tpe":
            raise ValueError(f"group applies to type tpe only, not {self.type}")
        if self.n_startup_trials is not None and self.type not in ("tpe", "gp"):
            raise ValueError(f"n_startup_trials applies to types tpe and gp only, not {self.type}")
        return self


class SweepSpec(_Strict):
    """A validated sweep file. After `load_sweep`, metric, mode, trials and (for ASHA) max_epochs are filled in."""

    name: str
    trainable: str
    dataset: str | None = Field(None, description="dataset folder (manifest.json) relative to BINSWEEP_HOME")
    dataset_build: dict[str, Any] | None = Field(None, description="options to build the dataset when missing")
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    objectives: list[Objective] | None = None
    trials: int | None = Field(None, ge=1)
    scheduler: SchedulerSpec = SchedulerSpec()
    concurrency: Union[Literal["auto"], int] = "auto"
    resources: ResourcesSpec = ResourcesSpec()
    sampler: SamplerSpec = SamplerSpec()
    experiment: str | None = Field(None, description="MLflow experiment; default binsweep-<trainable>")
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    source: str = Field("", exclude=True, repr=False, description="the file it came from (not part of equality)")

    @field_validator("base", "space", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
        return v

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"{v!r} is not allowed (allowed: auto or a positive integer)")

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v):
        if v is not None:
            if not v:
                raise ValueError("give at least one objective, or leave objectives out")
            names = [o.metric for o in v]
            if len(set(names)) != len(names):
                raise ValueError(f"objective metrics must be distinct, got {names}")
        return v

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SweepSpec):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # dict fields: not hashable

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None and len(self.objectives) > 1

    @property
    def metrics(self) -> list[str]:
        """Objective metric names, the first being the one ASHA and `get_best_result` use."""
        return [o.metric for o in self.objectives] if self.objectives else [self.metric]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives] if self.objectives else [self.mode]


# ------------------------------------------------------------------------------------------------------ load_sweep


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; every problem is reported at once in one ConfigError."""
    path = Path(path)
    data = configfile.load_yaml(path)
    data.setdefault("name", path.stem)
    return parse_sweep(data, str(path))


def parse_sweep(data: dict[str, Any], source: str) -> SweepSpec:
    """Validate a sweep given as a dict (what `load_sweep` read); `source` names it in error messages."""
    from trainables.registry import TrainableNotFoundError, get_trainable, known_trainables

    if "source" in data:
        raise ConfigError(f"{source}: source: unknown key (misspelt?) (allowed: {', '.join(_field_names(SweepSpec))})")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_schema_errors(exc, source))) from None
    try:
        trainable = get_trainable(spec.trainable)
    except TrainableNotFoundError:
        raise ConfigError(f"{source}: trainable: unknown trainable {spec.trainable!r} "
                          f"(allowed: {', '.join(known_trainables())})") from None
    checker = _Checker(spec, trainable, source)
    resolved = checker.run()
    if checker.errors:
        raise ConfigError("\n".join(checker.errors))
    return resolved.model_copy(update={"source": source})


class _Checker:
    """The checks that need the trainable: collects every error, then returns the spec with defaults resolved."""

    def __init__(self, spec: SweepSpec, trainable, source: str):
        self.spec, self.trainable, self.source = spec, trainable, source
        self.config_type: type[BaseModel] = trainable.config_type
        self.errors: list[str] = []
        self.bad: set[str] = set()  # space keys with an error of their own: no follow-up errors about them

    def err(self, where: str, message: str) -> None:
        self.errors.append(f"{self.source}: {where}: {message}")

    def run(self) -> SweepSpec:
        self.base = self._check_base()  # the validated base config, or None when it is invalid
        update: dict[str, Any] = self._check_metrics()
        update["space"] = self._check_space()
        update.update(self._check_sampler(self.spec.model_copy(update=update)))
        update.update(self._check_scheduler())
        self._check_resources(update["space"])
        return self.spec.model_copy(update=update)

    # -- base and dataset

    def _check_base(self) -> BaseModel | None:
        spec, base = self.spec, self.spec.base
        if spec.dataset is not None or spec.dataset_build is not None:
            field = _field_at(self.config_type, ("data", "root"))
            if not isinstance(field, _Field):
                self.err("dataset", f"trainable {spec.trainable!r} has no data.root in its config to put it in")
            elif spec.dataset is None:
                self.err("dataset_build", "needs dataset: the folder to build into, e.g. dataset: data/loc_smoke")
        if spec.dataset is not None and isinstance(base.get("data"), dict) and "root" in base["data"] \
                and base["data"]["root"] != spec.dataset:
            self.err("base.data.root", f"{base['data']['root']!r} conflicts with dataset {spec.dataset!r}; "
                     "set the dataset with the top-level dataset key only")
        try:
            return self.config_type.model_validate(self.base_dict())
        except ValidationError as exc:
            self.errors.extend(_validation_lines(exc, self.source, "base", self.config_type))
            return None

    def base_dict(self) -> dict[str, Any]:
        return trial_config(self.spec, {})

    # -- metrics

    def _check_metrics(self) -> dict[str, Any]:
        spec, tr = self.spec, self.trainable
        epoch = reported_metrics(tr)
        update: dict[str, Any] = {}
        if spec.metric is not None and spec.metric not in epoch:
            self.err("metric", f"{spec.trainable} does not report {spec.metric!r} every epoch "
                     f"(allowed: {', '.join(epoch)})")
        if spec.objectives:
            first = spec.objectives[0]
            for i, o in enumerate(spec.objectives):
                allowed = epoch if i == 0 else epoch + TRIAL_METRICS
                if o.metric not in allowed:
                    why = " (the first objective is the one ASHA stops on, so it must be reported every epoch)" \
                        if i == 0 and o.metric in TRIAL_METRICS else ""
                    self.err(f"objectives[{i}].metric", f"{spec.trainable} does not report {o.metric!r}{why} "
                             f"(allowed: {', '.join(allowed)})")
            if spec.metric is not None and spec.metric != first.metric:
                self.err("metric", f"{spec.metric!r} differs from the first objective {first.metric!r}; "
                         "leave metric out or make them the same")
            if spec.mode is not None and spec.metric in (None, first.metric) and spec.mode != first.mode:
                self.err("mode", f"{spec.mode!r} differs from the first objective's mode {first.mode!r}")
            update["metric"], update["mode"] = first.metric, first.mode
        else:
            update["metric"] = spec.metric or tr.primary_metric
            update["mode"] = spec.mode or (tr.mode if update["metric"] == tr.primary_metric else "min")
        return update

    # -- space

    def _check_space(self) -> dict[str, ParamSpec]:
        space = self.spec.space
        seen: list[str] = []
        out: dict[str, ParamSpec] = {}
        self.checked = out  # earlier params, their values typed by the config
        for key, p in space.items():
            where = f"space.{key}"
            before = len(self.errors)
            field = _field_at(self.config_type, tuple(key.split(".")))
            if not isinstance(field, _Field):
                self.err(where, field)
                seen.append(key)
                out[key] = p
                continue
            if key == "data.root":
                self.err(where, "the dataset is fixed per sweep; set it with the top-level dataset key")
            p = self._check_param(key, p, where, field, seen, space)
            if len(self.errors) > before:
                self.bad.add(key)
            seen.append(key)
            out[key] = p
        return out

    def _check_param(self, key: str, p: ParamSpec, where: str, field: _Field, seen: list[str],
                     space: dict[str, ParamSpec]) -> ParamSpec:
        update: dict[str, Any] = {}
        if p.when is not None:
            when = {}
            for ref, want in p.when.items():
                if ref not in seen:
                    self.err(f"{where}.when.{ref}", _not_earlier(ref, key, seen, space))
                    when[ref] = want
                    continue
                when[ref] = want if ref in self.bad else \
                    self._check_when_value(f"{where}.when.{ref}", ref, want, self.checked[ref])
            update["when"] = when
        update.update(self._check_kind(key, p, where, field, seen, space))
        if p.else_ is not None:
            alt = self._check_kind(key, p.else_, f"{where}.else", field, seen, space)
            update["else_"] = p.else_.model_copy(update=alt)
        return p.model_copy(update=update)

    def _check_kind(self, key: str, p: ParamSpec, where: str, field: _Field, seen: list[str],
                    space: dict[str, ParamSpec]) -> dict[str, Any]:
        kind = p.kind
        if kind == "choice":
            return {"choice": self._check_values(key, p.choice, f"{where}.choice")}
        if kind == "fixed":
            return {"fixed": self._check_values(key, [p.fixed], f"{where}.fixed")[0]}
        if kind == "same_as":
            ref = p.same_as
            if ref not in seen:
                self.err(f"{where}.same_as", _not_earlier(ref, key, seen, space))
            elif ref not in self.bad:
                target = self.checked[ref]
                if target.kind in ("choice", "fixed", "int", "float"):
                    values = target.choice if target.kind == "choice" else (
                        [target.fixed] if target.kind == "fixed" else list(target.bounds))
                    self._check_values(key, values, f"{where}.same_as", what=f"{ref}'s value ")
            return {}
        # int / float range
        base_type = _scalar_type(field.annotation)
        if kind == "float" and base_type is int:
            self.err(f"{where}.float", f"{key} is an integer field (allowed: int: [lo, hi])")
            return {}
        if base_type not in (int, float):
            allowed = _literal_values(field.annotation)
            hint = f"one of {', '.join(map(repr, allowed))}: use choice" if allowed else \
                f"a {getattr(base_type, '__name__', base_type)}: use choice or fixed"
            self.err(f"{where}.{kind}", f"{key} is not numeric; it takes {hint}")
            return {}
        self._check_values(key, list(p.bounds), f"{where}.{kind}", what="range end ")
        return {}

    def _check_values(self, key: str, values: list, where: str, what: str = "", report: bool = True) -> list:
        """Each value against its own field (merged into the base config); returns them as the config types them."""
        parts = tuple(key.split("."))
        out = []
        for v in values:
            data = _deep_merge(self.base_dict(), _nest({key: v}))
            try:
                cfg = self.config_type.model_validate(data)
            except ValidationError as exc:
                mine = [e for e in exc.errors() if tuple(e["loc"][:len(parts)]) == parts]
                if mine and report:
                    e = mine[0]
                    self.err(where, f"{what}{v!r} is not allowed for {key}: "
                             f"{e['msg'].removeprefix('Value error, ')}{configfile._allowed(e)}")
                out.append(v)  # errors elsewhere are cross-field rules, known only at sampling time
                continue
            typed = _get(cfg, parts)
            out.append(typed if isinstance(typed, _PRIMITIVE) else v)
        return out

    def _check_when_value(self, where: str, ref: str, want, target: ParamSpec):
        wants = want if isinstance(want, list) else [want]
        options = [q for q in (target, target.else_) if q is not None]
        if all(q.kind in ("choice", "fixed") for q in options):
            typed = self._check_values(ref, wants, where, report=False)
            allowed = [v for q in options for v in (q.choice if q.kind == "choice" else [q.fixed])]
            for w in typed:
                if not any(_same(w, a) for a in allowed):
                    self.err(where, f"{w!r} is never a value of {ref}, so the condition never holds "
                             f"(allowed: {', '.join(map(_fmt, allowed))})")
            return typed if isinstance(want, list) else typed[0]
        if [q.kind for q in options] == ["int"] and all(isinstance(w, int) for w in wants):
            lo, hi = target.bounds
            for w in wants:
                if not lo <= w <= hi:
                    self.err(where, f"{w!r} is outside {ref}'s range, so the condition never holds "
                             f"(allowed: {lo}..{hi})")
        return want

    # -- sampler, trials, scheduler, resources

    def _check_sampler(self, spec: SweepSpec) -> dict[str, Any]:
        s, update = spec.sampler, {}
        pkg = _SAMPLER_PACKAGES.get(s.type)
        if pkg and importlib.util.find_spec(pkg) is None:
            usable = [t for t in SAMPLERS if t not in _SAMPLER_PACKAGES or
                      importlib.util.find_spec(_SAMPLER_PACKAGES[t]) is not None]
            self.err("sampler.type", f"{s.type} needs the {pkg!r} package, which is not installed "
                     f"(allowed here: {', '.join(usable)})")
        if spec.multi_objective and s.type not in _MULTI_OBJECTIVE_SAMPLERS:
            self.err("sampler.type", f"{s.type} optimises one objective only, and objectives has "
                     f"{len(spec.objectives)} (allowed: {', '.join(_MULTI_OBJECTIVE_SAMPLERS)})")
        if s.type == "grid":
            ok = True
            for key, p in spec.space.items():
                for part, q in ((key, p), (f"{key}.else", p.else_)):
                    if q is not None and q.kind in ("int", "float"):
                        ok = False
                        article = "an" if q.kind == "int" else "a"
                        self.err(f"space.{part}", f"the grid sampler enumerates values, but this is {article} "
                                 f"{q.kind} range (allowed with grid: choice, fixed, same_as)")
                if p.kind == "choice" and p.when is not None:
                    ok = False
                    self.err(f"space.{key}.when", "a conditional choice would repeat grid points; make it fixed "
                             "under its condition or use another sampler (allowed with grid: when on fixed or "
                             "same_as only)")
            if ok:
                size = grid_size(spec)
                if spec.trials is None:
                    update["trials"] = size
                elif spec.trials != size:
                    self.err("trials", f"{spec.trials} does not match the grid of {size} points "
                             f"(allowed: {size}, or leave trials out)")
        elif spec.trials is None:
            self.err("trials", f"required with the {s.type} sampler (allowed: a positive integer)")
        return update

    def _check_scheduler(self) -> dict[str, Any]:
        sch = self.spec.scheduler
        if sch.type != "asha":
            return {}
        epochs = self._base_value(("train", "epochs"))
        max_epochs = sch.max_epochs
        if "train.epochs" in self.spec.space:
            if max_epochs is None:
                self.err("scheduler.max_epochs", "required when train.epochs is searched (allowed: a positive "
                         "integer, the most epochs any trial trains)")
                return {}
        elif isinstance(epochs, int):
            if max_epochs is None:
                max_epochs = epochs
            elif max_epochs > epochs:
                self.err("scheduler.max_epochs", f"{max_epochs} exceeds train.epochs {epochs}, which no trial "
                         f"trains past (allowed: 1..{epochs})")
        elif max_epochs is None:
            if self.base is not None:
                self.err("scheduler.max_epochs", f"required: {self.spec.trainable}'s config has no train.epochs "
                         "to default to (allowed: a positive integer)")
            return {}
        if sch.grace_epochs > max_epochs:
            self.err("scheduler.grace_epochs", f"{sch.grace_epochs} exceeds scheduler.max_epochs {max_epochs} "
                     f"(allowed: 1..{max_epochs})")
        return {"scheduler": sch.model_copy(update={"max_epochs": max_epochs})}

    def _check_resources(self, space: dict[str, ParamSpec]) -> None:
        workers = self.spec.resources.workers
        if workers == 1 or not isinstance(_field_at(self.config_type, ("train", "batch_size")), _Field):
            return
        batch = self._base_value(("train", "batch_size"))
        if isinstance(batch, int) and "train.batch_size" not in space and batch % workers:
            self.err("base.train.batch_size", f"{batch} is not divisible by resources.workers {workers} "
                     f"(allowed: a multiple of {workers})")
        p = space.get("train.batch_size")
        if p is not None and p.kind == "choice":
            bad = [b for b in p.choice if isinstance(b, int) and b % workers]
            if bad:
                self.err("space.train.batch_size.choice", f"{bad} not divisible by resources.workers {workers} "
                         f"(allowed: multiples of {workers})")

    def _base_value(self, parts: tuple[str, ...]):
        if self.base is None:
            return None
        try:
            return _get(self.base, parts)
        except AttributeError:
            return None


# -------------------------------------------------------------------------------------------- Optuna and configs


def reported_metrics(trainable) -> tuple[str, ...]:
    """Metrics a trainable reports every epoch: its own `metrics` attribute when it has one, else the built-in table."""
    declared = getattr(trainable, "metrics", None)
    if declared:
        return tuple(declared)
    return _EPOCH_METRICS.get(trainable.name, (trainable.primary_metric, "val_loss", "train_loss"))


def _same(a, b) -> bool:
    """Equal, with booleans never equal to numbers (True == 1 in Python)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _holds(when: dict[str, Any], values: dict[str, Any]) -> bool:
    """All conditions hold; a condition on a parameter that is unset in this trial does not."""
    for key, want in when.items():
        if key not in values:
            return False
        wants = want if isinstance(want, list) else [want]
        if not any(_same(values[key], w) for w in wants):
            return False
    return True


def define_by_run(spec: SweepSpec) -> Callable[["optuna.Trial"], dict | None]:
    """The Optuna define-by-run space (Ray OptunaSearch's callable `space`).

    Suggests the searched parameters in file order, named by their dotted key, and returns the constants (fixed,
    same_as, else values) as a dict, or None when there are none. Conditional parameters whose `when` is false and
    that have no `else` are simply not set, so the trainable's (or base's) value applies.
    """
    space = list(spec.space.items())

    def space_fn(trial) -> dict | None:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for key, p in space:
            use = p if p.when is None or _holds(p.when, values) else p.else_
            if use is None:
                continue
            kind = use.kind
            if kind == "choice":
                v = trial.suggest_categorical(key, use.choice)
            elif kind == "int":
                lo, hi = use.int_range
                v = trial.suggest_int(key, lo, hi, step=int(use.step or 1), log=use.log)
            elif kind == "float":
                lo, hi = use.float_range
                v = trial.suggest_float(key, lo, hi, step=use.step, log=use.log)
            elif kind == "fixed":
                v = constants[key] = copy.deepcopy(use.fixed)
            else:  # same_as: follows an earlier parameter, or stays unset with it
                if use.same_as not in values:
                    continue
                v = constants[key] = values[use.same_as]
            values[key] = v
        return constants or None

    return space_fn


def complete_params(spec: SweepSpec, suggested: dict[str, Any]) -> dict[str, Any]:
    """Suggested params (an Optuna trial's `params`) plus the constants they imply: what the Ray trial received."""
    import optuna

    constants = define_by_run(spec)(optuna.trial.FixedTrial(suggested))
    return {**suggested, **(constants or {})}


def trial_config(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The trainable config of one trial: base deep-merged with the params (dotted keys become nested), and
    data.root set from the sweep's dataset. Validate it with the trainable's config_type."""
    config = _deep_merge(copy.deepcopy(spec.base), _nest(params))
    if spec.dataset is not None:
        config = _deep_merge(config, {"data": {"root": spec.dataset}})
    return config


def grid(spec: SweepSpec) -> dict[str, list] | None:
    """GridSampler's search space: the choice params with their values; None when the space has a range."""
    if any(p.kind in ("int", "float") or (p.else_ is not None and p.else_.kind in ("int", "float"))
           for p in spec.space.values()):
        return None
    return {key: list(p.choice) for key, p in spec.space.items() if p.kind == "choice"}


def grid_size(spec: SweepSpec) -> int | None:
    """Points in the grid (product of the choice sizes); None when the space has an int or float range."""
    g = grid(spec)
    return None if g is None else math.prod(len(v) for v in g.values())


def make_sampler(spec: SweepSpec) -> "optuna.samplers.BaseSampler":
    """The seeded Optuna sampler (OptunaSearch ignores its own seed when given a sampler)."""
    import optuna

    # TPE's `group` and QMC are experimental in Optuna 5.0: chosen knowingly in the sweep file, so no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(spec, optuna)


def _sampler(spec: SweepSpec, optuna) -> "optuna.samplers.BaseSampler":
    s = spec.sampler
    seed = s.seed
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=s.group, constant_liar=True,
                                          **startup)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "grid":
        space = grid(spec)
        if space is None:
            raise ValueError(f"{spec.source}: the grid sampler needs a space of choice and fixed params only")
        return optuna.samplers.GridSampler(space, seed=seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if s.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s.type == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(f"unknown sampler type {s.type!r} (allowed: {', '.join(SAMPLERS)})")


def describe(spec: SweepSpec) -> str:
    """A one-screen summary of a loaded sweep: what runs, how many, how it is searched and stopped."""
    lines = [f"sweep      {spec.name}" + (f"  ({spec.source})" if spec.source else "")]
    data = spec.dataset or "(trainable default)"
    if spec.dataset_build:
        data += "  (built when missing: " + ", ".join(f"{k}={_fmt(v)}" for k, v in spec.dataset_build.items()) + ")"
    lines += _wrap(f"trainable  {spec.trainable}    dataset {data}")
    objs = ", ".join(f"{m} ({mode})" for m, mode in zip(spec.metrics, spec.modes))
    lines.append(f"{'objectives' if spec.multi_objective else 'objective '} {objs}")
    r = spec.resources
    conc = "auto" if spec.concurrency == "auto" else f"at most {spec.concurrency}"
    lines.append(f"trials     {spec.trials}, concurrency {conc}; each {r.workers} worker{'s' * (r.workers > 1)} x "
                 f"({_fmt(r.cpus_per_worker)} CPU, {_fmt(r.gpus_per_worker)} GPU)")
    s = spec.sampler
    extra = {"tpe": "multivariate, constant liar" + (", grouped" if s.group else ""),
             "grid": f"{grid_size(spec)} points"}.get(s.type, "")
    lines.append(f"sampler    {s.type} (seed {s.seed}" + (f", {extra}" if extra else "") + ")")
    sch = spec.scheduler
    if sch.type == "asha":
        rungs = ", ".join(map(str, sch.rungs()))
        lines.append(f"scheduler  ASHA on {spec.metric}: grace {sch.grace_epochs}, max {sch.max_epochs} epochs, "
                     f"reduction {_fmt(sch.reduction_factor)} (rungs at epochs {rungs or '-'})")
    else:
        lines.append("scheduler  none (every trial runs all its epochs)")
    if spec.experiment:
        lines.append(f"mlflow     experiment {spec.experiment}")
    flat = _flatten(spec.base)
    if flat:
        lines += _wrap("base       " + "  ".join(f"{k}={_fmt(v)}" for k, v in flat.items()))
    n = len(spec.space)
    size = grid_size(spec)
    lines.append(f"space      {n} param{'s' * (n != 1)}" + (f", {size} discrete configurations" if size else ""))
    width = max((len(k) for k in spec.space), default=0)
    lines += [f"  {key:<{width}}  {p.describe()}" for key, p in spec.space.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- helpers


class _Field:
    """A leaf field of a config type, reached by a dotted key path."""

    def __init__(self, annotation):
        self.annotation = annotation


def _unwrap(tp):
    """Annotated[X, ...] -> X; Optional[X] -> X (the one non-None member)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _field_at(config_type: type[BaseModel], parts: tuple[str, ...]) -> _Field | str:
    """The leaf field at a dotted key path, or a message naming the bad key and the fields allowed at that level."""
    model, walked = config_type, []
    for i, part in enumerate(parts):
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if part not in fields:
            level = ".".join(walked) or config_type.__name__
            prefix = ".".join(walked) + "." if walked else ""
            return (f"{level} has no field {part!r} (allowed: "
                    f"{', '.join(prefix + n for n in fields)})")
        tp = _unwrap(fields[part].annotation)
        walked.append(part)
        if i == len(parts) - 1:
            if _is_model(tp):
                return (f"{'.'.join(walked)} is a section, not a value; name one of its fields (allowed: "
                        f"{', '.join('.'.join(walked) + '.' + n for n in _field_names(tp))})")
            return _Field(fields[part].annotation)
        if not _is_model(tp):
            return f"{'.'.join(walked)} is a value, not a section, so it has no field {parts[i + 1]!r}"
        model = tp
    return f"empty key path (allowed: {', '.join(_field_names(config_type))})"


def _types_at(root, loc: tuple) -> list[str] | None:
    """Field names of the model at `loc` inside `root` (through dict values and list items), for unknown-key errors."""
    tp = root
    for part in loc:
        tp = _unwrap(tp)
        if _is_model(tp):
            fields = {f.alias or name: f for name, f in tp.model_fields.items()}
            if part not in fields:
                return None
            tp = fields[part].annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return _field_names(tp) if _is_model(tp) else None


def _loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("function-after", "function-before") or (isinstance(p, str) and p.startswith("function-")):
            continue
        else:
            out += ("." if out else "") + str(p)
    return out


def _validation_lines(exc: ValidationError, source: str, prefix: str, root) -> list[str]:
    lines = []
    for e in exc.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = ".".join(x for x in (prefix, _loc(loc)) if x) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _types_at(root, loc[:-1])
            msg = "unknown key (misspelt?)" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        else:
            msg += configfile._allowed(e)
        lines.append(f"{source}: {where}: {msg}")
    return lines


def _schema_errors(exc: ValidationError, source: str) -> list[str]:
    return _validation_lines(exc, source, "", SweepSpec)


def _not_earlier(ref: str, key: str, seen: list[str], space: dict[str, ParamSpec]) -> str:
    earlier = ", ".join(seen) or "none"
    if ref == key:
        return f"{key} cannot refer to itself (allowed: params defined above it: {earlier})"
    if ref in space:
        return f"{ref} is defined after {key}; move it above (allowed: params defined above it: {earlier})"
    return f"{ref} is not a param of this space (allowed: params defined above it: {earlier})"


def _scalar_type(annotation):
    tp = _unwrap(annotation)
    if typing.get_origin(tp) is Literal:
        return Literal
    if tp is bool:
        return bool
    return tp


def _literal_values(annotation) -> tuple:
    tp = _unwrap(annotation)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def _get(obj, parts: tuple[str, ...]):
    for p in parts:
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    return obj


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"model.sharing": "SP"} -> {"model": {"sharing": "SP"}}; nested dict values are kept (and merged)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *head, leaf = key.split(".")
        node = nested
        for part in head:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _deep_merge(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return nested


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _wrap(line: str, width: int = 110) -> list[str]:
    return textwrap.wrap(line, width, subsequent_indent=" " * 11, break_on_hyphens=False) or [line]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
