"""The promotion gate (`binsweep promote`): register a sweep's best model and give it an alias only if it is better.

Promotion is a gate, not a copy:
1. the sweep's best finished trial (state completed or stopped, with test metrics, best by the sweep's own metric:
   the objective in its sweep.yaml, i.e. selection on validation, never on test) is the challenger;
2. the challenger and the current alias holder (default alias `champion`) are loaded from MLflow and evaluated on the
   same held-out test split (the dataset named by the challenger run's `data.root`); the split must be the one both
   were scored on: their dataset fingerprints must agree (and match the dataset on disk);
3. the per-sample errors (`EvalResult.per_sample_error`) are paired: a one-sided Wilcoxon signed-rank test in the
   challenger's favour, in the direction of the trainable's mode (challenger errors smaller for a `min` trainable,
   larger for a `max` one), and two-sided for the record;
4. the challenger takes the alias only when that test is significant, p < alpha (`comparison.gate`). Otherwise the
   promotion is refused (`PromotionRefused`, CLI exit 2) with both means, the p-value and the number of paired
   samples, and nothing in the registry changes: no version, no tag, no alias. Identical errors (all differences
   zero) never pass; a test split too small for the test to reach alpha at all (n below `min_pairs(alpha)`) is
   refused as such. The first promotion (no holder yet) needs no test.

`force` overrides every refusal about the comparison (a dataset that differs, a holder that cannot be evaluated, a
test that is not significant or has too few samples) and is recorded on the version: tags `binsweep.forced=true` and
`binsweep.forced_reason`, next to the paired test's p-value when there was one. It never overrides a challenger that
does not load or score.

Each registered version reads like a model card: its description names the trainable, the sweep's searched
parameters and their values, the test metrics with the sample count, the dataset and its fingerprint, the sweep, trial
and run, and the gate's outcome (the p-value against the holder, "first champion" or "forced"); its tags record the
same for scripts (sweep, trial, run, metrics, dataset fingerprint, `binsweep.gate`, `binsweep.paired_test`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sweep_platform import leaderboard as lb
from sweep_platform import model_store, names, tracking
from sweep_platform.comparison import DEFAULT_ALPHA, GateResult, comparison_line, gate
from sweep_platform.errors import BinsweepError
from sweep_platform.model_store import describe_error
from trainables.registry import get_trainable

CHALLENGER_ALIAS = "challenger"  # set by older binsweep on a version that was kept out; dropped when it is promoted
_MAX_TAG = 1000  # characters of a free-text tag value (forced_reason)


class PromotionRefused(BinsweepError):
    """The gate refused: nothing in the registry was changed. The message says why and what to do."""

    def __init__(self, reason: str):
        super().__init__(f"promotion refused: {reason}")
        self.reason = reason


class PromotionOptionError(BinsweepError, ValueError):
    """A promote option out of range (e.g. --alpha 0)."""


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------------ challenger


@dataclass
class Candidate:
    sweep: str
    trial: str
    run_id: str
    trainable: str
    metric: str
    value: float
    model_uri: str
    params: dict[str, str]
    test_metrics: dict[str, float]
    fingerprint: str | None
    mode: str = "min"  # the sweep's selection mode (metric)
    searched: dict[str, str] = field(default_factory=dict)  # the sweep's searched parameters -> this trial's values
    searched_from: str = "searched by the sweep"  # or, for a sweep without a recorded space, the key parameters


def _searched_params(sweep_file: dict, row: dict, params: dict[str, str]) -> tuple[dict[str, str], str]:
    """The sweep's searched parameters (choice, int and float keys of its space) with this trial's values, and where
    the keys came from: for a sweep without a readable space, the leaderboard's key parameters (the trainable's,
    then those that vary between trials)."""
    space = sweep_file.get("space")
    keys = [k for k, p in space.items() if isinstance(p, dict) and {"choice", "int", "float"} & set(p)] \
        if isinstance(space, dict) else []
    source = "searched by the sweep"
    if not keys:
        keys, source = list(row.get("params") or {}), "key parameters; the sweep recorded no search space"
    return {k: str(params[k]) for k in keys if params.get(k) is not None}, source


def best_candidate(sweep: str | None = None, trainable: str | None = None) -> Candidate:
    """The sweep's best finished trial with test metrics and a logged model, by the sweep's own metric."""
    ref = lb.find_sweep(sweep, trainable)
    sweep_file = ref.sweep_file()  # read once: the objective and the searched parameters both come from it
    metric, mode = ref.objective(sweep_file)
    rows = lb.leaderboard(ref, metric=metric, mode=mode)
    test_metric = lb.default_metric(ref.trainable)
    usable = [r for r in rows if r["state"] in names.SUCCEEDED_STATES and r["value"] is not None
              and test_metric in r["metrics"]]
    if not usable:
        states = ", ".join(f"{r['trial']}: {r['state']}" + ("" if test_metric in r["metrics"] else
                                                            f" (no {test_metric})") for r in rows) or "no trials"
        raise PromotionRefused(f"sweep {ref.name!r} has no finished trial (completed or stopped) with test metrics "
                               f"to promote ({states})")
    best = usable[0]
    run = tracking.client().get_run(best["run_id"])
    uri = model_store.logged_model_uri(run)
    if uri is None:
        raise PromotionRefused(f"trial {best['trial']} of sweep {ref.name!r} (run {best['run_id']}) has no logged "
                               f"model in MLflow; nothing to register")
    params = dict(run.data.params)
    searched, searched_from = _searched_params(sweep_file, best, params)
    return Candidate(sweep=ref.name, trial=str(best["trial"]), run_id=best["run_id"], trainable=ref.trainable,
                     metric=metric, value=float(best["value"]), model_uri=uri, params=params,
                     test_metrics=dict(best["metrics"]), fingerprint=run.data.tags.get(names.TAG_DATASET),
                     mode=mode, searched=searched, searched_from=searched_from)


# ------------------------------------------------------------------------------------------------ promotion


@dataclass
class Promotion:
    promoted: bool
    message: str
    model_name: str
    alias: str
    version: str | None = None
    previous_version: str | None = None
    candidate: Candidate | None = None
    comparison: dict[str, Any] | None = None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    holder_metrics: dict[str, float] = field(default_factory=dict)
    gate: GateResult | None = None
    forced: bool = False
    overridden: list[str] = field(default_factory=list)  # the refusals --force overrode
    description: str = ""  # the version's model card


def _alias_holder(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _version_fingerprint(c, mv) -> str | None:
    fp = (mv.tags or {}).get(names.TAG_DATASET)
    if fp:
        return fp
    if mv.run_id:
        try:
            return c.get_run(mv.run_id).data.tags.get(names.TAG_DATASET)
        except Exception:  # noqa: BLE001 - the source run was deleted
            return None
    return None


def _known(fp: str | None) -> bool:
    return bool(fp) and fp != "unknown"


def _evaluate(spec, model, config, who: str) -> Any:
    try:
        result = spec.evaluate(model, config, "test", out_dir=None, device=_device())
    except Exception as exc:  # noqa: BLE001 - any failure to score is a refusal, named
        raise PromotionRefused(f"{who} could not be evaluated on the test split: {describe_error(exc)}") from exc
    errors = None if result.per_sample_error is None else np.asarray(result.per_sample_error, dtype=np.float64)
    if errors is None or errors.size == 0 or not np.isfinite(errors).all():
        raise PromotionRefused(f"{who} gave no finite per-sample test errors; it cannot be compared")
    return result, errors.reshape(-1)


def _existing_version(c, name: str, source: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.source == source]
    return max(same, key=lambda v: int(v.version)) if same else None


def _top_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The split-wide test metrics (test_ad_deg), not the per-group ones (test_ad_deg.anechoic)."""
    return {k: float(v) for k, v in metrics.items() if "." not in k and tracking.is_number(v)}


