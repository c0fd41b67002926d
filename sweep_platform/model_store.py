"""Trained models and what they were trained with, wherever they are kept: MLflow (a run's LoggedModel, a registered
version) or a checkpoint folder written by trainables.loop.

`load_model` is the one way in: a `models:/...` or `runs:/...` URI or a checkpoint folder becomes the model and the
trainable config it was trained with (from the model directory's binsweep.json for an MLflow model, weights only, see
model_package; from the run's params for one pickled by an older binsweep; from config.json for a checkpoint).
The trainable is known from the source itself (the run's `binsweep.trainable` tag, the checkpoint's config.json), so
a caller names it only to insist on one.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sweep_platform import names, tracking
from sweep_platform.errors import BinsweepError
from trainables.registry import TrainableSpec, get_trainable

URI_SCHEMES = ("models:/", "runs:/")


class ModelNotFoundError(BinsweepError, ValueError):
    """No registered model of that name."""


class ModelLoadError(BinsweepError, ValueError):
    """A model that cannot be loaded: neither a folder nor a URI, a missing version or alias, a broken artifact."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot load model {source}: {reason}")
        self.source, self.reason = source, reason


# ------------------------------------------------------------------------------------------------ params


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


def config_from_params(spec: TrainableSpec, params: dict[str, str]) -> BaseModel:
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


def data_root(params: dict[str, str]) -> Path | str | None:
    """The dataset a run's `data.root` param names: a URI as logged, or a folder on this machine (relative to
    BINSWEEP_HOME)."""
    from trainables.datastore import normalize

    root = params.get("data.root")
    return normalize(root) if root else None


