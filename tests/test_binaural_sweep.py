"""The binauralization trainable through the whole platform, as BAST goes: a `binsweep sweep` of two trials on Ray
Train (the shared per-worker loop) logged to SQLite MLflow, its artifacts (predicted versus true difference
spectrograms, attention maps per decoder layer over the frame, predicted binaural WAVs), the leaderboard ranked by
test STFT distance, promotion into the registry, and `binsweep binauralize models:/...@champion`.

A small generated dataset (48 scenes, 64x128 frames) and timm's test_vit keep it to about a minute on 2 cores.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image
from typer.testing import CliRunner

from sweep_platform import paths, tracking
from sweep_platform.cli import app
from trainables.binaural.data import read_clips

pytestmark = pytest.mark.slow
runner = CliRunner()
NAME = "bin-sweep"
MODEL = "binaural_t"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = paths.home() / "data" / "binaural_sweep"
    sweep = {
        "name": "bin_tiny", "trainable": "binaural", "dataset": "data/binaural_sweep", "metric": "val_stft_dist",
        # built by the sweep through the binaural trainable's DatasetBuilder (`binsweep data binaural`'s options)
        "dataset_build": {"scenes": 48, "clip_seconds": 0.63, "test_clip_seconds": 1.0, "seed": 2,
                          "scene": {"max_sources": 1, "object_size_m": 1.0}},
        "trials": 2, "scheduler": {"type": "none"}, "concurrency": 2, "sampler": {"type": "grid"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "base": {"model": {"preset": "binaural_tiny", "backbone": "test_vit", "modalities": "audio+image"},
                 "train": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3, "weight_decay": 0.0, "precision": "fp32"}},
        "space": {"loss.kind": {"choice": ["diff", "2ch"]}},
    }
    path = tmp_path_factory.mktemp("binsweep") / "bin_tiny.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    res = runner.invoke(app, ["sweep", str(path), "--name", NAME])
    return root, res


def _children():
    c = tracking.client()
    exp = c.get_experiment_by_name("binsweep-binaural")
    parent = c.search_runs([exp.experiment_id], filter_string=f"tags.`binsweep.sweep_id` = '{NAME}' and "
                           "tags.`binsweep.role` = 'sweep'")
    assert len(parent) == 1
    return parent[0], c.search_runs([exp.experiment_id],
                                    filter_string=f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")


def test_binaural_sweep_trains_on_ray_and_logs_every_trial(swept):
    _, res = swept
    assert res.exit_code == 0, res.output
    parent, children = _children()
    assert parent.data.tags["binsweep.state"] == "finished" and parent.data.tags["binsweep.trainable"] == "binaural"
    assert sorted(r.data.params["loss.kind"] for r in children) == ["2ch", "diff"]
    c = tracking.client()
    for run in children:
        m = run.data.metrics
        assert run.data.tags["binsweep.state"] == "completed"
        # audio+image without weights: the trial's run says the image ViT starts random (and builds no depth net)
        assert run.data.tags["binsweep.init.image"].startswith("random init"), run.data.tags
        assert "binsweep.init.depth" not in run.data.tags
        for key in ("train_loss", "val_loss", "val_stft_dist", "val_env_dist", "samples_per_s"):
            assert [h.step for h in c.get_metric_history(run.info.run_id, key)] == [1, 2], key
        assert m["test_stft_dist"] > 0 and m["test_env_dist"] > 0 and "test_mono_stft_dist" in m
        files = {a.path for a in c.list_artifacts(run.info.run_id, "evaluation")}
        assert any(f.endswith("_diff_spec.png") for f in files), files
        assert any(f.endswith("_attention.png") for f in files), files
        assert any(f.endswith("_pred.wav") for f in files), files
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                             filter_string=f"source_run_id='{run.info.run_id}'")
        assert len(models) == 1


def test_leaderboard_ranks_binaural_trials_by_validation_with_test_beside(swept):
    res = runner.invoke(app, ["leaderboard", "--sweep", NAME, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["metric"] == "val_stft_dist"
    assert rows[0]["value"] <= rows[1]["value"] and all("test_stft_dist" in r["metrics"] for r in rows)
    res = runner.invoke(app, ["leaderboard", "--sweep", NAME, "--format", "json", "--metric", "test_stft_dist"])
    rows = json.loads(res.output)
    assert rows[0]["metric"] == "test_stft_dist" and rows[0]["value"] <= rows[1]["value"]


def test_promote_then_binauralize_with_the_champion(swept, tmp_path):
    root, _ = swept
    res = runner.invoke(app, ["promote", "--sweep", NAME, "--model-name", MODEL])
    assert res.exit_code == 0, res.output
    assert f"promoted: {MODEL}@champion -> version 1" in res.output
    version = tracking.client().get_model_version_by_alias(MODEL, "champion")
    assert version.tags["binsweep.trainable"] == "binaural" and "test_stft_dist" in version.tags

    clip = read_clips(root, "test", limit=1)[0]
    wav, frame, out = tmp_path / "mono.wav", tmp_path / "frame.png", tmp_path / "binaural.wav"
    sf.write(str(wav), ((clip.wave[0] + clip.wave[1]) / 2).astype(np.float32), clip.sample_rate)
    Image.fromarray(clip.frames[0].transpose(1, 2, 0)).save(frame)
    res = runner.invoke(app, ["binauralize", f"models:/{MODEL}@champion", str(wav), "--image", str(frame),
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    stereo, rate = sf.read(str(out))
    assert rate == 16000 and stereo.shape == (len(clip.wave[0]), 2)
    assert not np.allclose(stereo[:, 0], stereo[:, 1])  # a difference was predicted, not mono copied twice