def gate_summary(gate_tag: str, result: GateResult | None, holder_label: str | None, overridden: list[str],
                 alias_ref: str) -> str:
    """The gate's outcome in one line, as the model card and the promote message give it."""
    test = "" if result is None else result.figures(holder_label or "holder")
    if gate_tag == "first champion":
        return f"first champion (there was no {alias_ref} before; no test needed)"
    if gate_tag == "passed":
        return f"passed: {test}"
    text = "forced (--force): " + "; ".join(overridden)
    return text + (f"; the paired test passed: {test}" if result is not None and result.passed else "")


def model_card(cand: Candidate, *, name: str, version: str, alias_ref: str, measured: dict[str, float], n: int,
               gate_line: str, data_root: str | None) -> str:
    """A registered version's description: what it is, how it was chosen and scored, and how it got its alias."""
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(_top_metrics(measured).items())) or "none"
    # as the leaderboard shows them (0.7225, 1.93e-3), not MLflow's 17-digit strings
    searched = ", ".join(f"{k}={lb.format_param(k, v)}" for k, v in cand.searched.items()) or "none recorded"
    return "\n".join([
        f"{name} version {version}: {cand.trainable} from sweep {cand.sweep}, trial {cand.trial}",
        "",
        f"- trainable: {cand.trainable}",
        f"- parameters ({cand.searched_from}): {searched}",
        f"- test metrics: {metrics} (n = {n} test samples, scored at promotion)",
        f"- dataset: {data_root or 'unknown'} (fingerprint {cand.fingerprint or 'unknown'})",
        f"- sweep: {cand.sweep}, trial {cand.trial}, run {cand.run_id}; selected by {cand.metric} "
        f"{cand.value:.4g} ({cand.mode})",
        f"- gate for {alias_ref}: {gate_line}",
    ])


