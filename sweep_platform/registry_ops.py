"""The MLflow model registry side of binsweep: promote a sweep's best model, list versions, predict with one.

Promotion (`binsweep promote`) is a gate, not a copy:
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

Prediction (`binsweep predict`) reads stereo WAV files (channel 0 = left), resamples them to 16 kHz, takes the centre
0.5 s and prints the azimuth in degrees in [0, 360) (counter-clockwise, 0 = front, 90 = left; design.md).
"""

from __future__ import annotations

import ast
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sweep_platform import leaderboard as lb
from sweep_platform import tracking

TAG_RUN = "binsweep.run_id"
TAG_METRIC = "binsweep.selection_metric"
CHALLENGER_ALIAS = "challenger"
FINISHED_STATES = ("completed", "stopped")
SAMPLE_RATE = 16000
CLIP_SAMPLES = 8000  # 0.5 s at 16 kHz: the BAST input (2 x 129 x 61 spectrogram)


class PromotionRefused(Exception):
    """The gate refused: nothing in the registry was changed. The message says why and what to do."""


# -------------------------------------------------------------------------------------------------- helpers


def _parse_param(value: str) -> Any:
    """An MLflow param string back to a Python value: '0.5' -> 0.5, 'null' -> None, "('a',)" -> ('a',), 'SP' -> 'SP'."""
    if value in ("null", "None"):
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def nest_params(params: dict[str, str]) -> dict[str, Any]:
    """Flat dotted MLflow params -> the nested config dict they were flattened from."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = _parse_param(value)
    return out


def config_from_params(spec, params: dict[str, str]):
    """The trainable config a run was trained with, from its params (keys the config type does not know are ignored).

    Falls back to the defaults with only the run's `data` section (all evaluation needs) when the full config does
    not validate, e.g. a run logged by an older binsweep.
    """
    from pydantic import ValidationError

    nested = nest_params(params)
    known = set(spec.config_type.model_fields)
    try:
        return spec.config_type.model_validate({k: v for k, v in nested.items() if k in known})
    except ValidationError:
        if "data" not in nested or "data" not in known:
            raise
        return spec.config_type.model_validate({"data": nested["data"]})


def data_root(params: dict[str, str]) -> Path | None:
    root = params.get("data.root")
    if not root:
        return None
    from sweep_platform import paths

    p = Path(root)
    return p if p.is_absolute() else paths.home() / p


def manifest_fingerprint(root: Path | None) -> str | None:
    if root is None:
        return None
    try:
        return json.loads((root / "manifest.json").read_text())["fingerprint"]
    except (OSError, KeyError, ValueError):
        return None


def logged_model_uri(run) -> str | None:
    """models:/m-... of the newest LoggedModel whose source run is `run`, or None."""
    import mlflow

    tracking.client()  # sets the tracking URI for the fluent API
    try:
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             filter_string=f"source_run_id='{run.info.run_id}'", output_format="list")
    except Exception:  # noqa: BLE001 - an older store: fall back to the run's outputs
        models = []
    if models:
        newest = max(models, key=lambda m: m.creation_timestamp or 0)
        return f"models:/{newest.model_id}"
    outputs = getattr(run, "outputs", None)
    ids = [o.model_id for o in (getattr(outputs, "model_outputs", None) or [])]
    return f"models:/{ids[-1]}" if ids else None


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one printable line (a corrupt file can put NUL bytes into an exception's text)."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(exc))
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


def load_model(model_uri: str):
    """A PyTorch model from MLflow on the CPU, in eval mode."""
    import mlflow.pytorch

    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    tracking.client()
    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    return model.eval()


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
    usable = [r for r in rows if r["state"] in FINISHED_STATES and r["value"] is not None
              and test_metric in r["metrics"]]
    if not usable:
        states = ", ".join(f"{r['trial']}: {r['state']}" + ("" if test_metric in r["metrics"] else
                                                            f" (no {test_metric})") for r in rows) or "no trials"
        raise PromotionRefused(f"sweep {ref.name!r} has no finished trial (completed or stopped) with test metrics "
                               f"to promote ({states})")
    best = usable[0]
    run = tracking.client().get_run(best["run_id"])
    uri = logged_model_uri(run)
    if uri is None:
        raise PromotionRefused(f"trial {best['trial']} of sweep {ref.name!r} (run {best['run_id']}) has no logged "
                               f"model in MLflow; nothing to register")
    return Candidate(sweep=ref.name, trial=str(best["trial"]), run_id=best["run_id"], trainable=ref.trainable,
                     metric=metric, value=float(best["value"]), model_uri=uri, params=dict(run.data.params),
                     test_metrics=dict(best["metrics"]), fingerprint=run.data.tags.get(tracking.TAG_DATASET))


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
    fp = (mv.tags or {}).get(tracking.TAG_DATASET)
    if fp:
        return fp
    if mv.run_id:
        try:
            return c.get_run(mv.run_id).data.tags.get(tracking.TAG_DATASET)
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
    from trainables.registry import get_trainable

    c = tracking.client()
    cand = best_candidate(sweep, trainable)
    name = model_name or cand.trainable
    spec = get_trainable(cand.trainable)
    say(f"challenger: sweep {cand.sweep}, trial {cand.trial} (run {cand.run_id[:8]}), {cand.metric} "
        f"{cand.value:.4g}, model {cand.model_uri}")

    # The same test split for both, or no comparison at all.
    root = data_root(cand.params)
    on_disk = manifest_fingerprint(root)
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
        challenger = load_model(cand.model_uri)
    except Exception as exc:  # noqa: BLE001 - unpickling, missing files, bad URI: all the same refusal
        raise PromotionRefused(f"the model of trial {cand.trial} ({cand.model_uri}) failed to load: "
                               f"{describe_error(exc)}") from exc
    try:
        config = config_from_params(spec, cand.params)
    except Exception as exc:  # noqa: BLE001
        raise PromotionRefused(f"the config of trial {cand.trial} cannot be rebuilt from its params: {exc}") from exc
    ch_result, ch_errors = _evaluate(spec, challenger, config, f"the model of trial {cand.trial}")
    say(f"challenger on the test split: " + ", ".join(f"{k} {v:.4g}" for k, v in ch_result.metrics.items()
                                                         if "." not in k))

    comparison = None
    holder_metrics: dict[str, float] = {}
    holder_broken = None
    if holder is not None:
        try:
            held = load_model(f"models:/{name}/{holder.version}")
            h_result, h_errors = _evaluate(spec, held, config, f"{name}@{alias} (version {holder.version})")
            holder_metrics = dict(h_result.metrics)
            if len(h_errors) != len(ch_errors):
                raise PromotionRefused(f"the two models were scored on {len(ch_errors)} and {len(h_errors)} test "
                                       f"samples; the errors cannot be paired")
            comparison = paired_test(ch_errors, h_errors)
        except PromotionRefused as exc:
            holder_broken = str(exc)
        except Exception as exc:  # noqa: BLE001 - the holder's artifact is gone or broken
            holder_broken = f"{name}@{alias} (version {holder.version}) failed to load: {describe_error(exc)}"
        if holder_broken and not force:
            raise PromotionRefused(f"{holder_broken}; the challenger cannot be compared with it (pass --force to "
                                   f"replace it)")

    # Register (or reuse the version already made from this model) and record where it came from.
    import mlflow

    tags = {tracking.TAG_SWEEP: cand.sweep, tracking.TAG_TRIAL: cand.trial, TAG_RUN: cand.run_id,
            tracking.TAG_TRAINABLE: cand.trainable, tracking.TAG_DATASET: cand.fingerprint or "unknown",
            TAG_METRIC: f"{cand.metric}={cand.value:.6g}"}
    tags.update({k: f"{v:.6g}" for k, v in cand.test_metrics.items()})
    version = _existing_version(c, name, cand.model_uri)
    if version is None:
        version = mlflow.register_model(cand.model_uri, name, tags=tags)
    else:
        for k, v in tags.items():
            c.set_model_version_tag(name, version.version, k, v)
    v = str(version.version)
    if comparison is not None:
        c.set_model_version_tag(name, v, "binsweep.compared_with", f"version {holder.version}")
        c.set_model_version_tag(name, v, "binsweep.paired_test",
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


# ------------------------------------------------------------------------------------------------ listing


def list_versions(name: str = "bast") -> list[dict[str, Any]]:
    """Every version of registered model `name`, newest first: version, aliases, sweep, trial, test metric, created."""
    from mlflow.exceptions import MlflowException

    c = tracking.client()
    try:
        registered = c.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in c.search_registered_models())
        raise ValueError(f"no registered model {name!r}"
                         + (f"; registered models: {', '.join(known)}" if known else "; nothing is registered yet "
                            "(binsweep promote --sweep NAME)")) from None
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():  # search results carry no aliases; the model does
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        tags = dict(mv.tags or {})
        run_metrics: dict[str, float] = {}
        if mv.run_id and not any(k.startswith("test_") for k in tags):
            try:
                run = c.get_run(mv.run_id)
                run_metrics = run.data.metrics
                tags = {**run.data.tags, **tags}
            except Exception:  # noqa: BLE001 - the source run was deleted
                pass
        metric = next((m for m in lb.TEST_METRICS.get(tags.get(tracking.TAG_TRAINABLE, name), ())), "test_ad_deg")
        value = tags.get(metric, run_metrics.get(metric))
        rows.append({
            "version": str(mv.version),
            "aliases": sorted(set(aliases.get(str(mv.version), [])) | set(mv.aliases or [])),
            "sweep": tags.get(tracking.TAG_SWEEP),
            "trial": tags.get(tracking.TAG_TRIAL),
            "metric": metric,
            "value": float(value) if value is not None else None,
            "dataset_fingerprint": tags.get(tracking.TAG_DATASET),
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((mv.creation_timestamp or 0) / 1000)),
            "source": mv.source,
        })
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


# ------------------------------------------------------------------------------------------------ prediction


class ClipError(ValueError):
    """A file that cannot be turned into a 0.5 s stereo clip; the message names the file."""


def read_clip(path: str | Path) -> np.ndarray:
    """A stereo audio file -> [2, 8000] float32 at 16 kHz (the centre 0.5 s), channel 0 = left."""
    import soundfile as sf
    from scipy.signal import resample_poly

    path = Path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [S, C]
    except Exception as exc:  # noqa: BLE001 - missing file, not audio, unsupported format
        raise ClipError(f"{path}: cannot read it as audio ({exc})") from None
    channels = data.shape[1]
    if channels != 2:
        raise ClipError(f"{path}: {'mono' if channels == 1 else f'{channels} channels'}; a binaural recording must be "
                        f"stereo (2 channels, channel 0 = left ear)")
    duration = data.shape[0] / rate
    need = CLIP_SAMPLES / SAMPLE_RATE
    if duration < need:
        raise ClipError(f"{path}: {duration:.3f} s long; at least {need:g} s is needed")
    wave = data.T  # [2, S]
    if rate != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, int(rate))
        wave = resample_poly(wave, SAMPLE_RATE // g, int(rate) // g, axis=1).astype(np.float32)
    if wave.shape[1] < CLIP_SAMPLES:  # a rounding sample or two short after resampling
        wave = np.pad(wave, ((0, 0), (0, CLIP_SAMPLES - wave.shape[1])))
    start = (wave.shape[1] - CLIP_SAMPLES) // 2
    return np.ascontiguousarray(wave[:, start:start + CLIP_SAMPLES], dtype=np.float32)


@dataclass
class FilePrediction:
    path: str
    azimuth_deg: float | None = None
    error: str | None = None


def predict_files(model_uri: str, files: list[str | Path]) -> list[FilePrediction]:
    """The azimuth (degrees, [0, 360)) of each file; a file that cannot be read gets an error instead."""
    import torch

    from trainables.audio import BinauralFrontEnd

    try:
        model = load_model(model_uri)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot load model {model_uri}: {describe_error(exc)}") from None
    front_end = BinauralFrontEnd(sample_rate=SAMPLE_RATE)
    out = []
    for f in files:
        try:
            clip = read_clip(f)
        except ClipError as exc:
            out.append(FilePrediction(str(f), error=str(exc)))
            continue
        with torch.no_grad():
            pred = model(front_end(torch.from_numpy(clip)[None]))
        if not isinstance(pred, torch.Tensor) or tuple(pred.shape) != (1, 2):
            raise ValueError(f"{model_uri} is not a localization model: it returned "
                             f"{tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__} "
                             f"instead of (x, y)")
        x, y = (float(v) for v in pred[0])
        azimuth = math.degrees(math.atan2(y, x)) % 360.0
        out.append(FilePrediction(str(f), azimuth_deg=0.0 if azimuth >= 360.0 else azimuth))
    return out
