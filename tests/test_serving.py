"""Servable models: every model is logged as an MLflow pyfunc of weights, config and the trainable's code
(sweep_platform.model_package), taking what a user has and returning what they want.

The slow tests log a tiny BAST trained for two epochs on a small KEMAR dataset through `evaluate_and_log` (what every
trial and `binsweep train` run), and a tiny untrained binauralizer through `tracking.log_model`; then load them with
`mlflow.pyfunc` in a fresh Python process that knows only the tracking URI, and serve them with `mlflow models serve`
as real processes, whose answers must be those of `binsweep predict` and of the binauralizer's own inference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pydantic import BaseModel

from sweep_platform import model_package, model_store, names, tracking
from sweep_platform.cli import app
from trainables.registry import TrainableSpec, get_trainable, register_trainable, spec_reference, unregister_trainable

TINY_BAST = {"preset": "bast_tiny", "embed_dim": 32, "heads": 2, "dim_head": 16, "mlp_dim": 64, "patch_stride": 12}
TINY_BINAURAL = {"preset": "binaural_tiny", "backbone": "test_vit", "modalities": "audio+image", "clip_seconds": 0.31}
MLFLOW_CLI = str(Path(sys.executable).parent / "mlflow")


class LinearConfig(BaseModel):
    width: int = 3


def _unused(*args, **kwargs):
    raise AssertionError("not used by these tests")


# A trainable without Serving, registered at run time from this module: served as its module's forward on tensors
LINEAR = TrainableSpec(name="linear_forward", description="a linear layer", config_type=LinearConfig,
                       build_model=lambda c: torch.nn.Linear(2, c.width), recipe=_unused, primary_metric="val_err",
                       mode="min", evaluate=_unused, example_input=lambda c: torch.zeros(1, 2))


def circular_gap(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def model_dir(model_uri: str) -> Path:
    """The LoggedModel's directory in the embedded store (file artifacts)."""
    import mlflow

    location = mlflow.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    return Path(urlparse(location).path)


def new_run(trainable: str, config) -> str:
    from mlflow.entities import Param

    c = tracking.client()
    exp = tracking.ensure_experiment(f"binsweep-{trainable}")
    run_id = c.create_run(exp, run_name=f"serving-{trainable}", tags={names.TAG_TRAINABLE: trainable}).info.run_id
    c.log_batch(run_id, params=[Param(k, v) for k, v in tracking.params_of(config.model_dump(mode="json")).items()])
    return run_id


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bast(tmp_path_factory):
    """A tiny BAST trained two epochs, checkpointed, scored on the test split and logged by evaluate_and_log, then
    registered as bast-serve@champion."""
    import mlflow

    from sweep_platform.training import evaluate_and_log
    from test_leaderboard import _train
    from trainables.bast import BASTConfig
    from trainables.localization.builder import LocalizationBuildConfig, build
    from trainables.loop import save_checkpoint

    root = Path(os.environ["BINSWEEP_HOME"]) / "data" / "loc_serving"
    build(LocalizationBuildConfig(generated_sounds=12, azimuths=tuple(range(0, 360, 45)), environments=("anechoic",),
                                  test_fraction=0.25, shard_rows=256, seed=1), root)
    config = BASTConfig.model_validate({"model": TINY_BAST, "data": {"root": str(root)},
                                        "train": {"epochs": 2, "batch_size": 24, "lr": 3e-3, "precision": "fp32"}})
    model = _train(config.model_dump(mode="json"), epochs=2, seed=0)
    checkpoint = tmp_path_factory.mktemp("bast_ckpt")
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(checkpoint, model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1),
                    epoch=2, seed=0, trainable="bast", config=config.model_dump(mode="json"), metrics={})
    run_id = new_run("bast", config)
    t0 = time.perf_counter()
    evaluated = evaluate_and_log(get_trainable("bast"), checkpoint, run_id, device="cpu")
    print(f"evaluate_and_log (test split, plots, model) {time.perf_counter() - t0:.1f} s")
    assert evaluated.model_uri and evaluated.model_uri.startswith("models:/m-")
    version = mlflow.register_model(evaluated.model_uri, "bast-serve")
    tracking.client().set_registered_model_alias("bast-serve", "champion", str(version.version))
    return SimpleNamespace(model=model, config=config, root=root, run_id=run_id, uri=evaluated.model_uri,
                           alias="models:/bast-serve@champion", evaluated=evaluated)


