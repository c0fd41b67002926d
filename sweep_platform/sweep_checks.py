"""The checks of a sweep file that need its trainable, run by `sweep_file.load_sweep` after the schema.

Every space key path against the trainable's config type, every choice / fixed / range bound against its own field
(merged into the base config), the metrics against what the trainable reports, the order of `when` and `same_as`
references, the grid, the scheduler against train.epochs, the batch size against the workers. Every problem is
collected, each line naming the file, the key path and what is allowed. What cannot be known before sampling
(cross-field rules of a config type) is checked by the trainable's config type on each trial's config.
"""

from __future__ import annotations

import importlib.util
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from sweep_platform import names, validation_errors
from sweep_platform.configfile import ConfigError
from sweep_platform.optuna_space import MULTI_OBJECTIVE_SAMPLERS, SAMPLER_PACKAGES, format_value, grid_size, same_value
from sweep_platform.sweep_spec import CATEGORICAL, SAMPLERS, ParamSpec, SweepSpec, deep_merge, nest, trial_config
from sweep_platform.validation_errors import error_message, field_names, is_model, unwrap
from trainables.registry import TrainableSpec

# Metrics measured once per trial that an objective after the first may name: only those in every Tune result,
# where Optuna reads objectives. The trial adds params_m to each report; gpu_hours, wall_s and startup_s are
# measured by the driver and logged to MLflow only, so Optuna never sees them.
_OBJECTIVE_TRIAL_METRICS = tuple(sorted(names.TRIAL_METRICS - {"gpu_hours", "wall_s", "startup_s"}))


def check(spec: SweepSpec, trainable: TrainableSpec, source: str) -> SweepSpec:
    """The spec with metric, mode, trials and ASHA's max_epochs resolved and values typed by the config; a
    ConfigError lists every problem at once."""
    checker = _Checker(spec, trainable, source)
    resolved = checker.run()
    if checker.errors:
        raise ConfigError("\n".join(checker.errors))
    return resolved


