"""The one interface between the platform and what it trains: a `TrainableSpec` per model.

A trainable is a package that exposes a `TrainableSpec` and names it in the Python entry-point group
`binsweep.trainables` of its distribution (binsweep's own trainables do the same in pyproject.toml):

    [project.entry-points."binsweep.trainables"]
    my_model = "my_package:SPEC"

The platform finds trainables through that group, or through `register_trainable` for one defined at run time
(a notebook, a test), and never imports model internals: everything it needs of a model is a field below.
Entry points are loaded on first lookup, so `binsweep --help` stays fast.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel

ENTRY_POINT_GROUP = "binsweep.trainables"
_REGISTRY: dict[str, TrainableSpec] = {}
_RUNTIME_SOURCES: dict[str, str] = {}  # name -> where a trainable registered at run time came from


class TrainableNotFoundError(KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class InputFileError(ValueError):
    """A file a predictor cannot use (not audio, wrong channel count, too short); the message names the file."""


@dataclass
class EvalResult:
    """A trained model scored on a held-out split: named metrics, files to keep (plots, tables) and a text summary."""

    metrics: dict[str, float]
    files: dict[str, object]
    summary: str
    per_sample_error: object = None  # [N] array, for paired tests between two models on the same split


def load_object(target: str) -> Any:
    """"package.module:attribute" -> the object (imported on first use, so a spec stays cheap to load)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class DatasetBuilder:
    """How a sweep file's `dataset_build` section becomes a dataset (manifest.json + shards) in a folder or at a URI.

    Named as "module:attribute" strings: a builder pulls in numpy, scipy and pyarrow, which listing trainables or
    `binsweep --help` should not pay for."""

    config: str  # the section's pydantic schema, e.g. "trainables.localization.builder:LocalizationBuildConfig"
    builder: str  # (config, out_dir: Path, progress=None) -> manifest, e.g. "trainables.localization.builder:build"
    #               it writes a local folder; `build` stages and publishes a dataset meant for a URI
    command: str  # the CLI that builds one by hand, for messages, e.g. "binsweep data localization"

    @property
    def config_type(self) -> type[BaseModel]:
        return load_object(self.config)

    def build(self, config: BaseModel, out_dir: Path | str, progress: Callable[[int, int], None] | None = None) -> Any:
        """Build into a folder, or for a URI (s3://bucket/prefix) into a staging folder under the home's cache that
        is then published there, manifest last (`trainables.datastore`)."""
        from trainables import datastore

        build = load_object(self.builder)

        def run(out: Path) -> Any:
            return build(config, out) if progress is None else build(config, out, progress=progress)

        if datastore.is_uri(out_dir):
            return datastore.build_and_publish(out_dir, run)
        return run(out_dir)


@dataclass(frozen=True)
class Predictor:
    """What `binsweep predict MODEL FILE...` does: one row of named values per input file."""

    predict_file: Callable[..., dict[str, Any]]  # (model, config, path, device) -> {"azimuth_deg": 93.2}
    inputs: str  # what a file must be, for help and errors, e.g. "stereo WAV, channel 0 = left, >= 0.5 s"


@dataclass(frozen=True)
class Tensor:
    """One array of a served model's request or response, in words a user can act on (the platform turns it into
    an MLflow TensorSpec; trainables do not import MLflow)."""

    dtype: str  # numpy dtype name: "float32", "uint8", ...
    shape: tuple[int, ...]  # the batch first; -1 = any size
    meaning: str  # e.g. "stereo waveforms at 16 kHz, channel 0 = left ear"