@pytest.fixture(scope="module")
def clips(bast, tmp_path_factory):
    """Three held-out test recordings as 16 kHz stereo WAVs (what `binsweep demo` writes), at three azimuths."""
    from sweep_platform.demo import write_test_clips

    return [c.path for c in write_test_clips(bast.root, tmp_path_factory.mktemp("clips"), 3)]


@pytest.fixture(scope="module")
def binaural(tmp_path_factory):
    """A tiny untrained audio+image binauralizer logged with tracking.log_model, and a mono WAV and a frame PNG."""
    from trainables.binaural import BinauralConfig

    spec = get_trainable("binaural")
    config = BinauralConfig.model_validate({"model": TINY_BINAURAL, "data": {"root": "data/none"}})
    torch.manual_seed(0)
    model = spec.build_model(config).eval()
    run_id = new_run("binaural", config)
    t0 = time.perf_counter()
    uri = tracking.log_model(run_id, spec, model, config)
    print(f"binaural log_model {time.perf_counter() - t0:.1f} s")
    assert uri and uri.startswith("models:/m-")
    d = tmp_path_factory.mktemp("binaural_inputs")
    t = np.arange(int(0.7 * 16000)) / 16000  # 0.7 s: several windows
    mono = (0.2 * np.sin(2 * np.pi * (300 + 400 * t) * t) * np.exp(-2 * t)).astype(np.float32)
    wav = d / "mono.wav"
    sf.write(wav, mono, 16000, subtype="FLOAT")
    y, x = np.mgrid[0:48, 0:96]
    frame = np.stack([x * 2, y * 4, np.where((x > 60) & (x < 80), 255, 30)], axis=-1).astype(np.uint8)
    png = d / "frame.png"
    Image.fromarray(frame).save(png)  # 48 x 96: the model's 64 x 128 by resizing
    return SimpleNamespace(model=model, config=config, uri=uri, wav=wav, png=png)


