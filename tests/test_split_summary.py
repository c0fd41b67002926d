"""`binsweep report` for a sweep over data splits: mean ± std of the test metrics per configuration, read back from
real MLflow runs (the session's store under BINSWEEP_HOME) written as the sweep driver writes them, plus the paper's
Table 1 / Table 2 columns of the binauralizer (`--compare-paper`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Param

from sweep_platform import leaderboard as lb
from sweep_platform import names, report, split_summary, tracking
from trainables.binaural.config import BinauralConfig

NAME = "fp_splits_report"
SPACE = {"data.split": {"choice": [1, 2, 3]}, "model.modalities": {"choice": ["audio", "audio+image+depth"]}}
# (modalities, split, state, test_stft_dist, test_env_dist); the failed trial has no test metrics
TRIALS = [
    ("audio", 1, names.COMPLETED, 1.0, 0.15),
    ("audio", 2, names.COMPLETED, 1.2, 0.15),
    ("audio", 3, names.COMPLETED, 1.4, 0.18),
    ("audio+image+depth", 1, names.COMPLETED, 0.9, 0.14),
    ("audio+image+depth", 2, names.COMPLETED, 1.0, 0.14),
    ("audio+image+depth", 3, names.FAILED, None, None),
]


@pytest.fixture(scope="module")
def sweep():
    c = tracking.client()
    exp = tracking.ensure_experiment("binsweep-binaural")
    parent = c.create_run(exp, run_name=NAME, tags={names.TAG_SWEEP: NAME, names.TAG_TRAINABLE: "binaural",
                                                    names.TAG_ROLE: "sweep", names.TAG_DATASET: "fp"}).info.run_id
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sweep.yaml"
        path.write_text(yaml.safe_dump({"name": NAME, "trainable": "binaural", "dataset": "data/fairplay",
                                        "metric": "val_stft_dist", "mode": "min", "space": SPACE}))
        c.log_artifact(parent, str(path))
    for k, (modalities, split, state, stft, env) in enumerate(TRIALS):
        cfg = BinauralConfig.model_validate({"model": {"preset": "binaural_tiny", "modalities": modalities},
                                             "data": {"root": "data/fairplay", "split": split}})
        run = c.create_run(exp, run_name=f"{NAME}-{k}", tags={
            names.TAG_PARENT: parent, names.TAG_SWEEP: NAME, names.TAG_TRIAL: f"t{k}", names.TAG_STATE: state,
            names.TAG_TRAINABLE: "binaural", names.TAG_DATASET: f"fp-split{split}",
            **({names.TAG_ERROR: "RuntimeError: out of memory"} if state == names.FAILED else {})}).info.run_id
        c.log_batch(run, params=[Param(p, v) for p, v in tracking.params_of(cfg.model_dump(mode="json")).items()])
        tracking.log_metrics_batch(run, {"epoch": 1, "val_stft_dist": 1.5 - 0.01 * k, "val_env_dist": 0.2}, step=1)
        if stft is not None:
            tracking.log_metrics_batch(run, {"test_stft_dist": stft, "test_env_dist": env}, step=0)
        c.set_terminated(run, status="FAILED" if state == names.FAILED else "FINISHED")
    c.set_terminated(parent, status="FINISHED")
    return NAME


def test_mean_and_std_over_splits_per_configuration(sweep):
    rows = lb.leaderboard(sweep, compare_paper=True)
    assert split_summary.split_param(rows) == "data.split"
    assert {r["params"]["data.root"] for r in rows} == {f"data/fairplay/split{n}" for n in (1, 2, 3)}
    groups, left_out = split_summary.aggregate(rows, ("test_stft_dist", "test_env_dist"), "data.split")
    assert left_out == 1
    by = {g["params"]["model.modalities"]: g for g in groups}
    assert set(by) == {"audio", "audio+image+depth"} and all(list(g["params"]) == ["model.modalities"]
                                                              for g in groups)
    audio, full = by["audio"], by["audio+image+depth"]
    assert audio["splits"] == ["1", "2", "3"] and audio["n"] == 3 and full["splits"] == ["1", "2"]
    # by hand: STFT mean(1.0, 1.2, 1.4) = 1.2, sample std 0.2; ENV mean 0.16, squared deviations 1e-4 + 1e-4 +
    # 4e-4 over n - 1 = 2
    assert audio["stats"]["test_stft_dist"] == pytest.approx((1.2, 0.2))
    assert audio["stats"]["test_env_dist"] == pytest.approx((0.16, (0.0006 / 2) ** 0.5))
    assert full["stats"]["test_stft_dist"] == pytest.approx((0.95, 0.05 * 2 ** 0.5))
    assert full["stats"]["test_env_dist"] == pytest.approx((0.14, 0.0))
    # the paper's numbers beside each trial, from its modalities and loss (default diff)
    full_row = next(r for r in rows if r["params"]["model.modalities"] == "audio+image+depth")
    assert (full_row["paper_t1_stft"], full_row["paper_t2_stft"]) == (0.928, 0.898)
    table = lb.to_markdown(rows)
    assert all(c in table for c in ("paper_t1_stft", "paper_t1_env", "paper_t2_stft", "paper_t2_env", "0.898"))


def test_report_page_has_the_split_section_and_the_paper_tables(sweep):
    page, _ = report.build_html(sweep)
    section = page[page.index("<h2>Mean over splits</h2>"):page.index("<h2>Parameter importances</h2>")]
    assert "1.2 ± 0.2" in section and "0.16 ± 0.01732" in section and "0.95 ± 0.07071" in section
    assert "1, 2, 3" in section and "1 trial(s) without test_stft_dist, test_env_dist" in section
    assert "paper_t1_stft" in page and "Table 1, split 1" in page and "0.928" in page and "0.898" in page


def test_no_split_section_without_a_split_axis():
    rows = [{"searched_params": ["model.modalities"], "params": {"model.modalities": "audio"}, "state": "completed",
             "metrics": {"test_stft_dist": 1.0}}]
    assert split_summary.to_html(rows, ("test_stft_dist",)) is None