@dataclass(frozen=True)
class Serving:
    """What a trained model is once logged: an MLflow pyfunc that takes what a user has (waveforms, a frame) and
    returns what they want (azimuths, two channels). `mlflow.pyfunc.load_model` and `mlflow models serve` run it; the
    platform's wrapper only rebuilds the model (`build_model` + the logged state dict) and calls `predict`.

    Everything here runs where the model is served, from the copy of the trainable's package that the model carries,
    so it must import nothing but the trainable's own code and `requirements`."""

    inputs: Callable[[BaseModel], Tensor | Mapping[str, Tensor]]  # config -> one unnamed array, or named arrays
    output: Tensor
    example: Callable[[BaseModel], Any]  # config -> a small valid request: an ndarray, or {name: ndarray}
    predict: Callable[..., Any]  # (model, config, inputs, device) -> ndarray, batch first; ValueError: a bad request
    requirements: tuple[str, ...] = ()  # distributions imported at load/predict time besides mlflow, torch, numpy,
    #                                     pydantic (pinned to the installed versions when a model is logged)
    trained_config: Callable[[BaseModel], BaseModel] | None = None  # config -> the config to rebuild a trained model
    #   with before its weights are loaded (e.g. without paths to pretrained backbones that the weights supersede)


@dataclass(frozen=True)
class PaperReference:
    """Published numbers to print beside a trial (`--compare-paper`), matched from the trial's params."""

    source: str  # citation and where the numbers come from
    lookup: Callable[[Mapping[str, str]], dict[str, float | None] | None]  # MLflow params -> {"paper_ad_deg": ..}
    columns: tuple[str, ...]  # the keys lookup returns, in display order


@dataclass(frozen=True)
class Command:
    """A CLI command a trainable adds (e.g. `binsweep data binaural`): a typer-annotated function.

    `group` is None for a top-level command or "data" for `binsweep data NAME`. The function receives nothing from
    the platform but what `commands(services)` closed over (see PlatformServices). It runs behind the CLI's error
    boundary: a ValueError raised by the trainable's own code (InputFileError, FileNotFoundError, a pydantic
    ValidationError from anywhere) is shown as its message with exit 2; anything else is a bug and keeps its
    traceback. A command two trainables share must be the same function object (module-level): it is mounted once."""

    name: str
    function: Callable[..., Any]
    group: str | None = None


@dataclass(frozen=True)
class PlatformServices:
    """What the platform lends to a trainable's commands, so the trainable never imports it."""

    load_model: Callable[[str, str], tuple[Any, BaseModel]]  # (model URI or checkpoint dir, trainable) -> model, config
    say: Callable[[str], None]  # one line to the user's console
    warn: Callable[[str], None]  # one notice on stderr


@dataclass(frozen=True)
class TrainableSpec:
    """Everything the platform needs of a model. Only the first block is required."""

    name: str
    description: str
    config_type: type[BaseModel]  # validated config with defaults for every field (model, loss, train, data ...)
    build_model: Callable[[BaseModel], Any]  # config -> torch.nn.Module
    recipe: Callable[[BaseModel], Any]  # config -> trainables.loop.Recipe, built on every worker
    primary_metric: str  # reported every epoch, e.g. val_ad_deg: what a sweep optimises by default
    mode: Literal["min", "max"]
    evaluate: Callable[..., EvalResult]  # (model, config, split, out_dir, device) -> EvalResult
    example_input: Callable[[BaseModel], Any]  # config -> one batch of the model's forward inputs (benchmarks; the
    #                                            served request of a trainable without `serving`)

    epoch_metrics: tuple[str, ...] = ()  # every metric a sweep may optimise (reported each epoch); default: primary
    test_metrics: tuple[str, ...] = ()  # shown in every leaderboard; the first ranks by default
    key_params: tuple[str, ...] = ()  # config keys a leaderboard always shows, e.g. model.sharing
    presets: Mapping[str, BaseModel] = field(default_factory=dict)  # named model-section presets
    dataset_builder: DatasetBuilder | None = None
    predictor: Predictor | None = None
    serving: Serving | None = None  # a logged model's request and response; None: the model's forward on tensors
    paper: PaperReference | None = None
    report_notes: Callable[..., list[str]] | None = None  # (trials' params, dataset root or URI, dataset
    #   fingerprint) -> plain sentences `binsweep report` prints about the sweep, e.g. a limit that the data and the
    #   architecture set together (BAST-SP on mirror-symmetric data)
    commands: Callable[[PlatformServices], list[Command]] | None = None
    initialisation: Callable[[BaseModel], Mapping[str, str]] | None = None  # config -> how each part that can start
    #   from pretrained weights starts, in words, e.g. {"image": "random init (no model.image_weights)"}: printed by
    #   `binsweep train` and tagged on its MLflow run (binsweep.init.<part>); reads the config only, opens no file

    @property
    def reported_metrics(self) -> tuple[str, ...]:
        return self.epoch_metrics or (self.primary_metric, "val_loss", "train_loss")

    @property
    def default_test_metric(self) -> str:
        if self.test_metrics:
            return self.test_metrics[0]
        return "test_" + self.primary_metric[4:] if self.primary_metric.startswith("val_") else self.primary_metric

    def data_root(self, config: BaseModel) -> Path | str | None:
        """The config's data.root (a folder, or a URI such as s3://bucket/prefix), or None for a trainable without a
        dataset."""
        from trainables import datastore

        data = getattr(config, "data", None)
        root = getattr(data, "root", None)
        if not root:
            return None
        return root if datastore.is_uri(root) else Path(root)


