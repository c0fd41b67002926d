"""The MLflow pyfunc that every binsweep model is logged as, and what rebuilds a model from a model directory.

MLflow "models from code": `model_package.log` hands MLflow this file's path as `python_model`; MLflow copies it into
the model (code/served_model.py) and executes it whenever the model is loaded (`mlflow.pyfunc.load_model`,
`mlflow models serve`), and the last line sets the model. So nothing in a model directory is unpickled: a class
instance given to `log_model` would be cloudpickled into python_model.pkl, which MLflow 3.17 refuses to load unless
MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set, and which would break with any change of the class.

Where it is served, this file runs without the platform (sweep_platform is not shipped with a model: only the
trainable's packages are, in code/), so it imports nothing from sweep_platform, only mlflow, torch and the
trainable's code. The model directory's artifacts (see model_package):
  artifacts/binsweep.json  {"format", "trainable", "spec": "trainables.bast:SPEC", "config": {...}}
  artifacts/weights.pt     the module's state dict (torch.save), loaded with weights_only=True
load_context imports the spec by its "module:attribute" reference (no entry points needed), rebuilds the module
with `spec.build_model(config)`, loads the weights and predict dispatches to the trainable's `Serving.predict` (or,
for a trainable without one, the module's forward on tensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

INFO_ARTIFACT, WEIGHTS_ARTIFACT = "binsweep", "weights"  # names in the pyfunc flavor's artifacts
INFO_FILE, WEIGHTS_FILE = "binsweep.json", "weights.pt"
FORMAT = 1
DEVICE_VARIABLE = "BINSWEEP_SERVE_DEVICE"  # where a served model runs; default: cuda when there is one, else cpu


def rebuild(spec: Any, info: dict, weights: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(the trained module in eval mode on `device`, its validated config) from a model directory's info and state
    dict: `spec.build_model` on the config (as the trainable's Serving.trained_config adjusts it for loading), then
    the weights, loaded without unpickling anything but tensors."""
    import torch

    config = spec.config_type.model_validate(info["config"])
    serving = getattr(spec, "serving", None)
    build_config = serving.trained_config(config) if serving is not None and serving.trained_config else config
    model = spec.build_model(build_config)
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model.to(device).eval(), config


def _forward(model, config, inputs, device: str = "cpu"):
    """A trainable without Serving: its module's forward on the request's arrays (as example_input gives them)."""
    import numpy as np
    import torch

    def tensor(x):
        return torch.as_tensor(np.asarray(x)).to(device)

    def array(y):
        return {k: array(v) for k, v in y.items()} if isinstance(y, dict) else y.detach().float().cpu().numpy()

    with torch.no_grad():
        return array(model({k: tensor(v) for k, v in inputs.items()} if isinstance(inputs, dict) else tensor(inputs)))


class ServedModel(mlflow.pyfunc.PythonModel):
    """Rebuilds the model from the directory's weights and config; each request goes to the trainable's Serving."""

    def load_context(self, context) -> None:
        import torch

        from trainables.registry import load_object

        info = json.loads(Path(context.artifacts[INFO_ARTIFACT]).read_text())
        if info.get("format") != FORMAT:
            raise mlflow.MlflowException(f"binsweep model format {info.get('format')!r}; this code reads {FORMAT}")
        self.spec = load_object(info["spec"])
        self.device = os.environ.get(DEVICE_VARIABLE) or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.config = rebuild(self.spec, info, context.artifacts[WEIGHTS_ARTIFACT], self.device)

    # np.ndarray (a dict of them for named inputs): MLflow then checks requests against the logged signature only,
    # not against type hints, and does not warn that predict has none
    def predict(self, context, model_input: np.ndarray, params=None):
        serving = self.spec.serving
        try:
            if serving is None:
                return _forward(self.model, self.config, model_input, self.device)
            return serving.predict(self.model, self.config, model_input, self.device)
        except ValueError as exc:  # the trainable's word for a bad request: HTTP 400 with its message, not 500
            raise mlflow.MlflowException.invalid_parameter_value(str(exc)) from None


if __name__ != "sweep_platform.served_model":  # executed by MLflow from a model directory, not imported
    mlflow.models.set_model(ServedModel())