class Server:
    """`mlflow models serve -m URI --env-manager local` of this venv on a free loopback port, in its own session."""

    def __init__(self, uri: str, log: Path):
        from s3_server import free_port

        self.port, self.uri, self.log = free_port(), uri, log
        self.url = f"http://127.0.0.1:{self.port}"
        self._out = open(log, "wb")
        self.proc = subprocess.Popen([MLFLOW_CLI, "models", "serve", "-m", uri, "--env-manager", "local",
                                      "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
                                          # it execs `uvicorn` by name: this venv's, as in an activated venv
                                          "PATH": f"{Path(MLFLOW_CLI).parent}{os.pathsep}{os.environ['PATH']}"})
        self.t0 = time.perf_counter()

    def wait(self, timeout_s: float = 180) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/ping", timeout=2).status == 200:
                    return time.perf_counter() - self.t0
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`mlflow models serve -m {self.uri}` did not answer /ping:\n"
                                     + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.5)

    def invoke(self, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.url}/invocations", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as res:
                return res.status, json.loads(res.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # its own session: the CLI and the uvicorn it started
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module")
def servers(bast, binaural, tmp_path_factory):
    """Both models served at once (they start in parallel): BAST by its alias, the binauralizer by its model id."""
    logs = tmp_path_factory.mktemp("serve_logs")
    started = {"bast": Server(bast.alias, logs / "bast.log"), "binaural": Server(binaural.uri, logs / "binaural.log")}
    try:
        for name, server in started.items():
            print(f"{name}: /ping after {server.wait():.1f} s")
        yield started
    finally:
        for server in started.values():
            server.stop()


def binsweep_predict(model_uri: str, files: list[Path]) -> dict[str, float]:
    """What `binsweep predict MODEL FILE... --format json` prints: path -> azimuth_deg."""
    res = CliRunner().invoke(app, ["predict", model_uri, *map(str, files), "--format", "json"])
    assert res.exit_code == 0, res.output
    return {row["path"]: row["azimuth_deg"] for row in json.loads(res.stdout)}


# ------------------------------------------------------------------------------------------------ fast


def test_spec_reference_code_paths_and_pinned_requirements():
    import importlib.metadata

    import trainables

    bast, binaural = get_trainable("bast"), get_trainable("binaural")
    assert spec_reference(bast) == "trainables.bast:SPEC" and spec_reference(binaural) == "trainables.binaural:SPEC"
    assert model_package.code_paths("trainables.bast:SPEC") == [str(Path(trainables.__file__).parent)]
    pins = model_package.requirements(bast)
    assert f"torch=={importlib.metadata.version('torch')}" in pins
    assert f"mlflow=={importlib.metadata.version('mlflow')}" in pins and any(p.startswith("scipy==") for p in pins)
    assert {p.split("==")[0] for p in model_package.requirements(binaural)} >= {"torch", "timm", "pillow"}


def test_localizer_serving_takes_the_centre_and_names_bad_requests():
    from trainables.localization.predict import SERVING, azimuths, centre

    spec = get_trainable("bast")
    config = spec.config_type.model_validate({"model": TINY_BAST})
    torch.manual_seed(0)
    model = spec.build_model(config).eval()
    waves = np.random.default_rng(1).standard_normal((3, 2, 9000)).astype(np.float32) * 0.1
    got = SERVING.predict(model, config, waves, "cpu")
    assert got.shape == (3,) and ((0 <= got) & (got < 360)).all()
    np.testing.assert_allclose(got, azimuths(model, centre(waves)), atol=1e-4)
    with pytest.raises(ValueError, match=r"stereo waveforms \[batch, 2, samples\]"):
        SERVING.predict(model, config, waves[:, :1], "cpu")
    with pytest.raises(ValueError, match="at least 8000"):
        SERVING.predict(model, config, waves[:, :, :100], "cpu")


def test_a_model_pickled_by_an_older_binsweep_still_loads():
    """Models logged before this format (mlflow.pytorch, pickle) load through model_store as before."""
    import mlflow
    import mlflow.pytorch

    spec = get_trainable("bast")
    config = spec.config_type.model_validate({"model": TINY_BAST})
    torch.manual_seed(3)
    model = spec.build_model(config).eval()
    run_id = new_run("bast", config)
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    with mlflow.start_run(run_id=run_id):
        uri = mlflow.pytorch.log_model(model, name="bast", serialization_format="pickle", pip_requirements=[]).model_uri
    loaded, loaded_config = model_store.load_model(uri)
    assert loaded_config == config  # from the run's params, as before
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_trainable_without_serving_is_served_as_its_forward():
    import mlflow

    register_trainable(LINEAR)
    try:
        assert spec_reference(LINEAR) == f"{__name__}:LINEAR"  # found as a module-level name, no entry point
        config = LinearConfig(width=4)
        torch.manual_seed(0)
        model = LINEAR.build_model(config).eval()
        uri = tracking.log_model(new_run("linear_forward", config), LINEAR, model, config)
        assert uri is not None
        x = np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32)
        served = mlflow.pyfunc.load_model(uri)
        with torch.no_grad():
            np.testing.assert_allclose(served.predict(x), model(torch.from_numpy(x)).numpy(), rtol=1e-6)
        assert served.metadata.get_input_schema().inputs[0].shape == (-1, 2)
        loaded, loaded_config = model_store.load_model(uri)
        assert loaded_config == config and torch.equal(loaded.weight, model.weight)
        assert (model_dir(uri) / "code" / f"{__name__}.py").is_file()  # the spec's module travels with the model
    finally:
        unregister_trainable(LINEAR.name)


