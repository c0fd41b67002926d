"""What a sweep file may say: the pydantic models of its sections, and the config of one trial built from them.

These models check what a sweep file can get wrong on its own (keys, types, one kind per parameter, bounds in order).
What needs the trainable (key paths into its config, metric names, values per field) is `sweep_checks`' job, and
`sweep_file.load_sweep` runs both (format: search_spaces/README.md).
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SamplerType = Literal["tpe", "random", "grid", "gp", "cmaes", "nsga2", "qmc"]
SAMPLERS: tuple[str, ...] = typing.get_args(SamplerType)
PARAM_KINDS = ("choice", "int", "float", "fixed", "same_as")
CATEGORICAL = (str, int, float, bool, type(None))  # the values Optuna's suggest_categorical takes

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


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
        return self._kinds_given()[0]

    @property
    def bounds(self) -> tuple[float, float] | None:
        return self.int_range or self.float_range

    def _kinds_given(self) -> list[str]:
        return [k for k, f in (("choice", "choice"), ("int", "int_range"), ("float", "float_range"),
                               ("fixed", "fixed"), ("same_as", "same_as")) if f in self.model_fields_set]

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        given = self._kinds_given()
        if len(given) != 1:
            what = f"got {', '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one of {', '.join(PARAM_KINDS)} ({what})")
        kind = given[0]
        if kind not in ("int", "float") and ({"step", "log"} & self.model_fields_set):
            raise ValueError(f"step and log apply to int and float ranges only, not to {kind}")
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
            bad = [v for v in self.choice if not isinstance(v, CATEGORICAL)]
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
                if not values or not all(isinstance(v, CATEGORICAL) for v in values):
                    raise ValueError(f"when.{key}: give a value or a list of values, got {want!r}")
        if self.else_ is not None:
            if self.when is None:
                raise ValueError("else applies only together with when")
            if self.else_.kind not in ("fixed", "same_as") or self.else_.when is not None:
                raise ValueError("else must be {fixed: value} or {same_as: key}, without a when of its own")
        return self


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
    type: SamplerType = "tpe"
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
    dataset: str | None = Field(None, description="dataset folder (manifest.json) relative to BINSWEEP_HOME, or a "
                                "URI such as s3://bucket/prefix that every node of a cluster reads")
    dataset_build: dict[str, Any] | None = Field(None, description="options to build the dataset when missing (at a "
                                                 "URI: built here, then published there)")
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    objectives: list[Objective] | None = None
    trials: int | None = Field(None, ge=1)
    scheduler: SchedulerSpec = SchedulerSpec()
    concurrency: Union[Literal["auto"], int] = "auto"
    resources: ResourcesSpec = ResourcesSpec()
    max_failures: int = Field(1, ge=0, description="times a trial is retried from its last checkpoint when it fails "
                                                   "or its process or node dies")
    evaluate_stopped: bool = Field(False, description="also score trials that ASHA stopped on the test split")
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


# ------------------------------------------------------------------------------------------- trial configs


def trial_config(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The trainable config of one trial: base deep-merged with the params (dotted keys become nested), and
    data.root set from the sweep's dataset. Validate it with the trainable's config_type."""
    config = deep_merge(copy.deepcopy(spec.base), nest(params))
    if spec.dataset is not None:
        config = deep_merge(config, {"data": {"root": spec.dataset}})
    return config


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"sharing": "SP"}} -> {"model.sharing": "SP"}: the dotted keys of a sweep file (an empty mapping
    stays one value); the inverse of `nest`."""
    out: dict[str, Any] = {}
    for k, v in nested.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
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
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return nested


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a updated by b, key by key through nested dicts (b's values are copied)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
