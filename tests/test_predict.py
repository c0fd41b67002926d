"""`binsweep predict models:/NAME@ALIAS FILE.wav ...` on stereo WAVs rendered from the test split of the sweep world's
dataset, written with soundfile; bad files (mono, too short) are named with exit code 2 while good files are still
predicted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly
from typer.testing import CliRunner

from sweep_platform import tracking
from sweep_platform.cli import app
from trainables.localization.predict import CLIP_SAMPLES, ClipError, read_clip
from test_leaderboard import sweep_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world():
    return sweep_world()


@pytest.fixture(scope="module")
def champion(world):
    import mlflow

    tracking.client()
    mv = mlflow.register_model(world.sweeps["lb-grid"]["trials"][0].model_uri, "bast-predict")
    tracking.client().set_registered_model_alias("bast-predict", "champion", str(mv.version))
    return "models:/bast-predict@champion"


def rows_at(world, azimuths):
    from trainables.localization import shards
    from trainables.localization.builder import read_split

    table = read_split(world.root, "test")
    waves = shards.read_waves(table)
    az = np.asarray(table.column("azimuth_deg").to_numpy())
    return {a: waves[int(np.flatnonzero(az == a)[0])] for a in azimuths}


def direct_azimuth(model, wave: np.ndarray) -> float:
    from trainables.audio import BinauralFrontEnd

    with torch.no_grad():
        x, y = model.eval()(BinauralFrontEnd()(torch.from_numpy(wave)[None]))[0].tolist()
    return math.degrees(math.atan2(y, x)) % 360


def circular_gap(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def test_predict_prints_azimuths_and_names_bad_files(world, champion, tmp_path):
    rows = rows_at(world, (90, 270))
    left = tmp_path / "left90.wav"
    sf.write(left, rows[90].T, 16000, subtype="PCM_16")
    # the 270° sample at 48 kHz, padded with 0.25 s of silence each side: resampled back, the centre 0.5 s is it
    up = resample_poly(rows[270], 3, 1, axis=1)
    pad = np.zeros((2, 12000), dtype=np.float32)
    right = tmp_path / "right270_48k.wav"
    sf.write(right, np.concatenate([pad, up, pad], axis=1).T, 48000, subtype="FLOAT")
    mono = tmp_path / "mono.wav"
    sf.write(mono, rows[90][0], 16000)
    short = tmp_path / "short.wav"
    sf.write(short, rows[90][:, :4800].T, 16000)

    res = CliRunner().invoke(app, ["predict", champion, str(left), str(mono), str(right), str(short)])
    assert res.exit_code == 2, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2, res.stdout
    got = {line.split()[0]: float(line.split()[1]) for line in lines}
    assert set(got) == {str(left), str(right)} and all(0 <= v < 360 for v in got.values())
    assert circular_gap(got[str(left)], direct_azimuth(world.strong, rows[90])) < 0.5
    assert circular_gap(got[str(right)], direct_azimuth(world.strong, rows[270])) < 3
    assert f"{mono}: mono; a binaural recording must be stereo" in res.stderr
    assert f"{short}: 0.300 s long; at least 0.5 s is needed" in res.stderr


def test_predict_all_good_exits_zero_and_bad_model_uri_is_clear(world, champion, tmp_path):
    wav = tmp_path / "front.wav"
    sf.write(wav, rows_at(world, (0,))[0].T, 16000)
    res = CliRunner().invoke(app, ["predict", champion, str(wav)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["predict", "models:/bast-predict@nobody", str(wav)])
    assert res.exit_code == 2 and "cannot load model models:/bast-predict@nobody" in res.output


def test_load_model_from_mlflow_returns_the_config_of_its_run(world, champion):
    from sweep_platform import model_store

    logged = world.sweeps["lb-grid"]["trials"][0].model_uri  # models:/m-..., the run's LoggedModel
    for uri in (champion, logged):
        model, config = model_store.load_model(uri)
        assert (config.model.sharing, config.model.integration, config.loss.name) == ("NSP", "sub", "hybrid")
        assert config.train.lr == 3e-3 and config.model.embed_dim == 32
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), world.strong.state_dict().values()))
    assert model_store.spec_of(champion).name == "bast"
    with pytest.raises(model_store.ModelLoadError, match="it is a bast model, not binaural"):
        model_store.load_model(champion, "binaural")


def test_read_clip_takes_the_centre_and_checks_channels(tmp_path):
    n = 16000  # 1 s
    data = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32) / n
    path = tmp_path / "ramp.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    clip = read_clip(path)
    assert clip.shape == (2, CLIP_SAMPLES)
    np.testing.assert_allclose(clip[0], data[4000:12000, 0])
    np.testing.assert_allclose(clip[1], data[4000:12000, 1])  # channel 0 stays left
    quad = tmp_path / "quad.wav"
    sf.write(quad, np.zeros((n, 4), dtype=np.float32), 16000)
    with pytest.raises(ClipError, match="quad.wav: 4 channels"):
        read_clip(quad)
    with pytest.raises(ClipError, match="missing.wav: cannot read it as audio"):
        read_clip(tmp_path / "missing.wav")
