"""A trained model as an MLflow model directory that `mlflow models serve` can run: what goes in, how it is logged,
how the platform reads one back.

A model directory (an MLflow 3 LoggedModel, pyfunc flavor, "models from code"):
  MLmodel                     pyfunc flavor with model_code_path = served_model.py, the signature (tensors that
                              describe what a user sends: waveforms, frames), metadata (the trainable, what each
                              tensor means)
  code/served_model.py        the pyfunc (sweep_platform/served_model.py): rebuilds the module, dispatches requests
  code/trainables/ ...        the trainable's packages: its spec, config, model and Serving code (see code_paths)
  artifacts/binsweep.json     {"format", "trainable", "spec": "module:attribute", "config": the validated config}
  artifacts/weights.pt        the state dict (torch.save; read back with torch.load(weights_only=True))
  requirements.txt, python_env.yaml, conda.yaml   pinned to the versions installed where the model was logged
  input_example.json, serving_input_example.json  a small valid request ({"inputs": ...} for /invocations)

Nothing in it is a pickled object: loading it runs the shipped code on plain weights and JSON.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sweep_platform import names
from trainables.registry import Tensor, TrainableSpec, spec_reference

logger = logging.getLogger(__name__)

# what served_model.py and every model's spec import, whatever the trainable; its Serving names the rest
BASE_REQUIREMENTS = ("mlflow", "torch", "numpy", "pydantic")


class PackagingError(ValueError):
    """A model that cannot be made into a servable MLflow model (an unimportable spec, a package not installed)."""


def requirements(spec: TrainableSpec) -> list[str]:
    """`dist==version` for what the served model imports, pinned to what is installed here (it just ran here)."""
    names = BASE_REQUIREMENTS + (spec.serving.requirements if spec.serving else ())
    pins = []
    for dist in dict.fromkeys(names):
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            raise PackagingError(f"trainable {spec.name!r} serves with {dist!r}, which is not installed") from None
    return pins


def code_paths(reference: str) -> list[str]:
    """The folders (or single-file modules) of the packages a served model imports from source: the one holding
    the spec and `trainables` (TrainableSpec, and binsweep's own trainables). Not sweep_platform: served_model.py is
    the only platform code a model needs and is shipped as the model's code file; the rest (Ray, Tune, the CLI)
    would only add imports that serving never makes."""
    out = []
    for package in dict.fromkeys([reference.partition(":")[0].split(".")[0], "trainables"]):
        found = importlib.util.find_spec(package)
        if found is None:
            raise PackagingError(f"package {package!r} of the spec {reference} cannot be found")
        locations = list(found.submodule_search_locations or [])
        out.append(locations[0] if locations else found.origin)
    return out


def _array(x: Any) -> Any:
    """A tensor, array or dict of them -> numpy (what MLflow takes as an input example)."""
    import numpy as np

    if isinstance(x, dict):
        return {k: _array(v) for k, v in x.items()}
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def example_and_signature(spec: TrainableSpec, model, config: BaseModel):
    """(a small valid request, the MLflow signature) for the model: the trainable's Serving when it has one (tensor
    specs for what a user sends), else the forward's example input and its output."""
    import numpy as np
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    serving = spec.serving
    if serving is None:
        from sweep_platform.served_model import _forward

        example = _array(spec.example_input(config))
        return example, infer_signature(example, _forward(model, config, example))

    def schema(tensors: Tensor | dict[str, Tensor]) -> Schema:
        named = tensors.items() if isinstance(tensors, dict) else [(None, tensors)]
        return Schema([TensorSpec(np.dtype(t.dtype), tuple(t.shape), name) for name, t in named])

    return serving.example(config), ModelSignature(inputs=schema(serving.inputs(config)),
                                                   outputs=schema(serving.output))


def _metadata(spec: TrainableSpec, reference: str, config: BaseModel) -> dict[str, Any]:
    """What the MLmodel says about the model in words: its trainable, and what each tensor means."""
    meta: dict[str, Any] = {"binsweep_trainable": spec.name, "binsweep_spec": reference}
    if spec.serving is not None:
        inputs = spec.serving.inputs(config)
        meta["inputs"] = ({k: t.meaning for k, t in inputs.items()} if isinstance(inputs, dict) else inputs.meaning)
        meta["output"] = spec.serving.output.meaning
    return meta


def log(run_id: str, spec: TrainableSpec, model, config: BaseModel, name: str, attempt) -> str | None:
    """Log `model` (a trained module on the CPU) to run `run_id` as a servable LoggedModel; its models:/ URI. What
    can fail for good (packaging) is a warning and None; the MLflow calls go through `attempt` (retries)."""
    import mlflow
    import torch

    from sweep_platform import served_model

    try:
        reference = spec_reference(spec)
        paths = code_paths(reference)
        pins = requirements(spec)
        example, signature = example_and_signature(spec, model, config)
        metadata = _metadata(spec, reference, config)
    except Exception as exc:  # noqa: BLE001 - tracking never kills training: the run keeps everything else
        logger.warning("MLflow: model %s not logged: %s: %s", name, type(exc).__name__, exc)
        return None
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    with tempfile.TemporaryDirectory(prefix="binsweep-model-") as tmp:
        info_file, weights_file = Path(tmp) / served_model.INFO_FILE, Path(tmp) / served_model.WEIGHTS_FILE
        info_file.write_text(json.dumps({"format": served_model.FORMAT, "trainable": spec.name, "spec": reference,
                                         "config": config.model_dump(mode="json")}, indent=1))
        torch.save({k: v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else v
                    for k, v in model.state_dict().items()}, weights_file)

        def _log() -> str:
            with mlflow.start_run(run_id=run_id):
                logged = mlflow.pyfunc.log_model(
                    name=name, python_model=served_model.__file__, code_paths=paths,
                    artifacts={served_model.INFO_ARTIFACT: str(info_file),
                               served_model.WEIGHTS_ARTIFACT: str(weights_file)},
                    signature=signature, input_example=example, pip_requirements=pins, metadata=metadata,
                    tags={names.TAG_TRAINABLE: spec.name})
            return logged.model_uri

        return attempt(_log, f"model {name}")


# ------------------------------------------------------------------------------------------------ reading back


def _artifact(model_dir: str | Path, name: str) -> Path | None:
    """Where the pyfunc artifact `name` is in a downloaded model directory (as its MLmodel says); None if it has
    none (a model pickled by an older binsweep has no pyfunc artifacts)."""
    from mlflow.models import Model

    artifacts = Model.load(str(model_dir)).flavors.get("python_function", {}).get("artifacts") or {}
    path = (artifacts.get(name) or {}).get("path")
    return Path(model_dir) / path if path else None


def is_served_format(model_dir: str | Path) -> bool:
    """Whether a downloaded model directory is this format (else: a model pickled by an older binsweep)."""
    from sweep_platform import served_model

    found = _artifact(model_dir, served_model.INFO_ARTIFACT)
    return found is not None and found.is_file()


def read(model_dir: str | Path) -> dict[str, Any]:
    """The directory's binsweep.json: format, trainable, spec reference, config."""
    from sweep_platform import served_model

    return json.loads(_artifact(model_dir, served_model.INFO_ARTIFACT).read_text())


def load(spec: TrainableSpec, model_dir: str | Path, device: str = "cpu") -> tuple[Any, BaseModel]:
    """(module in eval mode on `device`, its config) from a downloaded model directory, as the served model
    rebuilds it (weights only)."""
    from sweep_platform import served_model

    return served_model.rebuild(spec, read(model_dir), _artifact(model_dir, served_model.WEIGHTS_ARTIFACT), device)
