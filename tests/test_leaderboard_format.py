"""Leaderboards people can read: one number formatter, a table that fits 120 columns, ranking by the sweep's own
validation metric with the test metric beside it, and the HTML report formatted the same way.

Fast (no model is trained): the formatter and the table are checked on rows built directly, the ranking, the CLI
and the report on a real MLflow store (SQLite under the session's BINSWEEP_HOME) written by test_leaderboard's
`make_sweep`, as the sweep driver writes it: a bast_tpe-sized sweep with realistic full-precision values.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from sweep_platform import leaderboard as lb
from sweep_platform import leaderboard_format as lf
from sweep_platform.cli import app

ROOT = Path(__file__).resolve().parents[1]
LR = 0.0019280284410033446  # the examples, as MLflow hands them back
ALPHA = 0.7225254007598804
runner = CliRunner()


# ------------------------------------------------------------------------------------------------ the formatter


@pytest.mark.parametrize(("value", "name", "log", "text"), [
    (ALPHA, "loss.alpha", False, "0.7225"),  # 4 significant digits
    (12.3456, "test_ad_deg", False, "12.35"),  # degrees
    (48.0, "val_ad_deg", False, "48"),  # an integral float loses its .0
    (150.0, None, False, "150"),
    (0.5, None, False, "0.5"),  # no padding zeros
    (1.0, None, False, "1"),
    (-3.14159, None, False, "-3.142"),
    (12345.6, None, False, "12350"),  # below 1e5: fixed, still 4 significant digits
    (123456.0, None, False, "1.23e5"),  # from 1e5: scientific
    (99999.7, None, False, "1e5"),  # rounds up into the scientific range
    (0.001, None, False, "0.001"),  # 1e-3 itself is fixed
    (LR, None, False, "0.001928"),
    (0.00019, None, False, "1.9e-4"),  # below 1e-3: scientific, 3 significant digits, short exponent
    (-1.5e-7, None, False, "-1.5e-7"),
    (0.0009999, None, False, "1e-3"),
    (LR, "train.lr", False, "1.93e-3"),  # a learning rate: always scientific, whatever its size
    (0.1, "train.lr", False, "1e-1"),
    (3e-3, "head_lr", False, "3e-3"),
    (2.5e-4, "optimizer.learning_rate", False, "2.5e-4"),
    (0.25, "model.dropout", True, "2.5e-1"),  # log-scaled in the sweep space: scientific too
    (32, "model.embed_dim", False, "32"),  # integers as integers
    (123456, None, False, "123456"),
    (0.0, None, False, "0"),
    (-0.0, None, False, "0"),
    (float("nan"), None, False, "nan"),
    (float("inf"), None, False, "inf"),
    (None, None, False, ""),
    (True, None, False, "True"),
    ("NSP", None, False, "NSP"),
])
def test_format_value(value, name, log, text):
    assert lb.format_value(value, name, log=log) == text


def test_format_value_takes_numpy_numbers():
    import numpy as np

    assert lb.format_value(np.float32(12.3456)) == "12.35" and lb.format_value(np.int64(7)) == "7"
    assert lb.format_value(np.float64(LR), "train.lr") == "1.93e-3"


def test_parameters_come_back_from_mlflow_as_strings_and_are_formatted_as_numbers():
    assert lb.typed("32") == 32 and lb.typed(repr(LR)) == LR and lb.typed("1e-05") == 1e-5
    assert [lb.typed(s) for s in ("NSP", "nan", "007", "1_000", "")] == ["NSP", "nan", "007", "1_000", ""]
    assert lb.format_param("train.lr", repr(LR)) == "1.93e-3"
    assert lb.format_param("loss.alpha", repr(ALPHA)) == "0.7225"
    assert lb.format_param("model.dropout", "0.25", ["model.dropout"]) == "2.5e-1"
    assert lb.format_param("model.layers_left", "3") == "3" and lb.format_param("loss.name", "hybrid") == "hybrid"
    assert lb.format_param("loss.alpha", None) == ""


def test_durations_headers_and_abbreviations():
    assert [lb.format_duration(s) for s in (None, 4.4, 59.6, 125, 3725)] == ["", "4s", "1m00s", "2m05s", "1h02m"]
    assert lf._short_headers(["model.sharing", "loss.name", "model.dropout", "train.dropout", "train.lr"]) == {
        "model.sharing": "sharing", "loss.name": "loss", "model.dropout": "m.dropout", "train.dropout": "t.dropout",
        "train.lr": "lr"}
    assert lb.abbreviate("sharing", 8) == "sharing"
    assert lb.abbreviate("layers_center", 12) == "lay_center" and lb.abbreviate("layers_center", 8) == "lay_cen"
    assert lb.abbreviate("pos_embedding", 12) == "pos_emb" and lb.abbreviate("batch_size", 8) == "bat_size"
    assert lb.abbreviate("integration", 8) == "integra…"


# ------------------------------------------------------------------------------------------------ the table

SPACE = yaml.safe_load((ROOT / "search_spaces" / "bast_tpe.yaml").read_text())["space"]
SEARCHED, LOG = lb.space_params({"space": SPACE})


def _trial_params(rng: random.Random) -> dict[str, object]:
    """One bast_tpe trial's searched values at full precision (what Optuna samples)."""
    p: dict[str, object] = {
        "model.sharing": rng.choice(["SP", "NSP"]), "model.integration": rng.choice(["add", "sub", "concat"]),
        "loss.name": rng.choice(["mse", "ad", "hybrid"]), "model.layers_left": rng.randint(1, 4),
        "model.layers_center": rng.randint(1, 4), "model.embed_dim": rng.choice([128, 256, 512]),
        "model.heads": rng.choice([4, 8, 16]), "model.mlp_dim": rng.choice([256, 512, 1024]),
        "model.dropout": rng.uniform(0.0, 0.3), "model.pos_embedding": rng.choice(["sinusoidal", "learned"]),
        "train.lr": 10 ** rng.uniform(-5, -3), "train.batch_size": rng.choice([32, 48, 64])}
    p["model.emb_dropout"] = p["model.dropout"]
    p["model.layers_right"] = rng.randint(1, 4) if p["model.sharing"] == "NSP" else p["model.layers_left"]
    if p["loss.name"] == "hybrid":
        p["loss.alpha"] = rng.uniform(0.1, 0.9)
    return p


