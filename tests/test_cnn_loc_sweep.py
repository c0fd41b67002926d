"""The third trainable through the whole platform with no platform code of its own: the shipped
search_spaces/cnn_loc_smoke.yaml (shrunk to two trials of two epochs, on test_sweep.py's tiny dataset) as a real
`binsweep sweep` on embedded Ray with SQLite MLflow, then `leaderboard`, `report`, `promote` and `predict` through the
CLI, every one of them reading back what the sweep wrote.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweep_platform import names, paths, tracking
from sweep_platform.cli import app
from sweep_platform.demo import write_test_clips
from test_sweep import DATASET_BUILD

pytestmark = pytest.mark.slow
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
NAME = "cnn-smoke"
MODEL = "cnn_loc_t"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    data = yaml.safe_load((REPO / "search_spaces" / "cnn_loc_smoke.yaml").read_text())
    assert data["trainable"] == "cnn_loc"
    data.update({"trials": 2, "concurrency": 2, "dataset": "data/sweep_loc", "dataset_build": DATASET_BUILD,
                 "scheduler": {"type": "none"}, "sampler": {"type": "random", "seed": 3}})
    data["base"].setdefault("train", {})["epochs"] = 2
    path = tmp_path_factory.mktemp("cnn") / "cnn_loc_smoke.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    res = runner.invoke(app, ["sweep", str(path), "--name", NAME, "--no-progress"])
    return path, res


def test_sweep_trains_and_evaluates_every_trial(swept):
    _, res = swept
    assert res.exit_code == 0, res.output
    c = tracking.client()
    exp = c.get_experiment_by_name("binsweep-cnn_loc")
    parent = c.search_runs([exp.experiment_id], filter_string=f"tags.`{names.TAG_SWEEP}` = '{NAME}' and "
                           f"tags.`{names.TAG_ROLE}` = '{names.ROLE_SWEEP}'")
    assert len(parent) == 1
    children = c.search_runs([exp.experiment_id],
                             filter_string=f"tags.`{names.TAG_PARENT}` = '{parent[0].info.run_id}'")
    assert len(children) == 2
    for run in children:
        assert run.data.tags[names.TAG_STATE] == names.COMPLETED
        assert run.data.tags[names.TAG_TRAINABLE] == "cnn_loc"
        assert 0 <= run.data.metrics["test_ad_deg"] <= 180 and run.data.metrics["params_m"] > 0
        assert run.data.params["model.sharing"] in ("SP", "NSP")


def test_leaderboard_and_report_read_it_back(swept, tmp_path):
    res = runner.invoke(app, ["leaderboard", "--sweep", NAME, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    # ranked by the sweep's own metric on validation, the test metric beside it
    assert [r["rank"] for r in rows] == [1, 2] and all(r["metric"] == "val_ad_deg" for r in rows)
    assert all("test_ad_deg" in r["metrics"] for r in rows)
    assert {"model.sharing", "model.integration", "loss.name"} <= set(rows[0]["params"])  # the spec's key_params
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", NAME, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert NAME in out.read_text() and "cnn_loc" in out.read_text()


def test_promote_and_predict_the_champion(swept, tmp_path):
    res = runner.invoke(app, ["promote", "--sweep", NAME, "--model-name", MODEL])
    assert res.exit_code == 0, res.output
    assert str(tracking.client().get_model_version_by_alias(MODEL, "champion").version) == "1"
    clips = write_test_clips(paths.home() / "data" / "sweep_loc", tmp_path, 2)
    res = runner.invoke(app, ["predict", f"models:/{MODEL}@champion", *[str(c.path) for c in clips]])
    assert res.exit_code == 0, res.output
    for clip in clips:
        line = next(ln for ln in res.output.splitlines() if str(clip.path.name) in ln)
        assert 0 <= float(re.findall(r"(\d+\.\d)", line)[-1]) < 360