def test_a_spec_that_no_module_holds_is_not_logged_and_says_why(caplog):
    spec = TrainableSpec(name="nowhere", description="", config_type=LinearConfig,
                         build_model=lambda c: torch.nn.Linear(2, c.width), recipe=_unused, primary_metric="val_err",
                         mode="min", evaluate=_unused, example_input=lambda c: torch.zeros(1, 2))
    register_trainable(spec)
    try:
        config = LinearConfig()
        assert tracking.log_model(new_run("nowhere", config), spec, spec.build_model(config), config) is None
        assert "model nowhere not logged" in caplog.text and "not a module-level name" in caplog.text
    finally:
        unregister_trainable(spec.name)


# ------------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_model_directory_holds_weights_config_code_signature_and_example(bast):
    import importlib.metadata

    from mlflow.models import Model

    d = model_dir(bast.uri)
    files = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert {"MLmodel", "served_model.py", "artifacts/weights.pt", "artifacts/binsweep.json", "requirements.txt",
            "input_example.json", "serving_input_example.json", "code/trainables/bast/model.py"} <= files
    # nothing pickled but tensors: no python_model.pkl, no pickled torch module, no platform code
    assert not [f for f in files if f.endswith((".pkl", ".pth")) or f.startswith(("data/", "code/sweep_platform"))]
    torch.load(d / "artifacts/weights.pt", weights_only=True)
    info = json.loads((d / "artifacts/binsweep.json").read_text())
    assert info["spec"] == "trainables.bast:SPEC" and info["trainable"] == "bast"
    assert info["config"] == bast.config.model_dump(mode="json")
    requirements = (d / "requirements.txt").read_text().split()
    assert f"torch=={importlib.metadata.version('torch')}" in requirements
    mlmodel = Model.load(str(d))
    flavor = mlmodel.flavors["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor  # models from code: nothing to unpickle
    signature = json.loads(json.dumps(mlmodel.signature.to_dict()))  # inputs, outputs: JSON strings
    assert json.loads(signature["inputs"]) == [{"type": "tensor",
                                                "tensor-spec": {"dtype": "float32", "shape": [-1, 2, -1]}}]
    assert json.loads(signature["outputs"])[0]["tensor-spec"] == {"dtype": "float64", "shape": [-1]}
    assert mlmodel.saved_input_example_info["serving_input_path"] == "serving_input_example.json"
    example = np.asarray(json.loads((d / "serving_input_example.json").read_text())["inputs"])
    assert example.shape == (1, 2, 8000)
    assert "16000 Hz" in mlmodel.metadata["inputs"] and "azimuth in degrees" in mlmodel.metadata["output"]


@pytest.mark.slow
def test_test_metrics_are_the_logged_models_metrics(bast):
    import mlflow

    logged = mlflow.get_logged_model(bast.uri.removeprefix("models:/"))
    assert logged.source_run_id == bast.run_id
    on_model = {m.key: m.value for m in logged.metrics or []}
    on_run = tracking.client().get_run(bast.run_id).data.metrics
    assert on_model["test_ad_deg"] == pytest.approx(bast.evaluated.metrics["test_ad_deg"])
    assert on_run["test_ad_deg"] == pytest.approx(on_model["test_ad_deg"])
    assert {k for k in bast.evaluated.metrics if tracking.is_number(bast.evaluated.metrics[k])} <= set(on_model)
    assert all(m.run_id == bast.run_id for m in logged.metrics)


FRESH = """
import json, sys
import mlflow, numpy as np, soundfile as sf
model = mlflow.pyfunc.load_model(sys.argv[1])
import trainables
waves = np.stack([sf.read(f, dtype="float32", always_2d=True)[0].T for f in sys.argv[2:]])
print(json.dumps({"azimuths": model.predict(waves).tolist(), "trainables": trainables.__file__}))
"""


@pytest.mark.slow
def test_a_fresh_process_loads_the_model_by_its_alias_and_predicts_like_binsweep_predict(bast, clips, tmp_path):
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", FRESH, bast.alias, *map(str, clips)], cwd=tmp_path, timeout=240,
                         capture_output=True, text=True,
                         env={"MLFLOW_TRACKING_URI": tracking.tracking_uri(), "PATH": os.environ["PATH"]})
    print(f"fresh process: load + predict {time.perf_counter() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # the trainable's code came from the model directory, not from this checkout
    assert "/code/trainables/" in out["trainables"], out["trainables"]
    assert not Path(out["trainables"]).is_relative_to(Path(__file__).resolve().parents[1])
    expected = binsweep_predict(bast.alias, clips)
    for path, got in zip(clips, out["azimuths"]):
        assert circular_gap(got, expected[str(path)]) < 1e-3, (path, got, expected[str(path)])


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_binsweep_predict(servers, bast, clips):
    server = servers["bast"]
    waves = [sf.read(str(p), dtype="float32", always_2d=True)[0].T.tolist() for p in clips]  # [2, 8000] each
    t0 = time.perf_counter()
    status, body = server.invoke({"inputs": waves})
    print(f"POST /invocations, {len(waves)} clips: {time.perf_counter() - t0:.2f} s")
    assert status == 200, body
    expected = binsweep_predict(bast.uri, clips)
    assert len(body["predictions"]) == len(clips)
    for path, got in zip(clips, body["predictions"]):
        assert circular_gap(got, expected[str(path)]) < 1e-3, (path, got, expected[str(path)])
    # the model's own input example is a valid request
    example = json.loads((model_dir(bast.uri) / "serving_input_example.json").read_text())
    assert server.invoke(example)[0] == 200
    # a request the model cannot use is a 400 with the trainable's reason
    status, body = server.invoke({"inputs": [[w[0][:100], w[1][:100]] for w in waves]})
    assert status == 400 and "at least 8000" in body.get("message", ""), body


@pytest.mark.slow
def test_mlflow_models_serve_binauralizes_like_the_trainables_inference(servers, binaural, tmp_path):
    from trainables.binaural.inference import predict_clip, read_image

    mono = sf.read(str(binaural.wav), dtype="float32")[0]
    frame = np.asarray(Image.open(binaural.png).convert("RGB"))  # [48, 96, 3]: what a user has
    status, body = servers["binaural"].invoke({"inputs": {"mono": [mono.tolist()], "frame": [frame.tolist()]}})
    assert status == 200, body
    ears = np.asarray(body["predictions"])
    assert ears.shape == (1, 2, len(mono))
    image, _ = read_image(binaural.png, binaural.config.model.image_size)
    own = predict_clip(binaural.model, 2.0 * mono.astype(np.float64), image[None], None, None, sample_rate=16000)
    np.testing.assert_allclose(ears[0], own, atol=1e-4)
    assert not np.allclose(ears[0, 0], ears[0, 1])  # two different ears
    example = json.loads((model_dir(binaural.uri) / "serving_input_example.json").read_text())
    assert set(example["inputs"]) == {"mono", "frame"} and servers["binaural"].invoke(example)[0] == 200
    # and `binsweep binauralize` on the logged model (weights-only load) writes the same, within 16-bit rounding
    out = tmp_path / "out.wav"
    res = CliRunner().invoke(app, ["binauralize", binaural.uri, str(binaural.wav), "--image", str(binaural.png),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    written, rate = sf.read(str(out))
    assert rate == 16000 and np.abs(written.T - own).max() < 1e-3
    # the MLmodel describes the request: named tensors, uint8 frames of any size
    mlmodel = yaml.safe_load((model_dir(binaural.uri) / "MLmodel").read_text())
    inputs = {t["name"]: t["tensor-spec"] for t in json.loads(mlmodel["signature"]["inputs"])}
    assert inputs == {"mono": {"dtype": "float32", "shape": [-1, -1]},
                      "frame": {"dtype": "uint8", "shape": [-1, -1, -1, 3]}}
    assert (model_dir(binaural.uri) / "code" / "trainables" / "binaural" / "inference.py").is_file()