def manifest_fingerprint(root: Path | str | None) -> str | None:
    """The fingerprint of the dataset in a folder or at a URI; None when there is none to read."""
    from trainables import datastore

    if root is None:
        return None
    try:
        return json.loads(datastore.read_text(datastore.join(root, datastore.MANIFEST)))["fingerprint"]
    except (OSError, KeyError, ValueError):
        return None


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one printable line (a corrupt file can put NUL bytes into an exception's text)."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(exc))
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


# ------------------------------------------------------------------------------------------------ MLflow models


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


@dataclass(frozen=True)
class ModelSource:
    """What MLflow records behind a models:/ or runs:/ URI."""

    run_id: str | None  # the run that logged the model
    model_id: str | None = None  # m-..., the LoggedModel (None for runs:/...)
    version: str | None = None  # NAME/VERSION when the URI names a registered version or alias
    version_tags: dict[str, str] = field(default_factory=dict)


def model_source(uri: str) -> ModelSource:
    """The run, LoggedModel and registered version behind a models:/ or runs:/ URI (one MLflow lookup each)."""
    c = tracking.client()
    if uri.startswith("runs:/"):
        return ModelSource(uri[len("runs:/"):].split("/", 1)[0] or None)
    ref = uri[len("models:/"):].strip("/")
    if "@" in ref:  # models:/NAME@ALIAS
        name, alias = ref.rsplit("@", 1)
        version = c.get_model_version_by_alias(name, alias)
    elif "/" in ref:  # models:/NAME/VERSION
        name, number = ref.rsplit("/", 1)
        version = c.get_model_version(name, number)
    else:  # models:/m-... (a LoggedModel)
        return ModelSource(c.get_logged_model(ref).source_run_id, ref)
    run_id = version.run_id or (c.get_logged_model(version.model_id).source_run_id if version.model_id else None)
    return ModelSource(run_id, version.model_id, f"{name}/{version.version}", dict(version.tags or {}))


def _mlflow_origin(uri: str, trainable: str | None) -> tuple[TrainableSpec, dict[str, str]]:
    """The trainable of the model at `uri` and the params of the run that trained it."""
    try:
        source = model_source(uri)
        run = tracking.client().get_run(source.run_id) if source.run_id else None
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing model, alias or run
        raise ModelLoadError(uri, describe_error(exc)) from exc
    if run is None:
        raise ModelLoadError(uri, "no MLflow run is recorded as its source, so its config is unknown")
    tagged = run.data.tags.get(names.TAG_TRAINABLE) or source.version_tags.get(names.TAG_TRAINABLE)
    if trainable and tagged and trainable != tagged:
        raise ModelLoadError(uri, f"it is a {tagged} model, not {trainable}")
    name = trainable or tagged
    if not name:
        raise ModelLoadError(uri, f"its run {run.info.run_id} has no {names.TAG_TRAINABLE} tag, so its trainable is "
                                  "unknown")
    return get_trainable(name), dict(run.data.params)


def _mlflow_model(uri: str, spec: TrainableSpec, device: str) -> tuple[Any, BaseModel | None]:
    """(the module in eval mode on `device`, its config) of the MLflow model at `uri`, rebuilt from its weights and
    config.json as the served model does (model_package); the config is None for a model logged pickled by an older
    binsweep (mlflow.pytorch, serialization_format="pickle"), which still loads, by unpickling: only from a store
    you trust, as before."""
    import mlflow

    from sweep_platform import model_package

    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    tracking.client()  # sets the tracking URI for the fluent API
    with tempfile.TemporaryDirectory(prefix="binsweep-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            if model_package.is_served_format(local):
                made_by = model_package.read(local).get("trainable")
                if made_by != spec.name:
                    raise ModelLoadError(uri, f"its directory says it is a {made_by} model, not {spec.name}")
                return model_package.load(spec, local, device)
            flavors = mlflow.models.Model.load(local).flavors
            if "pytorch" not in flavors:
                raise ModelLoadError(uri, f"not a binsweep model (flavors: {', '.join(sorted(flavors))})")
            import mlflow.pytorch

            return mlflow.pytorch.load_model(local, map_location=device).eval(), None
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated weights, missing files, bad URI: the same failure
            raise ModelLoadError(uri, describe_error(exc)) from exc


# ------------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_trainable(folder: Path) -> str | None:
    from trainables.loop import CHECKPOINT_FILE, read_checkpoint_config

    if not (folder / CHECKPOINT_FILE).is_file():
        raise ModelLoadError(str(folder), f"not a binsweep checkpoint folder (no {CHECKPOINT_FILE})")
    try:
        return read_checkpoint_config(folder).get("trainable")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(folder), describe_error(exc)) from exc


def load_checkpoint(spec: TrainableSpec, checkpoint_dir: str | Path,
                    device: str = "cpu") -> tuple[Any, BaseModel, dict[str, Any]]:
    """(model in eval mode on `device`, its config, the checkpoint's metadata) of a folder written by trainables.loop."""
    from trainables.loop import load_checkpoint_state, read_checkpoint_config

    meta = read_checkpoint_config(checkpoint_dir)
    config = spec.config_type.model_validate(meta["config"])
    model = spec.build_model(config)
    model.load_state_dict(load_checkpoint_state(checkpoint_dir)["model"])
    return model.to(device).eval(), config, meta


# ------------------------------------------------------------------------------------------------ one way in


@dataclass(frozen=True)
class Origin:
    """Where a model came from: the trainable that made it and, for an MLflow model, its training run's params."""

    spec: TrainableSpec
    params: dict[str, str] | None  # None for a checkpoint folder (its config.json holds the config)


def origin(source: str, trainable: str | None = None) -> Origin:
    """The Origin of the model at `source`, found without loading the model; `trainable`, when given, must be the
    one that made it."""
    folder = Path(source)
    if folder.is_dir():
        made_by = _checkpoint_trainable(folder)
        if trainable and made_by and made_by != trainable:
            raise ModelLoadError(source, f"it is a {made_by} checkpoint, not {trainable}")
        if not (trainable or made_by):
            raise ModelLoadError(source, "its config.json does not name its trainable")
        return Origin(get_trainable(trainable or made_by), None)
    if not source.startswith(URI_SCHEMES):
        raise ModelLoadError(source, "neither a checkpoint folder nor a model URI (models:/NAME@ALIAS, "
                                     "models:/NAME/VERSION, models:/m-ID, runs:/RUN_ID/PATH)")
    return Origin(*_mlflow_origin(source, trainable))


def spec_of(source: str) -> TrainableSpec:
    """The TrainableSpec of the trainable that made the model at `source`, without loading the model."""
    return origin(source).spec


def load_model(source: str, trainable: str | None = None, device: str = "cpu",
               known: Origin | None = None) -> tuple[Any, BaseModel]:
    """(model in eval mode on `device`, the trainable config it was trained with) from a models:/ or runs:/ URI or a
    checkpoint folder. `trainable`, when given, must be the one that made it; `known` is the source's Origin when
    the caller already looked it up. ModelLoadError when the source is not a model, cannot be found or read, or is
    another trainable's."""
    found = known or origin(source, trainable)
    spec, params = found.spec, found.params
    if params is None:
        try:
            model, config, _ = load_checkpoint(spec, source, device)
        except Exception as exc:  # noqa: BLE001 - a truncated state.pt, a config or weights of another version
            raise ModelLoadError(source, describe_error(exc)) from exc
        return model, config
    model, config = _mlflow_model(source, spec, device)
    if config is not None:  # the validated config the model directory holds
        return model, config
    try:
        config = config_from_params(spec, params)
    except Exception as exc:  # noqa: BLE001 - a ValidationError, or a param that no longer parses
        raise ModelLoadError(source, f"its {spec.name} config cannot be rebuilt from its run's params: "
                                     f"{describe_error(exc)}") from exc
    return model, config


# ------------------------------------------------------------------------------------------------ registry listing


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of registered model `name`, newest first: version, aliases, sweep, trial, test metric, created.

    The test metric is the default one of the trainable that made the version (its `binsweep.trainable` tag); for
    a version without that tag, its first test_* metric (None when it has none)."""
    from mlflow.exceptions import MlflowException

    from sweep_platform.leaderboard import default_metric

    c = tracking.client()
    try:
        registered = c.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in c.search_registered_models())
        raise ModelNotFoundError(f"no registered model {name!r}"
                                 + (f"; registered models: {', '.join(known)}" if known else
                                    "; nothing is registered yet (binsweep promote --sweep NAME)")) from None
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
        trainable = tags.get(names.TAG_TRAINABLE)
        metric = default_metric(trainable) if trainable else next(
            (k for k in sorted({*tags, *run_metrics}) if k.startswith("test_")), None)
        value = tags.get(metric, run_metrics.get(metric)) if metric else None
        rows.append({
            "version": str(mv.version),
            "aliases": sorted(set(aliases.get(str(mv.version), [])) | set(mv.aliases or [])),
            "sweep": tags.get(names.TAG_SWEEP),
            "trial": tags.get(names.TAG_TRIAL),
            "metric": metric,
            "value": float(value) if value is not None else None,
            "dataset_fingerprint": tags.get(names.TAG_DATASET),
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((mv.creation_timestamp or 0) / 1000)),
            "source": mv.source,
        })
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)
