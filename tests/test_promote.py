"""`binsweep promote` and `binsweep models` against a real MLflow registry (SQLite, session BINSWEEP_HOME), and the
gate's decision function against hand-computed Wilcoxon signed-rank values.

The sweeps come from test_leaderboard.sweep_world(): lb-grid's best trial is a tiny BAST trained for two epochs,
lb-weak's is the same architecture untrained (measurably worse on the test split), lb-corrupt's model file is
junk on disk, lb-otherdata claims another dataset. pr-twin (made here) logs lb-grid's trained model a second time:
another registered artifact with the very same weights, so its per-sample errors equal lb-grid's exactly. Each test
promotes into its own registered model name, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sweep_platform import names, tracking
from sweep_platform.cli import app
from sweep_platform.comparison import gate, min_pairs, paired_test
from sweep_platform.promotion import Candidate, gate_summary, model_card

slow = pytest.mark.slow

STRONG = {"model.sharing": "NSP", "model.integration": "sub", "loss.name": "hybrid", "train.lr": 3e-3}
# the figures every refusal carries: both means, the p-value against alpha and the number of paired samples
FIGURES = re.compile(r"mean per-sample test error (?P<ch>[\d.]+) \(challenger\) vs (?P<holder>[\d.]+) \(version "
                     r"(?P<version>\d+)\), one-sided Wilcoxon signed-rank p = (?P<p>[\d.e+-]+) \((?P<cmp><|>=) alpha "
                     r"(?P<alpha>[\d.]+)\), n = (?P<n>\d+) paired test samples")


@pytest.fixture(scope="module")
def world():
    from test_leaderboard import sweep_world

    return sweep_world()


@pytest.fixture(scope="module")
def twin(world):
    """pr-twin: lb-grid's trained model logged again (same weights, another model URI), with a sweep.yaml that has a
    search space, as `binsweep sweep` logs it."""
    from test_leaderboard import Trial, make_sweep

    sweep = make_sweep("pr-twin", [Trial("0", dict(STRONG), "completed", world.strong, [60.0, 48.0],
                                         world.strong_test)], world.fingerprint)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sweep.yaml"
        path.write_text(yaml.safe_dump({
            "name": "pr-twin", "trainable": "bast", "dataset": "data/loc_results", "metric": "val_ad_deg",
            "mode": "min", "trials": 1,
            "space": {"model.sharing": {"choice": ["SP", "NSP"]}, "model.integration": {"choice": ["add", "sub"]},
                      "train.lr": {"float": [1e-4, 3e-3], "log": True}, "train.epochs": {"fixed": 2}}},
            sort_keys=False))
        tracking.client().log_artifact(sweep["parent"], str(path))
    assert sweep["trials"][0].model_uri != world.sweeps["lb-grid"]["trials"][0].model_uri
    return sweep


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


def version(name: str, v: str):
    return tracking.client().get_model_version(name, v)


def figures(output: str) -> dict:
    m = FIGURES.search(" ".join(output.split()))  # the error console may wrap long lines
    assert m, output
    return m.groupdict()


# ------------------------------------------------------------------------------------------------ real models


@slow
def test_better_challenger_takes_the_alias_and_the_version_reads_like_a_model_card(world):
    first = promote("--sweep", "lb-weak", "--model-name", "bast-up")
    assert first.exit_code == 0, first.output
    assert "first promotion" in first.output and alias_version("bast-up", "champion") == "1"
    v1 = version("bast-up", "1")
    assert v1.tags[names.TAG_GATE] == "first champion" and names.TAG_PAIRED_TEST not in v1.tags
    assert "- gate for bast-up@champion: first champion" in v1.description

    res = promote("--sweep", "lb-grid", "--model-name", "bast-up")
    assert res.exit_code == 0, res.output
    assert "promoted: bast-up@champion -> version 2 (was version 1): significantly lower per-sample test error " \
           "(one-sided Wilcoxon p = " in res.output
    assert "paired wilcoxon signed-rank over 72 test samples" in res.output and "p one-sided (less)" in res.output
    p = float(re.search(r"one-sided Wilcoxon p = ([\d.e+-]+) < alpha 0.05, n = 72\)", res.output).group(1))
    assert p < 0.05
    assert alias_version("bast-up", "champion") == "2"
    v2 = version("bast-up", "2")
    grid = world.sweeps["lb-grid"]["trials"][0]
    assert v2.source == grid.model_uri
    assert v2.tags["binsweep.sweep_id"] == "lb-grid" and v2.tags["binsweep.trial_id"] == "0"
    assert v2.tags["binsweep.run_id"] == grid.run_id
    assert v2.tags["binsweep.dataset_fingerprint"] == world.fingerprint
    assert float(v2.tags["test_ad_deg"]) == pytest.approx(world.strong_test["test_ad_deg"], rel=1e-5)
    assert v2.tags["binsweep.selection_metric"].startswith("val_ad_deg=48")
    assert v2.tags[names.TAG_GATE] == "passed" and names.TAG_FORCED not in v2.tags
    assert v2.tags[names.TAG_COMPARED_WITH] == "version 1"
    assert "wilcoxon p_one_sided=" in v2.tags["binsweep.paired_test"] and "n=72" in v2.tags["binsweep.paired_test"]
    tagged_p = float(re.search(r"p_one_sided=(\S+)", v2.tags["binsweep.paired_test"]).group(1))
    assert tagged_p == pytest.approx(p, rel=1e-2)

    # the model card: trainable, searched parameters, test metrics with n, dataset + fingerprint, sweep/trial, gate
    card = v2.description
    assert card.startswith("bast-up version 2: bast from sweep lb-grid, trial 0")
    assert "- trainable: bast" in card
    # lb-grid's sweep.yaml has no space: the trainable's key parameters, then those that vary, say so
    params = re.search(r"- parameters \(key parameters; the sweep recorded no search space\): (.*)", card).group(1)
    for key, value in (("model.sharing", "NSP"), ("model.integration", "sub"), ("loss.name", "hybrid")):
        assert f"{key}={value}" in params
    # every test metric, sorted by name (test_ad_deg, test_front_back_rate, test_mse, test_mse_ref), then n
    line = re.search(r"- test metrics: (.*) \(n = 72 test samples", card).group(1)
    scored = {k: float(v) for k, v in (item.split(" ") for item in line.split(", "))}
    assert list(scored) == sorted(scored) and {"test_ad_deg", "test_mse", "test_mse_ref"} <= set(scored)
    assert scored["test_ad_deg"] == pytest.approx(world.strong_test["test_ad_deg"], rel=1e-3)
    assert scored["test_mse_ref"] == pytest.approx(scored["test_mse"] / 2, rel=2e-3)  # the reference's scale
    assert f"- dataset: data/loc_results (fingerprint {world.fingerprint})" in card
    assert f"- sweep: lb-grid, trial 0, run {grid.run_id}; selected by val_ad_deg 48 (min)" in card
    gate_line = re.search(r"- gate for bast-up@champion: passed: (.*)", card).group(1)
    f = figures(gate_line)
    assert f["version"] == "1" and f["n"] == "72" and f["cmp"] == "<" and float(f["p"]) == pytest.approx(p, rel=1e-2)

    again = promote("--sweep", "lb-grid", "--model-name", "bast-up")  # nothing new: no extra version
    assert again.exit_code == 0 and "unchanged: bast-up@champion is already version 2" in again.output
    assert versions("bast-up") == ["1", "2"]


@slow
def test_worse_challenger_is_refused_with_the_figures_until_forced(world):
    assert promote("--sweep", "lb-grid", "--model-name", "bast-down").exit_code == 0
    assert alias_version("bast-down", "champion") == "1"

    for alpha in ("0.05", "0.5"):  # however lax the level, a worse model's one-sided p is large
        res = promote("--sweep", "lb-weak", "--model-name", "bast-down", "--alpha", alpha)
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())
        assert "promotion refused: the challenger's per-sample test errors are not significantly lower than " \
               "those of version 1" in out
        f = figures(res.output)
        assert float(f["ch"]) == pytest.approx(world.weak_test["test_ad_deg"], rel=1e-3)
        assert float(f["holder"]) == pytest.approx(world.strong_test["test_ad_deg"], rel=1e-3)
        assert f["version"] == "1" and f["n"] == "72" and f["cmp"] == ">=" and f["alpha"] == alpha
        assert float(f["p"]) > 0.5
        assert "bast-down@champion stays on version 1 and nothing was registered" in out and "--force" in out
        # nothing changed: no version, no challenger alias
        assert alias_version("bast-down", "champion") == "1" and alias_version("bast-down", "challenger") is None
        assert versions("bast-down") == ["1"]

    res = CliRunner().invoke(app, ["models", "--name", "bast-down", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {r["version"]: r for r in json.loads(res.stdout)}
    assert list(rows) == ["1"] and rows["1"]["aliases"] == ["champion"] and rows["1"]["sweep"] == "lb-grid"
    assert rows["1"]["value"] == pytest.approx(world.strong_test["test_ad_deg"], rel=1e-5)

    forced = promote("--sweep", "lb-weak", "--model-name", "bast-down", "--force")
    assert forced.exit_code == 0, forced.output
    assert "promoted: bast-down@champion -> version 2 (was version 1): forced (the challenger's per-sample test " \
           "errors are not significantly lower" in forced.output
    assert alias_version("bast-down", "champion") == "2" and versions("bast-down") == ["1", "2"]
    v2 = version("bast-down", "2")
    assert v2.tags[names.TAG_FORCED] == "true" and v2.tags[names.TAG_GATE] == "forced"
    assert "not significantly lower" in v2.tags[names.TAG_FORCED_REASON] and "n = 72" in v2.tags[
        names.TAG_FORCED_REASON]
    assert "wilcoxon p_one_sided=" in v2.tags[names.TAG_PAIRED_TEST]
    assert float(re.search(r"p_one_sided=(\S+)", v2.tags[names.TAG_PAIRED_TEST]).group(1)) > 0.5
    assert "- gate for bast-down@champion: forced (--force): the challenger's per-sample test errors are not " \
           "significantly lower" in v2.description
    assert figures(v2.description)["p"] == f["p"]

    # the trained model wins it back through the gate: its earlier version is reused, its tags now say "passed"
    back = promote("--sweep", "lb-grid", "--model-name", "bast-down")
    assert back.exit_code == 0, back.output
    assert "promoted: bast-down@champion -> version 1 (was version 2): significantly lower" in back.output
    assert versions("bast-down") == ["1", "2"] and alias_version("bast-down", "champion") == "1"
    v1 = version("bast-down", "1")
    assert v1.tags[names.TAG_GATE] == "passed" and names.TAG_FORCED not in v1.tags
    assert v1.tags[names.TAG_COMPARED_WITH] == "version 2" and "gate for bast-down@champion: passed" in v1.description


@slow
def test_the_same_model_twice_never_swaps(world, twin):
    assert promote("--sweep", "lb-grid", "--model-name", "bast-twin").exit_code == 0
    for args in ((), ("--alpha", "0.99")):  # identical errors fail at any level: no coin flip
        res = promote("--sweep", "pr-twin", "--model-name", "bast-twin", *args)
        assert res.exit_code == 2, res.output
        out = " ".join(res.output.split())
        assert "promotion refused: the challenger's per-sample test errors are identical to those of version 1" in out
        f = figures(res.output)
        assert f["ch"] == f["holder"] and f["p"] == "1" and f["n"] == "72"
        assert "(72 differ)" not in res.output and "(0 differ)" in res.output
        assert alias_version("bast-twin", "champion") == "1" and versions("bast-twin") == ["1"]

    forced = promote("--sweep", "pr-twin", "--model-name", "bast-twin", "--force")
    assert forced.exit_code == 0, forced.output
    assert "forced (the challenger's per-sample test errors are identical" in forced.output
    assert alias_version("bast-twin", "champion") == "2"
    v2 = version("bast-twin", "2")
    assert v2.tags[names.TAG_FORCED] == "true" and "identical" in v2.tags[names.TAG_FORCED_REASON]
    # pr-twin's sweep.yaml has a space: the card lists exactly its searched keys (not the fixed train.epochs)
    assert "- parameters (searched by the sweep): model.sharing=NSP, model.integration=sub, train.lr=3e-3\n" \
           in v2.description


@slow
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


@slow
def test_different_test_split_is_refused_unless_forced(world):
    # lb-otherdata says it was tested on another dataset than the one now at its data.root
    res = promote("--sweep", "lb-otherdata", "--model-name", "bast-data")
    assert res.exit_code == 2, res.output
    assert "is not the one trial 0 was tested on (0000deadbeef)" in res.output and versions("bast-data") == []
    first = promote("--sweep", "lb-otherdata", "--model-name", "bast-data", "--force")
    assert first.exit_code == 0, first.output
    assert "there was no champion; first promotion, forced: the dataset at" in first.output
    assert alias_version("bast-data", "champion") == "1"
    v1 = version("bast-data", "1")
    assert v1.tags[names.TAG_FORCED] == "true" and "is not the one trial 0 was tested on" in v1.tags[
        names.TAG_FORCED_REASON]
    assert "- dataset: data/loc_results (fingerprint 0000deadbeef0000)" in v1.description
    # the champion's test split (0000deadbeef...) is not lb-grid's: no comparison, no move
    res = promote("--sweep", "lb-grid", "--model-name", "bast-data")
    assert res.exit_code == 2, res.output
    assert "different test splits cannot be compared" in res.output and "--force" in res.output
    assert alias_version("bast-data", "champion") == "1" and versions("bast-data") == ["1"]
    forced = promote("--sweep", "lb-grid", "--model-name", "bast-data", "--force")
    assert forced.exit_code == 0, forced.output
    assert alias_version("bast-data", "champion") == "2"
    v2 = version("bast-data", "2")
    # forced past both refusals: the dataset check, and the paired test (lb-otherdata holds the same trained model)
    reason = v2.tags[names.TAG_FORCED_REASON]
    assert v2.tags[names.TAG_GATE] == "forced" and "different test splits" in reason and "identical" in reason
    assert "n = 72" in reason and "p_one_sided=1 " in v2.tags[names.TAG_PAIRED_TEST]
    assert "- gate for bast-data@champion: forced (--force): bast-data@champion (version 1) was tested on dataset " \
           "0000deadbeef" in v2.description


@slow
def test_sweep_without_finished_scored_trials_is_refused(world):
    from test_leaderboard import Trial, make_sweep

    make_sweep("pr-unscored", [Trial("0", {}, "stopped", None, [70.0]), Trial("1", {}, "failed")], world.fingerprint)
    res = promote("--sweep", "pr-unscored", "--model-name", "bast-none")
    assert res.exit_code == 2, res.output
    assert "no finished trial (completed or stopped) with test metrics" in res.output
    assert "0: stopped (no test_ad_deg), 1: failed (no test_ad_deg)" in res.output
    res = promote("--sweep", "no-such-sweep", "--model-name", "bast-none")
    assert res.exit_code == 2 and "no sweep named 'no-such-sweep'" in res.output
    res = CliRunner().invoke(app, ["models", "--name", "bast-none"])
    assert res.exit_code == 2 and "no registered model 'bast-none'" in res.output


# ------------------------------------------------------------------------------------------------ the decision


HOLDER = np.arange(1, 7) * 10.0  # 10 .. 60


def test_all_differences_in_favour_give_the_smallest_exact_p():
    # differences -1..-6: W+ = 0; exact one-sided P(W+ <= 0) = 1/2**6; two-sided twice that
    g = gate(HOLDER - np.arange(1, 7), HOLDER)
    assert g.passed and g.outcome == "significant"
    assert g.comparison["statistic"] == 0.0
    assert g.p == pytest.approx(1 / 64) and g.comparison["p_two_sided"] == pytest.approx(2 / 64)
    assert g.comparison["mean_challenger"] == pytest.approx(35 - 3.5) and g.comparison["mean_holder"] == 35
    assert g.comparison["alternative"] == "less" and g.n == 6 and g.comparison["n_differing"] == 6


@pytest.mark.parametrize("flip, w_plus, subsets", [
    (6, 6, 14),  # subsets of ranks {1..6} summing to <= 6: {}, 1, 2, 3, 12, 4, 13, 5, 14, 23, 6, 15, 24, 123
    (5, 5, 10),  # ... to <= 5: the first ten of those
])
def test_one_difference_against_the_challenger(flip, w_plus, subsets):
    d = -np.arange(1, 7, dtype=float)
    d[flip - 1] = flip  # the difference of rank `flip` goes the holder's way
    g = gate(HOLDER + d, HOLDER)
    assert g.comparison["statistic"] == w_plus and g.p == pytest.approx(subsets / 64)
    assert not g.passed and g.outcome == "not significant"
    assert "not significantly lower" in g.why_not("version 1")


def test_alpha_and_the_fewest_samples_that_can_reach_it():
    assert [min_pairs(a) for a in (0.5, 0.1, 0.05, 0.0625, 0.01)] == [2, 4, 5, 5, 7]
    five = np.arange(1, 6) * 10.0
    g = gate(five - 1, five)  # all five in favour: p = 1/32
    assert g.p == pytest.approx(1 / 32) and g.passed
    strict = gate(five - 1, five, alpha=0.01)  # 1/32 can never be below 0.01 with 5 pairs: min_pairs(0.01) = 7
    assert not strict.passed and strict.outcome == "too few samples"
    four = gate(HOLDER[:4] - 1, HOLDER[:4])  # the best four pairs can do is 1/16 > 0.05
    assert four.outcome == "too few samples" and four.p == pytest.approx(1 / 16)
    msg = four.why_not("version 3")
    assert "only 4 paired test samples" in msg and "fewer than 5" in msg and "p = 0.0625" in msg
    assert "24 (challenger) vs 25 (version 3)" in msg and "n = 4 paired test samples" in msg


def test_identical_errors_refuse_without_calling_on_scipy():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a zero variance either
        g = gate(HOLDER.copy(), HOLDER)
    assert not g.passed and g.outcome == "identical"
    assert g.p == 1.0 and g.comparison["p_two_sided"] == 1.0 and g.comparison["n_differing"] == 0
    assert "identical" in g.why_not() and "p = 1 (>= alpha 0.05)" in g.why_not()
    assert not gate(HOLDER.copy(), HOLDER, alpha=0.999).passed


def test_zero_differences_are_dropped_and_max_mode_mirrors():
    seven = np.arange(1, 8) * 10.0
    d = np.array([0, 0, -1, -2, -3, -4, -5], dtype=float)  # five non-zero, all in favour: 1/32
    g = gate(seven + d, seven)
    assert g.n == 7 and g.comparison["n_differing"] == 5 and g.p == pytest.approx(1 / 32) and g.passed
    # a max-mode trainable: larger is better, so the same vectors read the other way round
    up = gate(HOLDER + np.arange(1, 7), HOLDER, mode="max")
    assert up.comparison["alternative"] == "greater" and up.p == pytest.approx(1 / 64) and up.passed
    assert gate(HOLDER - np.arange(1, 7), HOLDER, mode="max").p == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one length"):
        gate(HOLDER, HOLDER[:5])


def test_paired_test_directions():
    rng = np.random.default_rng(0)
    holder = rng.uniform(20, 60, 80)
    better = paired_test(holder - 5 + rng.normal(0, 1, 80), holder)
    worse = paired_test(holder + 5 + rng.normal(0, 1, 80), holder)
    assert better["mean_difference"] < 0 and better["p_one_sided"] < 1e-6 and better["p_two_sided"] < 1e-6
    assert worse["mean_difference"] > 0 and worse["p_one_sided"] > 0.99 and worse["p_two_sided"] < 1e-6
    same = paired_test(holder, holder)
    assert same["p_one_sided"] == 1.0 and same["mean_difference"] == 0.0


def test_model_card_fields():
    cand = Candidate(sweep="s1", trial="3", run_id="abc123", trainable="bast", metric="val_ad_deg", value=4.5,
                     model_uri="models:/m-1", params={"data.root": "data/loc"}, test_metrics={},
                     fingerprint="f" * 16, mode="min", searched={"model.sharing": "NSP", "train.lr": "0.001"})
    g = gate(HOLDER - np.arange(1, 7), HOLDER)
    line = gate_summary("passed", g, "version 1", [], "bast@champion")
    card = model_card(cand, name="bast", version="2", alias_ref="bast@champion",
                      measured={"test_ad_deg": 3.25, "test_mse": 0.0125, "test_ad_deg.anechoic": 3.0}, n=6,
                      gate_line=line, data_root="data/loc")
    assert card.splitlines() == [
        "bast version 2: bast from sweep s1, trial 3",
        "",
        "- trainable: bast",
        "- parameters (searched by the sweep): model.sharing=NSP, train.lr=1e-3",
        "- test metrics: test_ad_deg 3.25, test_mse 0.0125 (n = 6 test samples, scored at promotion)",
        f"- dataset: data/loc (fingerprint {'f' * 16})",
        "- sweep: s1, trial 3, run abc123; selected by val_ad_deg 4.5 (min)",
        "- gate for bast@champion: passed: mean per-sample test error 31.5 (challenger) vs 35 (version 1), one-sided "
        "Wilcoxon signed-rank p = 0.0156 (< alpha 0.05), n = 6 paired test samples",
    ]
    assert gate_summary("first champion", None, None, [], "bast@champion") == \
        "first champion (there was no bast@champion before; no test needed)"
    assert gate_summary("forced", None, None, ["a reason"], "bast@champion") == "forced (--force): a reason"


def test_alpha_out_of_range_is_a_usage_error():
    for bad in ("0", "1", "1.5"):
        res = promote("--sweep", "whatever", "--alpha", bad)
        assert res.exit_code == 2 and "--alpha must be between 0 and 1" in res.output, res.output
    res = CliRunner().invoke(app, ["promote", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--alpha" in res.output and "--force" in res.output