def promote(sweep: str | None = None, *, model_name: str | None = None, alias: str = "champion", force: bool = False,
            alpha: float = DEFAULT_ALPHA, trainable: str | None = None,
            say: Callable[[str], None] = lambda s: None) -> Promotion:
    """Register the sweep's best model and move `alias` to it when it significantly beats the holder (see the
    module docstring).

    Raises PromotionRefused (registry untouched) when the gate refuses or cannot be run; returns a Promotion
    otherwise (promoted, or nothing to do because the alias already holds this model).
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise PromotionOptionError(f"--alpha must be between 0 and 1 (exclusive), got {alpha}")
    c = tracking.client()
    cand = best_candidate(sweep, trainable)
    name = model_name or cand.trainable
    spec = get_trainable(cand.trainable)
    alias_ref = f"{name}@{alias}"
    overridden: list[str] = []  # refusals --force overrode

    def refuse(reason: str, hint: str = "pass --force to promote anyway", then: str = "") -> None:
        """Refuse (registry untouched), or with --force record `reason` as overridden and go on."""
        if not force:
            raise PromotionRefused(f"{reason}{then}; {hint}")
        overridden.append(reason)

    say(f"challenger: sweep {cand.sweep}, trial {cand.trial} (run {cand.run_id[:8]}), {cand.metric} "
        f"{cand.value:.4g}, model {cand.model_uri}")

    # The same test split for both, or no comparison at all.
    root = model_store.data_root(cand.params)
    on_disk = model_store.manifest_fingerprint(root)
    if _known(cand.fingerprint) and on_disk and on_disk != cand.fingerprint:
        refuse(f"the dataset at {root} (fingerprint {on_disk[:12]}) is not the one trial {cand.trial} was tested on "
               f"({cand.fingerprint[:12]})", "rebuild it or pass --force")
    holder = _alias_holder(c, name, alias)
    if holder is not None and holder.source == cand.model_uri:
        held = str(holder.version)
        return Promotion(False, f"{alias_ref} is already version {held}, the model of trial {cand.trial} of sweep "
                         f"{cand.sweep}; nothing to do", name, alias, held, held, cand)
    holder_label = None if holder is None else f"{alias_ref} (version {holder.version})"
    if holder is not None:
        holder_fp = _version_fingerprint(c, holder)
        if not (_known(holder_fp) and _known(cand.fingerprint) and holder_fp == cand.fingerprint):
            refuse(f"{holder_label} was tested on dataset {str(holder_fp)[:12]}, the challenger on "
                   f"{str(cand.fingerprint)[:12]}: different test splits cannot be compared")

    # Challenger: must load and score (--force does not override this).
    try:
        challenger, config = model_store.load_model(cand.model_uri, cand.trainable)
    except model_store.ModelLoadError as exc:
        raise PromotionRefused(f"the model of trial {cand.trial} ({cand.model_uri}) failed to load: "
                               f"{exc.reason}") from exc
    ch_result, ch_errors = _evaluate(spec, challenger, config, f"the model of trial {cand.trial}")
    say("challenger on the test split: " + ", ".join(f"{k} {v:.4g}" for k, v in
                                                        _top_metrics(ch_result.metrics).items())
        + f" (n = {len(ch_errors)})")

    decision: GateResult | None = None
    holder_metrics: dict[str, float] = {}
    if holder is not None:
        holder_broken = None
        try:
            # scored with the challenger's config: the same test split for both
            held, _ = model_store.load_model(f"models:/{name}/{holder.version}", cand.trainable)
            h_result, h_errors = _evaluate(spec, held, config, holder_label)
            holder_metrics = dict(h_result.metrics)
            if len(h_errors) != len(ch_errors):
                raise PromotionRefused(f"the two models were scored on {len(ch_errors)} and {len(h_errors)} test "
                                       f"samples; the errors cannot be paired")
            decision = gate(ch_errors, h_errors, alpha, spec.mode)
        except PromotionRefused as exc:
            holder_broken = exc.reason
        except Exception as exc:  # noqa: BLE001 - the holder's artifact, run or trainable is gone or broken
            reason = exc.reason if isinstance(exc, model_store.ModelLoadError) else describe_error(exc)
            holder_broken = f"{holder_label} failed to load: {reason}"
        if holder_broken:
            refuse(f"{holder_broken}; the challenger cannot be compared with it", "pass --force to replace it")
        if decision is not None:
            say(comparison_line(decision.comparison))
            if not decision.passed:
                refuse(decision.why_not(f"version {holder.version}"), "pass --force to promote it anyway",
                       then=f". {alias_ref} stays on version {holder.version} and nothing was registered")

    # Every check passed (or was forced): register (or reuse the version already made from this model), describe it,
    # and only then move the alias.
    import mlflow

    forced = bool(overridden)
    gate_tag = "forced" if forced else "first champion" if holder is None else "passed"
    tags = {names.TAG_SWEEP: cand.sweep, names.TAG_TRIAL: cand.trial, names.TAG_RUN: cand.run_id,
            names.TAG_TRAINABLE: cand.trainable, names.TAG_DATASET: cand.fingerprint or "unknown",
            names.TAG_SELECTION_METRIC: f"{cand.metric}={cand.value:.6g}", names.TAG_GATE: gate_tag}
    tags.update({k: f"{v:.6g}" for k, v in cand.test_metrics.items()})
    if decision is not None:
        cmp = decision.comparison
        tags[names.TAG_COMPARED_WITH] = f"version {holder.version}"
        tags[names.TAG_PAIRED_TEST] = (f"wilcoxon p_one_sided={cmp['p_one_sided']:.4g} "
                                       f"mean_difference={cmp['mean_difference']:.4g} n={cmp['n']} "
                                       f"alternative={cmp['alternative']} alpha={alpha:g}")
    if forced:
        tags[names.TAG_FORCED] = "true"
        tags[names.TAG_FORCED_REASON] = "; ".join(overridden)[:_MAX_TAG]
    version = _existing_version(c, name, cand.model_uri)
    if version is None:
        version = mlflow.register_model(cand.model_uri, name, tags=tags)
    else:  # a version of this model from before (forced out since): this promotion's tags replace its old ones
        for k, v in tags.items():
            c.set_model_version_tag(name, version.version, k, v)
        for k in (names.TAG_COMPARED_WITH, names.TAG_PAIRED_TEST, names.TAG_FORCED, names.TAG_FORCED_REASON):
            if k not in tags and k in (version.tags or {}):
                c.delete_model_version_tag(name, version.version, k)
    v = str(version.version)
    gate_line = gate_summary(gate_tag, decision, f"version {holder.version}" if holder else None, overridden,
                             alias_ref)
    description = model_card(cand, name=name, version=v, alias_ref=alias_ref, measured=ch_result.metrics,
                             n=len(ch_errors), gate_line=gate_line, data_root=cand.params.get("data.root"))
    c.update_model_version(name, v, description=description)
    c.set_registered_model_alias(name, alias, v)
    _drop_alias_if_on(c, name, CHALLENGER_ALIAS, v)

    if holder is None:
        why = f"there was no {alias}; first promotion" + (f", forced: {'; '.join(overridden)}" if forced else "")
        message = f"{alias_ref} -> version {v} ({why})"
    elif forced:
        message = f"{alias_ref} -> version {v} (was version {holder.version}): forced ({'; '.join(overridden)})"
    else:
        direction = "lower" if decision.mode == "min" else "higher"
        message = (f"{alias_ref} -> version {v} (was version {holder.version}): significantly {direction} "
                   f"per-sample test error (one-sided Wilcoxon p = {decision.p:.3g} < alpha {alpha:g}, "
                   f"n = {decision.n})")
    return Promotion(True, message, name, alias, v, str(holder.version) if holder else None, cand,
                     decision.comparison if decision else None, dict(ch_result.metrics), holder_metrics,
                     decision, forced, overridden, description)


def _drop_alias_if_on(c, name: str, alias: str, version: str) -> None:
    holder = _alias_holder(c, name, alias)
    if holder is not None and str(holder.version) == str(version):
        c.delete_registered_model_alias(name, alias)
