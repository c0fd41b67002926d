"""The promotion gate (`binsweep promote`): register a sweep's best model and give it an alias only if it is better.

Promotion is a gate, not a copy:
1. the sweep's best finished trial (state completed or stopped, with test metrics, best by the sweep's own metric:
   the objective in its sweep.yaml, i.e. selection on validation, never on test) is the challenger;
2. the challenger and the current alias holder (default alias `champion`) are loaded from MLflow and evaluated on the
   same held-out test split (the dataset named by the challenger run's `data.root`); the split must be the one both
   were scored on: their dataset fingerprints must agree (and match the dataset on disk) unless forced;
3. the per-sample errors are paired: Wilcoxon signed-rank test (one-sided: challenger errors smaller; and two-sided),
   with the mean difference;
4. the challenger is registered (a version's tags record sweep, trial, run, metrics and dataset fingerprint) and takes
   the alias only when its mean error is lower (or with force); otherwise it gets the `challenger` alias and the
   holder keeps its alias.
A challenger whose artifact does not load, that has no test metrics, or that cannot be evaluated is refused
(`PromotionRefused`, CLI exit 2) before anything in the registry changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sweep_platform import leaderboard as lb
from sweep_platform import model_store, names, tracking
from sweep_platform.errors import BinsweepError
from sweep_platform.model_store import describe_error
from trainables.registry import get_trainable

CHALLENGER_ALIAS = "challenger"


class PromotionRefused(BinsweepError):
    """The gate refused: nothing in the registry was changed. The message says why and what to do."""

    def __init__(self, reason: str):
        super().__init__(f"promotion refused: {reason}")
        self.reason = reason


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def paired_test(challenger: np.ndarray, holder: np.ndarray) -> dict[str, float]:
    """Wilcoxon signed-rank on paired per-sample errors: one-sided (challenger smaller) and two-sided p."""
    from scipy import stats

    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(holder, dtype=np.float64)
    diff = a - b
    out = {"test": "wilcoxon signed-rank", "n": int(len(diff)), "mean_challenger": float(a.mean()),
           "mean_holder": float(b.mean()), "mean_difference": float(diff.mean()),
           "statistic": float("nan"), "p_one_sided": 1.0, "p_two_sided": 1.0}
    if np.any(diff != 0):
        less = stats.wilcoxon(a, b, alternative="less")
        two = stats.wilcoxon(a, b, alternative="two-sided")
        out.update(statistic=float(less.statistic), p_one_sided=float(less.pvalue), p_two_sided=float(two.pvalue))
    return out


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


def best_candidate(sweep: str | None = None, trainable: str | None = None) -> Candidate:
    """The sweep's best finished trial with test metrics and a logged model, by the sweep's own metric."""
    ref = lb.find_sweep(sweep, trainable)
    metric, mode = ref.objective()
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
    return Candidate(sweep=ref.name, trial=str(best["trial"]), run_id=best["run_id"], trainable=ref.trainable,
                     metric=metric, value=float(best["value"]), model_uri=uri, params=dict(run.data.params),
                     test_metrics=dict(best["metrics"]), fingerprint=run.data.tags.get(names.TAG_DATASET))


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
    return result, errors


def _existing_version(c, name: str, source: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.source == source]
    return max(same, key=lambda v: int(v.version)) if same else None


def promote(sweep: str | None = None, *, model_name: str | None = None, alias: str = "champion", force: bool = False,
            trainable: str | None = None, say: Callable[[str], None] = lambda s: None) -> Promotion:
    """Register the sweep's best model and move `alias` to it when it beats the holder (see the module docstring).

    Raises PromotionRefused (registry untouched) when the gate cannot be run; returns a Promotion otherwise.
    """
    c = tracking.client()
    cand = best_candidate(sweep, trainable)
    name = model_name or cand.trainable
    spec = get_trainable(cand.trainable)
    say(f"challenger: sweep {cand.sweep}, trial {cand.trial} (run {cand.run_id[:8]}), {cand.metric} "
        f"{cand.value:.4g}, model {cand.model_uri}")

    # The same test split for both, or no comparison at all.
    root = model_store.data_root(cand.params)
    on_disk = model_store.manifest_fingerprint(root)
    if _known(cand.fingerprint) and on_disk and on_disk != cand.fingerprint and not force:
        raise PromotionRefused(f"the dataset at {root} (fingerprint {on_disk[:12]}) is not the one trial {cand.trial} "
                               f"was tested on ({cand.fingerprint[:12]}); rebuild it or pass --force")
    holder = _alias_holder(c, name, alias)
    if holder is not None and holder.source == cand.model_uri:
        held = str(holder.version)
        return Promotion(False, f"{name}@{alias} is already version {held}, the model of trial {cand.trial} of sweep "
                         f"{cand.sweep}; nothing to do", name, alias, held, held, cand)
    if holder is not None:
        holder_fp = _version_fingerprint(c, holder)
        if not (_known(holder_fp) and _known(cand.fingerprint) and holder_fp == cand.fingerprint) and not force:
            raise PromotionRefused(
                f"{name}@{alias} (version {holder.version}) was tested on dataset {str(holder_fp)[:12]}, the "
                f"challenger on {str(cand.fingerprint)[:12]}: different test splits cannot be compared; "
                f"pass --force to promote anyway")

    # Challenger: must load and score.
    try:
        challenger, config = model_store.load_model(cand.model_uri, cand.trainable)
    except model_store.ModelLoadError as exc:
        raise PromotionRefused(f"the model of trial {cand.trial} ({cand.model_uri}) failed to load: "
                               f"{exc.reason}") from exc
    ch_result, ch_errors = _evaluate(spec, challenger, config, f"the model of trial {cand.trial}")
    say("challenger on the test split: " + ", ".join(f"{k} {v:.4g}" for k, v in ch_result.metrics.items()
                                                        if "." not in k))

    comparison = None
    holder_metrics: dict[str, float] = {}
    holder_broken = None
    if holder is not None:
        try:
            # scored with the challenger's config: the same test split for both
            held, _ = model_store.load_model(f"models:/{name}/{holder.version}", cand.trainable)
            h_result, h_errors = _evaluate(spec, held, config, f"{name}@{alias} (version {holder.version})")
            holder_metrics = dict(h_result.metrics)
            if len(h_errors) != len(ch_errors):
                raise PromotionRefused(f"the two models were scored on {len(ch_errors)} and {len(h_errors)} test "
                                       f"samples; the errors cannot be paired")
            comparison = paired_test(ch_errors, h_errors)
        except PromotionRefused as exc:
            holder_broken = exc.reason
        except Exception as exc:  # noqa: BLE001 - the holder's artifact, run or trainable is gone or broken
            reason = exc.reason if isinstance(exc, model_store.ModelLoadError) else describe_error(exc)
            holder_broken = f"{name}@{alias} (version {holder.version}) failed to load: {reason}"
        if holder_broken and not force:
            raise PromotionRefused(f"{holder_broken}; the challenger cannot be compared with it (pass --force to "
                                   f"replace it)")

    # Register (or reuse the version already made from this model) and record where it came from.
    import mlflow

    tags = {names.TAG_SWEEP: cand.sweep, names.TAG_TRIAL: cand.trial, names.TAG_RUN: cand.run_id,
            names.TAG_TRAINABLE: cand.trainable, names.TAG_DATASET: cand.fingerprint or "unknown",
            names.TAG_SELECTION_METRIC: f"{cand.metric}={cand.value:.6g}"}
    tags.update({k: f"{v:.6g}" for k, v in cand.test_metrics.items()})
    version = _existing_version(c, name, cand.model_uri)
    if version is None:
        version = mlflow.register_model(cand.model_uri, name, tags=tags)
    else:
        for k, v in tags.items():
            c.set_model_version_tag(name, version.version, k, v)
    v = str(version.version)
    if comparison is not None:
        c.set_model_version_tag(name, v, names.TAG_COMPARED_WITH, f"version {holder.version}")
        c.set_model_version_tag(name, v, names.TAG_PAIRED_TEST,
                                f"wilcoxon p_one_sided={comparison['p_one_sided']:.4g} "
                                f"mean_difference={comparison['mean_difference']:.4g}")

    result = Promotion(False, "", name, alias, v, str(holder.version) if holder else None, cand, comparison,
                       dict(ch_result.metrics), holder_metrics)
    if holder is None:
        c.set_registered_model_alias(name, alias, v)
        result.promoted = True
        result.message = f"{name}@{alias} -> version {v} (there was no {alias}; first promotion)"
        return result
    better = comparison is not None and comparison["mean_challenger"] < comparison["mean_holder"]
    if better or force:
        c.set_registered_model_alias(name, alias, v)
        _drop_alias_if_on(c, name, CHALLENGER_ALIAS, v)
        result.promoted = True
        why = ("lower mean test error" if better else
               f"forced ({holder_broken or 'the challenger is not better'})")
        result.message = f"{name}@{alias} -> version {v} (was version {holder.version}): {why}"
        return result
    c.set_registered_model_alias(name, CHALLENGER_ALIAS, v)
    result.message = (f"{name}@{alias} stays on version {holder.version}: version {v} is not better "
                      f"(mean test error {comparison['mean_challenger']:.4g} vs {comparison['mean_holder']:.4g}); "
                      f"version {v} is now {name}@{CHALLENGER_ALIAS} (--force promotes it anyway)")
    return result


def _drop_alias_if_on(c, name: str, alias: str, version: str) -> None:
    holder = _alias_holder(c, name, alias)
    if holder is not None and str(holder.version) == str(version):
        c.delete_registered_model_alias(name, alias)
