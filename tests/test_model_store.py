"""model_store.load_model and prediction on checkpoint folders of tiny trainables registered at run time: the model
and its config come back, the trainable is read from the folder, and what cannot be loaded or predicted says why.
(MLflow URIs: test_predict.py and test_promote.py.)"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from typer.testing import CliRunner

from sweep_platform import model_store
from sweep_platform.cli import app
from sweep_platform.leaderboard import format_value
from sweep_platform.prediction import NoPredictorError, predict_files
from trainables.registry import InputFileError, Predictor, TrainableSpec, register_trainable, unregister_trainable


class TinyModelConfig(BaseModel):
    hidden: int = 4


class TinyConfig(BaseModel):
    model: TinyModelConfig = TinyModelConfig()


def tiny_spec(name: str, **fields) -> TrainableSpec:
    """A trainable with a linear model; only what loading and listing need is real."""

    def unused(*args, **kwargs):
        raise AssertionError("not used by these tests")

    return TrainableSpec(name=name, description="a test trainable", config_type=TinyConfig,
                         build_model=lambda c: torch.nn.Linear(2, c.model.hidden), recipe=unused,
                         primary_metric="val_err", mode="min", evaluate=unused,
                         example_input=lambda c: torch.zeros(1, 2), **fields)


@contextlib.contextmanager
def registered(spec: TrainableSpec):
    register_trainable(spec)
    try:
        yield spec
    finally:
        unregister_trainable(spec.name)


def write_checkpoint(folder: Path, trainable: str, config: TinyConfig) -> torch.nn.Module:
    from trainables.loop import save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(2, config.model.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    folder.mkdir(parents=True)
    save_checkpoint(folder, model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1), epoch=1,
                    seed=0, trainable=trainable, config=config.model_dump(mode="json"), metrics={"val_err": 1.0})
    return model


@pytest.fixture
def no_predictor(tmp_path):
    with registered(tiny_spec("tiny_store")) as spec:
        folder = tmp_path / "checkpoint_000001"
        model = write_checkpoint(folder, spec.name, TinyConfig(model=TinyModelConfig(hidden=3)))
        yield folder, model


def test_load_model_on_a_checkpoint_folder_returns_the_model_and_its_config(no_predictor):
    folder, saved = no_predictor
    model, config = model_store.load_model(str(folder))  # the trainable comes from the folder's config.json
    assert isinstance(config, TinyConfig) and config.model.hidden == 3
    assert not model.training and torch.equal(model.weight, saved.weight)
    model, config = model_store.load_model(str(folder), "tiny_store", "cpu")
    assert config.model.hidden == 3
    assert model_store.spec_of(str(folder)).name == "tiny_store"
    with pytest.raises(model_store.ModelLoadError, match="it is a tiny_store checkpoint, not bast"):
        model_store.load_model(str(folder), "bast")


def test_what_is_not_a_model_says_so(tmp_path):
    with pytest.raises(model_store.ModelLoadError, match="neither a checkpoint folder nor a model URI"):
        model_store.load_model(str(tmp_path / "nope"))
    with pytest.raises(model_store.ModelLoadError, match=r"not a binsweep checkpoint folder \(no state.pt\)"):
        model_store.load_model(str(tmp_path))
    (tmp_path / "state.pt").write_bytes(b"not a pickle\x00")
    (tmp_path / "config.json").write_text('{"trainable": "bast", "config": {}}')
    with pytest.raises(model_store.ModelLoadError, match=f"cannot load model {tmp_path}: UnpicklingError"):
        model_store.load_model(str(tmp_path))


def test_predict_with_a_trainable_without_predictor_is_a_clear_error(no_predictor, tmp_path):
    folder, _ = no_predictor
    wav = tmp_path / "x.wav"
    wav.write_bytes(b"")
    with pytest.raises(NoPredictorError, match="trainable 'tiny_store' .* has no predictor") as exc:
        predict_files(str(folder), [wav])
    assert "tiny_store adds no commands either" in exc.value.hint and "model_store.load_model" in exc.value.hint
    res = CliRunner().invoke(app, ["predict", str(folder), str(wav)])
    assert res.exit_code == 2 and "has no predictor" in res.output, res.output


def test_predict_rows_are_the_predictors_values_or_the_files_error(tmp_path):
    def predict_file(model, config, path, device):
        if path.suffix != ".txt":
            raise InputFileError(f"{path}: not a .txt file")
        with torch.no_grad():
            out = model(torch.tensor([[float(path.read_text()), 0.0]]))[0]
        return {"first": float(out[0]), "width": config.model.hidden}

    spec = tiny_spec("tiny_predict", predictor=Predictor(predict_file=predict_file, inputs="a number in a .txt"))
    with registered(spec):
        folder = tmp_path / "checkpoint_000001"
        saved = write_checkpoint(folder, spec.name, TinyConfig())
        good, bad = tmp_path / "one.txt", tmp_path / "one.wav"
        good.write_text("1.5")
        rows = predict_files(str(folder), [good, bad])
        expected = float(saved(torch.tensor([[1.5, 0.0]]))[0, 0].detach())
        assert rows[0].row() == {"path": str(good), "first": pytest.approx(expected), "width": 4}
        assert rows[1].row() == {"path": str(bad), "error": f"{bad}: not a .txt file"}
        res = CliRunner().invoke(app, ["predict", str(folder), str(good), str(bad)])
        assert res.exit_code == 2, res.output
        assert res.stdout.split() == [str(good), format_value(expected), "4"]
        assert f"{bad}: not a .txt file" in res.stderr
