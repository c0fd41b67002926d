"""`binsweep promote` and `binsweep models` against a real MLflow registry (SQLite, session BINSWEEP_HOME).

The sweeps come from test_leaderboard.sweep_world(): lb-grid's best trial is a tiny BAST trained for two epochs,
lb-weak's is the same architecture untrained (measurably worse on the test split), lb-corrupt's model file is
junk on disk, lb-otherdata claims another dataset. Each test promotes into its own registered model name, so the
tests do not depend on each other's order.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sweep_platform import tracking
from sweep_platform.cli import app
from test_leaderboard import Trial, make_sweep, sweep_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world():
    return sweep_world()


def promote(*args):
    return CliRunner().invoke(app, ["promote", *args])


def alias_version(name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(tracking.client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def versions(name: str) -> list[str]:
    return sorted(str(v.version) for v in tracking.client().search_model_versions(f"name='{name}'"))


def test_better_challenger_takes_the_alias(world):
    first = promote("--sweep", "lb-weak", "--model-name", "bast-up")
    assert first.exit_code == 0, first.output
    assert "first promotion" in first.output and alias_version("bast-up", "champion") == "1"

    res = promote("--sweep", "lb-grid", "--model-name", "bast-up")
    assert res.exit_code == 0, res.output
    assert "promoted: bast-up@champion -> version 2 (was version 1): lower mean test error" in res.output
    assert "paired wilcoxon signed-rank over 72 test samples" in res.output and "p one-sided" in res.output
    assert alias_version("bast-up", "champion") == "2"
    v2 = tracking.client().get_model_version("bast-up", "2")
    grid = world.sweeps["lb-grid"]["trials"][0]
    assert v2.source == grid.model_uri
    assert v2.tags["binsweep.sweep_id"] == "lb-grid" and v2.tags["binsweep.trial_id"] == "0"
    assert v2.tags["binsweep.run_id"] == grid.run_id
    assert v2.tags["binsweep.dataset_fingerprint"] == world.fingerprint
    assert float(v2.tags["test_ad_deg"]) == pytest.approx(world.strong_test["test_ad_deg"], rel=1e-5)
    assert v2.tags["binsweep.selection_metric"].startswith("val_ad_deg=48")
    assert "wilcoxon p_one_sided=" in v2.tags["binsweep.paired_test"]

    again = promote("--sweep", "lb-grid", "--model-name", "bast-up")  # nothing new: no extra version
    assert again.exit_code == 0 and "already version 2" in again.output and versions("bast-up") == ["1", "2"]


def test_worse_challenger_is_kept_out_until_forced_and_models_lists_it(world):
    assert promote("--sweep", "lb-grid", "--model-name", "bast-down").exit_code == 0
    assert alias_version("bast-down", "champion") == "1"

    res = promote("--sweep", "lb-weak", "--model-name", "bast-down")
    assert res.exit_code == 0, res.output
    assert "kept: bast-down@champion stays on version 1: version 2 is not better" in res.output
    assert alias_version("bast-down", "champion") == "1"
    assert alias_version("bast-down", "challenger") == "2"
    # the statistics say the same: challenger errors are larger, so the one-sided p is large
    line = next(ln for ln in res.output.splitlines() if ln.startswith("paired"))
    assert "difference +" in line

    res = CliRunner().invoke(app, ["models", "--name", "bast-down", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {r["version"]: r for r in json.loads(res.stdout)}
    assert rows["1"]["aliases"] == ["champion"] and rows["2"]["aliases"] == ["challenger"]
    assert rows["1"]["sweep"] == "lb-grid" and rows["2"]["sweep"] == "lb-weak" and rows["2"]["trial"] == "0"
    assert rows["1"]["value"] == pytest.approx(world.strong_test["test_ad_deg"], rel=1e-5)
    assert rows["2"]["value"] == pytest.approx(world.weak_test["test_ad_deg"], rel=1e-5)
    table = CliRunner().invoke(app, ["models", "--name", "bast-down"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "challenger" in table.stdout and "lb-weak" in table.stdout

    forced = promote("--sweep", "lb-weak", "--model-name", "bast-down", "--force")
    assert forced.exit_code == 0, forced.output
    assert "forced (the challenger is not better)" in forced.output
    assert alias_version("bast-down", "champion") == "2"
    assert alias_version("bast-down", "challenger") is None  # moved on: the champion is no longer a challenger
    assert versions("bast-down") == ["1", "2"]


def test_unloadable_model_is_refused_and_the_alias_stays(world):
    assert promote("--sweep", "lb-grid", "--model-name", "bast-corrupt").exit_code == 0
    res = promote("--sweep", "lb-corrupt", "--model-name", "bast-corrupt")
    assert res.exit_code == 2, res.output
    assert "promotion refused: the model of trial 0" in res.output and "failed to load" in res.output
    assert alias_version("bast-corrupt", "champion") == "1"
    assert versions("bast-corrupt") == ["1"]  # the broken model was never registered
    # --force does not override a broken challenger
    assert promote("--sweep", "lb-corrupt", "--model-name", "bast-corrupt", "--force").exit_code == 2
    assert alias_version("bast-corrupt", "champion") == "1"


def test_different_test_split_is_refused_unless_forced(world):
    # lb-otherdata says it was tested on another dataset than the one now at its data.root
    res = promote("--sweep", "lb-otherdata", "--model-name", "bast-data")
    assert res.exit_code == 2, res.output
    assert "is not the one trial 0 was tested on (0000deadbeef)" in res.output and versions("bast-data") == []
    assert promote("--sweep", "lb-otherdata", "--model-name", "bast-data", "--force").exit_code == 0
    assert alias_version("bast-data", "champion") == "1"
    # the champion's test split (0000deadbeef...) is not lb-grid's: no comparison, no move
    res = promote("--sweep", "lb-grid", "--model-name", "bast-data")
    assert res.exit_code == 2, res.output
    assert "different test splits cannot be compared" in res.output and "--force" in res.output
    assert alias_version("bast-data", "champion") == "1" and versions("bast-data") == ["1"]
    forced = promote("--sweep", "lb-grid", "--model-name", "bast-data", "--force")
    assert forced.exit_code == 0, forced.output
    assert alias_version("bast-data", "champion") == "2"


def test_sweep_without_finished_scored_trials_is_refused(world):
    make_sweep("pr-unscored", [Trial("0", {}, "stopped", None, [70.0]), Trial("1", {}, "failed")], world.fingerprint)
    res = promote("--sweep", "pr-unscored", "--model-name", "bast-none")
    assert res.exit_code == 2, res.output
    assert "no finished trial (completed or stopped) with test metrics" in res.output
    assert "0: stopped (no test_ad_deg), 1: failed (no test_ad_deg)" in res.output
    res = promote("--sweep", "no-such-sweep", "--model-name", "bast-none")
    assert res.exit_code == 2 and "no sweep named 'no-such-sweep'" in res.output
    res = CliRunner().invoke(app, ["models", "--name", "bast-none"])
    assert res.exit_code == 2 and "no registered model 'bast-none'" in res.output


def test_paired_test_directions():
    import numpy as np

    from sweep_platform.promotion import paired_test

    rng = np.random.default_rng(0)
    holder = rng.uniform(20, 60, 80)
    better = paired_test(holder - 5 + rng.normal(0, 1, 80), holder)
    worse = paired_test(holder + 5 + rng.normal(0, 1, 80), holder)
    assert better["mean_difference"] < 0 and better["p_one_sided"] < 1e-6 and better["p_two_sided"] < 1e-6
    assert worse["mean_difference"] > 0 and worse["p_one_sided"] > 0.99 and worse["p_two_sided"] < 1e-6
    same = paired_test(holder, holder)
    assert same["p_one_sided"] == 1.0 and same["mean_difference"] == 0.0