def synthetic_rows(n: int = 24) -> list[dict]:
    """A bast_tpe sweep's rows as `lb.leaderboard` returns them: Ray trial ids, every state, full precision."""
    rng = random.Random(0)
    keys = ["model.sharing", "model.integration", "loss.name"] + [k for k in SEARCHED if k not in (
        "model.sharing", "model.integration", "loss.name")] + ["model.emb_dropout"]
    rows = []
    for i in range(n):
        params = _trial_params(rng)
        state = "failed" if i == n - 1 else "stopped" if i % 3 else "completed"
        val = rng.uniform(2, 60)
        rows.append({
            "rank": None if state == "failed" else i + 1, "sweep": "bast_tpe-1122-153012", "trainable": "bast",
            "trial": f"3f2a1_{i:05d}", "run_name": f"3f2a1_{i:05d}", "run_id": f"{rng.getrandbits(128):032x}",
            "state": state, "params": {k: None if k not in params else str(params[k]) for k in keys},
            "metric": "val_ad_deg", "mode": "min", "value": None if state == "failed" else val,
            "value_source": None if state == "failed" else "val_ad_deg (best epoch)",
            "objective": "val_ad_deg", "objective_value": None if state == "failed" else val,
            "metrics": {} if state != "completed" else {"test_ad_deg": val + rng.uniform(-1, 3),
                                                         "test_mse": rng.uniform(0.001, 0.1)},
            "epochs": rng.randint(1, 30), "wall_s": rng.uniform(30, 9000), "gpu_hours": rng.uniform(0, 3),
            "error": "FloatingPointError: training loss is nan at epoch 3, step 17" if state == "failed" else None,
            "dataset_fingerprint": "a" * 16, "searched_params": SEARCHED, "log_params": LOG,
        })
    return rows


def too_precise(text: str) -> list[str]:
    """The decimal numbers in `text` with more than 4 significant digits."""
    return [m for m in re.findall(r"\d+\.\d+", text) if len(m.replace(".", "").lstrip("0")) > 4]