class _Checker:
    """The checks that need the trainable: collects every error, then returns the spec with defaults resolved."""

    def __init__(self, spec: SweepSpec, trainable: TrainableSpec, source: str):
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
                self.err("dataset_build", "needs dataset: the folder or URI to build into, e.g. dataset: "
                         "data/loc_smoke or dataset: s3://bucket/loc_smoke")
        if spec.dataset_build is not None:
            self._check_dataset_build()
        if spec.dataset is not None and isinstance(base.get("data"), dict) and "root" in base["data"] \
                and base["data"]["root"] != spec.dataset:
            self.err("base.data.root", f"{base['data']['root']!r} conflicts with dataset {spec.dataset!r}; "
                     "set the dataset with the top-level dataset key only")
        try:
            return self.config_type.model_validate(self.base_dict())
        except ValidationError as exc:
            self.errors.append(validation_errors.describe(exc, self.source, "base", root=self.config_type))
            return None

    def _check_dataset_build(self) -> None:
        """Against the trainable's own dataset builder, now rather than after the sweep has started."""
        builder = self.trainable.dataset_builder
        if builder is None:
            self.err("dataset_build", f"trainable {self.spec.trainable!r} has no dataset builder; build the dataset "
                     "yourself and remove dataset_build")
            return
        try:
            builder.config_type.model_validate(self.spec.dataset_build)
        except ValidationError as exc:
            self.errors.append(validation_errors.describe(exc, self.source, "dataset_build",
                                                          root=builder.config_type))

    def base_dict(self) -> dict[str, Any]:
        return trial_config(self.spec, {})

    # -- metrics

    def _check_metrics(self) -> dict[str, Any]:
        spec, tr = self.spec, self.trainable
        epoch = tr.reported_metrics
        update: dict[str, Any] = {}
        if spec.metric is not None and spec.metric not in epoch:
            self.err("metric", f"{spec.trainable} does not report {spec.metric!r} every epoch "
                     f"(allowed: {', '.join(epoch)})")
        if spec.objectives:
            first = spec.objectives[0]
            for i, o in enumerate(spec.objectives):
                allowed = epoch if i == 0 else epoch + _OBJECTIVE_TRIAL_METRICS
                if o.metric not in allowed:
                    why = " (the first objective is the one ASHA stops on, so it must be reported every epoch)" \
                        if i == 0 and o.metric in _OBJECTIVE_TRIAL_METRICS else ""
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
            data = deep_merge(self.base_dict(), nest({key: v}))
            try:
                cfg = self.config_type.model_validate(data)
            except ValidationError as exc:
                mine = [e for e in exc.errors() if tuple(e["loc"][:len(parts)]) == parts]
                if mine and report:
                    e = mine[0]
                    self.err(where, f"{what}{v!r} is not allowed for {key}: "
                             f"{error_message(e)}")
                out.append(v)  # errors elsewhere are cross-field rules, known only at sampling time
                continue
            typed = _get(cfg, parts)
            out.append(typed if isinstance(typed, CATEGORICAL) else v)
        return out

    def _check_when_value(self, where: str, ref: str, want, target: ParamSpec):
        wants = want if isinstance(want, list) else [want]
        options = [q for q in (target, target.else_) if q is not None]
        if all(q.kind in ("choice", "fixed") for q in options):
            typed = self._check_values(ref, wants, where, report=False)
            allowed = [v for q in options for v in (q.choice if q.kind == "choice" else [q.fixed])]
            for w in typed:
                if not any(same_value(w, a) for a in allowed):
                    self.err(where, f"{w!r} is never a value of {ref}, so the condition never holds "
                             f"(allowed: {', '.join(map(format_value, allowed))})")
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
        pkg = SAMPLER_PACKAGES.get(s.type)
        if pkg and importlib.util.find_spec(pkg) is None:
            usable = [t for t in SAMPLERS if t not in SAMPLER_PACKAGES or
                      importlib.util.find_spec(SAMPLER_PACKAGES[t]) is not None]
            self.err("sampler.type", f"{s.type} needs the {pkg!r} package, which is not installed "
                     f"(allowed here: {', '.join(usable)})")
        if spec.multi_objective and s.type not in MULTI_OBJECTIVE_SAMPLERS:
            self.err("sampler.type", f"{s.type} optimises one objective only, and objectives has "
                     f"{len(spec.objectives)} (allowed: {', '.join(MULTI_OBJECTIVE_SAMPLERS)})")
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


# ----------------------------------------------------------------------------------- the trainable's config type


class _Field:
    """A leaf field of a config type, reached by a dotted key path."""

    def __init__(self, annotation):
        self.annotation = annotation


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
        tp = unwrap(fields[part].annotation)
        walked.append(part)
        if i == len(parts) - 1:
            if is_model(tp):
                return (f"{'.'.join(walked)} is a section, not a value; name one of its fields (allowed: "
                        f"{', '.join('.'.join(walked) + '.' + n for n in field_names(tp))})")
            return _Field(fields[part].annotation)
        if not is_model(tp):
            return f"{'.'.join(walked)} is a value, not a section, so it has no field {parts[i + 1]!r}"
        model = tp
    return f"empty key path (allowed: {', '.join(field_names(config_type))})"


def _not_earlier(ref: str, key: str, seen: list[str], space: dict[str, ParamSpec]) -> str:
    earlier = ", ".join(seen) or "none"
    if ref == key:
        return f"{key} cannot refer to itself (allowed: params defined above it: {earlier})"
    if ref in space:
        return f"{ref} is defined after {key}; move it above (allowed: params defined above it: {earlier})"
    return f"{ref} is not a param of this space (allowed: params defined above it: {earlier})"


def _scalar_type(annotation):
    tp = unwrap(annotation)
    if typing.get_origin(tp) is Literal:
        return Literal
    if tp is bool:
        return bool
    return tp


def _literal_values(annotation) -> tuple:
    tp = unwrap(annotation)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def _get(obj, parts: tuple[str, ...]):
    for p in parts:
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    return obj

