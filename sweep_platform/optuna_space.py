"""A validated sweep as Optuna runs it: the define-by-run space, the grid, the seeded sampler, and the one-screen
text that describes it all (space.txt of a sweep's parent run).

Downstream (the sweep driver):
    spec = load_sweep(path)
    OptunaSearch(space=define_by_run(spec), sampler=make_sampler(spec), metric=..., mode=...)
    config = trial_config(spec, tune_config)      # the flat dotted params Ray hands the trial -> nested config
"""

from __future__ import annotations

import copy
import math
import textwrap
import typing
import warnings
from typing import Any, Callable

from sweep_platform.sweep_spec import SAMPLERS, ParamSpec, SweepSpec, flatten

if typing.TYPE_CHECKING:  # optuna is imported lazily: loading a sweep file must not pay for it
    import optuna

# Samplers that handle several objectives (CMA-ES is single-objective only).
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "grid", "gp", "nsga2", "qmc")
# Optional packages a sampler needs at sampling time (the sweep checks look for them at load time).
SAMPLER_PACKAGES = {"cmaes": "cmaes", "gp": "scipy", "qmc": "scipy"}


def same_value(a, b) -> bool:
    """Equal, with booleans never equal to numbers (True == 1 in Python)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _holds(when: dict[str, Any], values: dict[str, Any]) -> bool:
    """All conditions hold; a condition on a parameter that is unset in this trial does not."""
    for key, want in when.items():
        if key not in values:
            return False
        wants = want if isinstance(want, list) else [want]
        if not any(same_value(values[key], w) for w in wants):
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


# ------------------------------------------------------------------------------------------------- space.txt


def describe(spec: SweepSpec) -> str:
    """A one-screen summary of a loaded sweep: what runs, how many, how it is searched and stopped."""
    lines = [f"sweep      {spec.name}" + (f"  ({spec.source})" if spec.source else "")]
    data = spec.dataset or "(trainable default)"
    if spec.dataset_build:
        data += ("  (built when missing: " + ", ".join(f"{k}={format_value(v)}" for k, v in spec.dataset_build.items())
                 + ")")
    lines += _wrap(f"trainable  {spec.trainable}    dataset {data}")
    objs = ", ".join(f"{m} ({mode})" for m, mode in zip(spec.metrics, spec.modes))
    lines.append(f"{'objectives' if spec.multi_objective else 'objective '} {objs}")
    r = spec.resources
    conc = "auto" if spec.concurrency == "auto" else f"at most {spec.concurrency}"
    lines.append(f"trials     {spec.trials}, concurrency {conc}; each {r.workers} worker{'s' * (r.workers > 1)} x "
                 f"({format_value(r.cpus_per_worker)} CPU, {format_value(r.gpus_per_worker)} GPU)")
    s = spec.sampler
    extra = {"tpe": "multivariate, constant liar" + (", grouped" if s.group else ""),
             "grid": f"{grid_size(spec)} points"}.get(s.type, "")
    lines.append(f"sampler    {s.type} (seed {s.seed}" + (f", {extra}" if extra else "") + ")")
    sch = spec.scheduler
    if sch.type == "asha":
        rungs = ", ".join(map(str, sch.rungs()))
        lines.append(f"scheduler  ASHA on {spec.metric}: grace {sch.grace_epochs}, max {sch.max_epochs} epochs, "
                     f"reduction {format_value(sch.reduction_factor)} (rungs at epochs {rungs or '-'})")
    else:
        lines.append("scheduler  none (every trial runs all its epochs)")
    if spec.experiment:
        lines.append(f"mlflow     experiment {spec.experiment}")
    flat = flatten(spec.base)
    if flat:
        lines += _wrap("base       " + "  ".join(f"{k}={format_value(v)}" for k, v in flat.items()))
    n = len(spec.space)
    size = grid_size(spec)
    lines.append(f"space      {n} param{'s' * (n != 1)}" + (f", {size} discrete configurations" if size else ""))
    width = max((len(k) for k in spec.space), default=0)
    lines += [f"  {key:<{width}}  {describe_param(p)}" for key, p in spec.space.items()]
    return "\n".join(lines)


def describe_param(p: ParamSpec) -> str:
    """One parameter in a line: `choice  SP | NSP`, `float   [1e-05, 0.001] log  when loss.name = hybrid`."""
    kind = p.kind
    if kind == "choice":
        text = "choice  " + " | ".join(format_value(v) for v in p.choice)
    elif kind in ("int", "float"):
        lo, hi = p.bounds
        text = f"{kind:<7} [{format_value(lo)}, {format_value(hi)}]" + (" log" if p.log else "") + (
            f" step {format_value(p.step)}" if p.step is not None else "")
    elif kind == "fixed":
        text = f"fixed   {format_value(p.fixed)}"
    else:
        text = f"same as {p.same_as}"
    if p.when is not None:
        text += "  when " + ", ".join(f"{k} in {want}" if isinstance(want, list) else f"{k} = {format_value(want)}"
                                      for k, want in p.when.items())
        if p.else_ is not None:
            text += ", else " + (f"{format_value(p.else_.fixed)}" if p.else_.kind == "fixed"
                                 else f"same as {p.else_.same_as}")
    return text


def format_value(v) -> str:
    """A setting as a sweep file would write it: floats to 6 significant digits (1e-05, 0.0003), lists in brackets,
    None as None. Metric tables round to 4 digits and show None as blank; a setting must read as it was given."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


def _wrap(line: str, width: int = 110) -> list[str]:
    return textwrap.wrap(line, width, subsequent_indent=" " * 11, break_on_hyphens=False) or [line]