def rendered(renderable, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def test_default_table_fits_120_columns_without_wrapping_and_wide_shows_everything():
    rows = synthetic_rows()
    table = lb.to_table(rows, title="sweep bast_tpe-1122-153012 (bast), ranked by val_ad_deg (best epoch), lower "
                                    "is better")
    assert lb.natural_width(table) <= 120
    lines = rendered(table, 120)
    assert max(map(len, lines)) <= 120
    # nothing folded: one line per trial (and no cell of the natural-width rendering differs from the 120 one)
    assert lines == rendered(table, 400)
    body = [ln for ln in lines if re.match(r"\s*\d*\s+3f2a1_\d{5} ", ln)]
    assert len(body) == len(rows)
    header = next(ln for ln in lines if re.match(r"\s*rank +trial", ln))
    assert re.match(r"\s*rank +trial +state +val_ad_deg +test_ad_deg +epochs +wall +sharing +integra", header)
    text = "\n".join(lines)
    assert not too_precise(text)  # no full-precision floats
    assert re.search(r"\b\d\.\d{1,2}e-\d\b", text)  # learning rates in scientific notation
    assert "not shown" in text and "--wide" in text  # the caption names what it left out
    assert "3f2a1_00023" in text and "FloatingPointError" not in text  # errors: failed_lines, under the table

    wide = lb.to_table(rows, wide=True)
    assert lb.natural_width(wide) > 120
    wide_text = "\n".join(rendered(wide, lb.natural_width(wide)))
    for name in ("run", "test_mse", "gpu_hours", "layers_center", "pos_embedding", "emb_dropout", "batch_size"):
        assert re.search(rf"\b{name}\b", wide_text), name
    assert not too_precise(wide_text) and "not shown" not in wide_text


def test_a_small_sweep_shows_every_parameter_at_full_length():
    rows = synthetic_rows(4)
    for r in rows:
        r["params"] = {k: r["params"][k] for k in ("model.sharing", "loss.name", "loss.alpha", "train.lr")}
    text = "\n".join(rendered(lb.to_table(rows), 120))
    assert re.search(r"sharing +loss +alpha +lr", text) and "not shown" not in text


# ------------------------------------------------------------------------------------------------ a real store


@pytest.fixture(scope="module")
def wide_sweep():
    """A bast_tpe-shaped sweep in MLflow where validation and test disagree on the best trial: trial 0 is best on
    validation (val 20.5, test 25.1), trial 1 on test (val 22.5, test 19.9)."""
    from test_leaderboard import Trial, make_sweep

    rng = random.Random(1)
    trials = []
    for i in range(8):
        p = _trial_params(rng)
        p["model.layers_right"] = p["model.layers_left"] if p["model.sharing"] == "SP" else p["model.layers_right"]
        p["train.lr"] = 10 ** rng.uniform(-4, -2.6)  # inside make_sweep's Optuna distribution
        if i == 0:
            p.update({"loss.name": "hybrid", "loss.alpha": ALPHA, "train.lr": LR})
        val = {0: 20.512345678901234, 1: 22.51234567890123}.get(i, rng.uniform(30, 90))
        test = {0: 25.123456789012345, 1: 19.876543210987654}.get(i, val + rng.uniform(0, 5))
        state = "failed" if i == 7 else "stopped" if i == 6 else "completed"
        trials.append(Trial(str(i), {k: v for k, v in p.items() if k != "model.emb_dropout"}, state,
                            val_history=[] if state == "failed" else [val + 7.25, val],
                            test=None if state != "completed" else {"test_ad_deg": test, "test_mse": test / 3000}))
    trials[7].val_history = []
    sweep = make_sweep("lbf-wide", trials, "f" * 16, space=SPACE)
    return sweep


def test_ranks_by_the_sweeps_validation_metric_with_the_test_metric_beside(wide_sweep):
    rows = lb.leaderboard("lbf-wide")
    assert [r["trial"] for r in rows][:2] == ["0", "1"] and rows[-1]["trial"] == "7" and rows[-1]["rank"] is None
    best = rows[0]
    assert best["metric"] == "val_ad_deg" and best["mode"] == "min" and best["objective"] == "val_ad_deg"
    assert best["value"] == pytest.approx(20.512345678901234) and best["value_source"] == "val_ad_deg (best epoch)"
    assert best["metrics"]["test_ad_deg"] == pytest.approx(25.123456789012345)
    assert not any(lb.is_fallback(r) for r in rows)
    assert best["searched_params"][:3] == ["model.sharing", "model.integration", "loss.name"]
    assert best["log_params"] == ["train.lr"] and best["wall_s"] is not None
    # the test metric still ranks when asked for; the sweep's objective then stands beside it
    by_test = lb.leaderboard("lbf-wide", metric="test_ad_deg")
    assert [r["trial"] for r in by_test][:2] == ["1", "0"]
    assert by_test[0]["objective_value"] == pytest.approx(22.51234567890123)
    stopped = next(r for r in by_test if r["trial"] == "6")
    assert lb.is_fallback(stopped) and stopped["value_source"] == "val_ad_deg (best epoch)"
    headers = [c.header for c in lb.columns(by_test)]
    assert headers[:7] == ["rank", "trial", "run", "state", "test_ad_deg", "from", "val_ad_deg"]


def test_cli_table_fits_120_columns_and_wide_and_json_keep_everything(wide_sweep):
    res = runner.invoke(app, ["leaderboard", "--sweep", "lbf-wide"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "ranked by val_ad_deg (best epoch), lower is better" in out
    assert max(len(ln) for ln in out.splitlines()) <= 120, out
    assert re.search(r"rank +trial +state +val_ad_deg +test_ad_deg +epochs +wall", out)
    first = next(ln for ln in out.splitlines() if re.match(r"\s*1 +0 ", ln))
    assert re.search(r"\b20\.51 +25\.12\b", first) and "1.93e-3" in first and "0.7225" in first, first
    assert not too_precise(out) and str(LR) not in out
    assert "failed trial 7 (lbf-wide-7, " in out

    wide = runner.invoke(app, ["leaderboard", "--sweep", "lbf-wide", "--wide"], env={"COLUMNS": "100"})
    assert wide.exit_code == 0, wide.output
    assert max(len(ln) for ln in wide.stdout.splitlines()) > 120  # not folded to the terminal: every column, whole
    for name in ("run", "test_mse", "gpu_hours", "layers_center", "pos_embedding", "batch_size"):
        assert re.search(rf"\b{name}\b", wide.stdout), name
    assert "1.93e-3" in wide.stdout and not too_precise(wide.stdout)

    by_test = runner.invoke(app, ["leaderboard", "--sweep", "lbf-wide", "--metric", "test_ad_deg"],
                            env={"COLUMNS": "300"})
    assert by_test.exit_code == 0 and "ranked by test_ad_deg, lower is better" in by_test.stdout
    assert re.search(r"rank +trial +state +test_ad_deg +val_ad_deg", by_test.stdout)
    assert max(len(ln) for ln in by_test.stdout.splitlines()) <= 120

    js = runner.invoke(app, ["leaderboard", "--sweep", "lbf-wide", "--format", "json"])
    rows = json.loads(js.stdout)
    assert rows[0]["params"]["train.lr"] == repr(LR) and rows[0]["params"]["loss.alpha"] == repr(ALPHA)
    assert rows[0]["value"] == 20.512345678901234 and rows[0]["metrics"]["test_ad_deg"] == 25.123456789012345
    csv_out = runner.invoke(app, ["leaderboard", "--sweep", "lbf-wide", "--format", "csv"]).stdout
    assert repr(LR) in csv_out and "20.512345678901234" in csv_out  # CSV is for machines too
    md = runner.invoke(app, ["leaderboard", "--sweep", "lbf-wide", "--format", "markdown"]).stdout
    assert "| 1.93e-3 |" in md and "| 20.51 | 25.12 |" in md and not too_precise(md)


def test_report_formats_its_numbers_with_the_same_formatter(wide_sweep, tmp_path):
    from sweep_platform.report import build_html

    page, _ = build_html("lbf-wide")
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", page).replace("arXiv 2207.03927", "arXiv")
    for raw in (str(LR), str(ALPHA), "20.512345678901234", "25.123456789012345", "0.7225254", "0.00192802"):
        assert raw not in text, raw
    assert not too_precise(text)  # no value with 16 (or even 5) significant digits anywhere on the page
    table = text[text.index("<h2>Leaderboard</h2>"):text.index("<h2>Parameter importances</h2>")]
    assert "ranked by val_ad_deg (best epoch), lower is better" in table
    assert "<td class=num>20.51</td><td class=num>25.12</td>" in table
    assert "<td>1.93e-3</td>" in table and "<td>0.7225</td>" in table
    best = text[text.index("<h2>Best trial</h2>"):]
    assert "val_ad_deg 20.51, test_ad_deg 25.12" in best and "train.lr = 1.93e-3" in best
    assert "loss.alpha = 0.7225" in best