def register_trainable(spec: TrainableSpec, source: str = "registered at run time") -> TrainableSpec:
    _discover()
    if spec.name in _REGISTRY:
        raise ValueError(f"a trainable named {spec.name!r} is already registered ({trainable_source(spec.name)})")
    _REGISTRY[spec.name] = spec
    _RUNTIME_SOURCES[spec.name] = source
    return spec


def unregister_trainable(name: str) -> None:
    """Drop a trainable registered at run time (tests)."""
    _REGISTRY.pop(name, None)
    _RUNTIME_SOURCES.pop(name, None)


_ENTRY_POINTS: dict[str, importlib.metadata.EntryPoint] | None = None


def _discover() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed trainables' entry points (not yet imported)."""
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        _ENTRY_POINTS = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return _ENTRY_POINTS


def known_trainables() -> list[str]:
    return sorted(set(_discover()) | set(_REGISTRY))


def _load(name: str) -> None:
    ep = _discover()[name]
    spec = ep.load()
    if not isinstance(spec, TrainableSpec):
        raise TypeError(f"entry point {name} = {ep.value!r} in group {ENTRY_POINT_GROUP} is a "
                        f"{type(spec).__name__}, not a trainables.registry.TrainableSpec")
    if spec.name != name:
        raise ValueError(f"entry point {name} = {ep.value!r} names a trainable called {spec.name!r}; the entry "
                         "point's name and TrainableSpec.name must agree")
    _REGISTRY[name] = spec


def _not_found(name: str) -> TrainableNotFoundError:
    return TrainableNotFoundError(f"unknown trainable {name!r}; known trainables: "
                                  f"{', '.join(known_trainables()) or 'none (is binsweep installed?)'}")


def get_trainable(name: str) -> TrainableSpec:
    if name not in _REGISTRY and name in _discover():
        _load(name)
    if name not in _REGISTRY:
        raise _not_found(name)
    return _REGISTRY[name]


def spec_reference(spec: TrainableSpec) -> str:
    """"module:attribute" holding `spec`, so that a logged model finds its trainable by importing it (no installed
    entry points needed where it is served): the entry point's target, else a module-level name bound to the spec (a
    trainable registered at run time from an importable module). ValueError when there is none (a spec built in
    __main__ or inside a function)."""
    import sys

    ep = _discover().get(spec.name)
    if ep is not None and spec.name not in _RUNTIME_SOURCES:
        return ep.value
    for module_name, module in list(sys.modules.items()):
        if module_name == "__main__" or module is None:
            continue
        try:
            found = next((attr for attr, value in list(vars(module).items()) if value is spec), None)
        except TypeError:  # an object in sys.modules without a __dict__
            continue
        if found is not None:
            return f"{module_name}:{found}"
    raise ValueError(f"trainable {spec.name!r}: its TrainableSpec is not a module-level name of an importable module, "
                     "so a logged model could not find it; define SPEC in a module (and name it in the "
                     f"{ENTRY_POINT_GROUP} entry points)")


def trainable_source(name: str) -> str:
    """Where a trainable comes from, without importing it (so a broken one can be named too): its distribution and
    version for an entry point, else where it was registered at run time."""
    if name in _RUNTIME_SOURCES:
        return _RUNTIME_SOURCES[name]
    ep = _discover().get(name)
    if ep is None:
        raise _not_found(name)
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else ep.value
