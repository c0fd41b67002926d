"""Leaderboard and report, read back from a real MLflow store (SQLite under the session's BINSWEEP_HOME).

`sweep_world()` writes sweeps exactly as the sweep driver does (design.md): a parent run per sweep with sweep.yaml, a
child run per trial with flattened params, per-epoch and test metrics, state/error tags, evaluation artifacts and the
model as an MLflow 3 LoggedModel, and an Optuna study of the same name. The models are real tiny BASTs: one trained
for two epochs in this process (no Ray), one untrained, so one is measurably better than the other on the test split.
test_promote.py and test_predict.py import the same world (built once per session).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from sweep_platform import leaderboard as lb
from sweep_platform import names, tracking
from sweep_platform.cli import app
from trainables.bast import paper as bast_paper

pytestmark = pytest.mark.slow

# A tiny BAST: D=32, 1/1/1 layers, patch stride 12 (36 tokens instead of 180) so a CPU epoch takes about a second.
TINY = {"preset": "bast_tiny", "embed_dim": 32, "heads": 2, "dim_head": 16, "mlp_dim": 64, "patch_stride": 12}
DATA_REL = "data/loc_results"  # data.root as the sweep driver logs it: relative to BINSWEEP_HOME
FAILED_ERROR = "FloatingPointError: training loss is nan at epoch 1, step 3"


@dataclass
class Trial:
    trial_id: str
    overrides: dict  # dotted config keys -> value
    state: str
    model: torch.nn.Module | None = None
    val_history: list[float] = field(default_factory=list)
    test: dict | None = None  # test metrics
    files: dict | None = None  # evaluation artifacts
    fingerprint: str | None = None  # default: the dataset's
    run_id: str | None = None
    model_uri: str | None = None


@dataclass
class World:
    root: Path
    fingerprint: str
    strong: torch.nn.Module
    weak: torch.nn.Module
    strong_test: dict
    weak_test: dict
    sweeps: dict  # name -> {"parent": run id, "trials": [Trial]}


def base_config(**dotted) -> dict:
    from trainables.bast import BASTConfig

    cfg = {"model": dict(TINY), "loss": {}, "train": {"epochs": 2, "batch_size": 24, "lr": 1e-3, "precision": "fp32"},
           "data": {"root": DATA_REL}}
    for key, value in dotted.items():
        section, name = key.split(".")
        cfg[section][name] = value
    return BASTConfig.model_validate(cfg).model_dump(mode="json")


def _train(cfg_dict: dict, epochs: int, seed: int) -> torch.nn.Module:
    """A plain single-process loop over the train split (the recipe's batches, the real loss)."""
    from trainables.bast import BASTConfig
    from trainables.bast.recipe import BASTRecipe

    cfg = BASTConfig.model_validate(cfg_dict)
    recipe = BASTRecipe(cfg)
    torch.manual_seed(seed)
    model = recipe.build_model()
    if epochs:
        device = torch.device("cpu")
        batches = [recipe._inputs(b, device) for b in recipe.batches("train", 0, 0, 1)]  # spectrograms once
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        for _ in range(epochs):
            model.train()
            for spec, target in batches:
                loss = recipe.criterion(model(spec), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()


def _evaluate(model, cfg_dict, out_dir=None):
    from trainables.bast import BASTConfig
    from trainables.registry import get_trainable

    spec = get_trainable("bast")
    result = spec.evaluate(model, BASTConfig.model_validate(cfg_dict), "test", out_dir=out_dir, device="cpu")
    return result


def make_sweep(name: str, trials: list[Trial], fingerprint: str, metric: str = "val_ad_deg",
               space: dict | None = None) -> dict:
    """One parent run + one child run per trial + an Optuna study, as the sweep driver writes them (`space`: the
    sweep file's space section, in its sweep.yaml)."""
    import optuna
    from mlflow.entities import Param

    from sweep_platform.storage import optuna_storage
    from trainables.bast import BASTConfig
    from trainables.registry import get_trainable

    spec = get_trainable("bast")
    c = tracking.client()
    exp = tracking.ensure_experiment("binsweep-bast")
    parent = c.create_run(exp, run_name=name, tags={
        names.TAG_SWEEP: name, names.TAG_TRAINABLE: "bast", names.TAG_GIT: "test",
        names.TAG_DATASET: fingerprint, names.TAG_ROLE: "sweep"}).info.run_id
    with tempfile.TemporaryDirectory() as d:
        sweep_yaml = Path(d) / "sweep.yaml"
        sweep_yaml.write_text(yaml.safe_dump({"name": name, "trainable": "bast", "dataset": DATA_REL,
                                              "metric": metric, "mode": "min", "trials": len(trials),
                                              **({"space": space} if space else {})}, sort_keys=False))
        c.log_artifact(parent, str(sweep_yaml))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=optuna_storage(), direction="minimize",
                                load_if_exists=True)
    dists = {"model.sharing": optuna.distributions.CategoricalDistribution(["SP", "NSP"]),
             "model.integration": optuna.distributions.CategoricalDistribution(["add", "sub", "concat"]),
             "loss.name": optuna.distributions.CategoricalDistribution(["mse", "ad", "hybrid"]),
             "train.lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}

    for t in trials:
        cfg = base_config(**t.overrides)
        tags = {names.TAG_PARENT: parent, names.TAG_SWEEP: name, names.TAG_TRIAL: t.trial_id,
                names.TAG_TRAINABLE: "bast", names.TAG_DATASET: t.fingerprint or fingerprint,
                names.TAG_STATE: t.state, names.TAG_BEST_CHECKPOINT: f"/ray/{name}/{t.trial_id}/checkpoint_000001"}
        if t.state == "failed":
            tags[names.TAG_ERROR] = FAILED_ERROR
        run_id = c.create_run(exp, run_name=f"{name}-{t.trial_id}", tags=tags).info.run_id
        t.run_id = run_id
        c.log_batch(run_id, params=[Param(k, v) for k, v in tracking.params_of(cfg).items()])
        for epoch, val in enumerate(t.val_history, start=1):
            tracking.log_metrics_batch(run_id, {"epoch": epoch, "train_loss": val / 60, "val_loss": val / 55,
                                                "val_ad_deg": val, "val_mse": val / 400, "samples_per_s": 500.0},
                                       step=epoch)
        if t.test is not None:
            tracking.log_metrics_batch(run_id, {**t.test, "gpu_hours": 0.0, "params_m": 0.05}, step=0)
        if t.files:
            tracking.log_files(run_id, t.files, "evaluation")
        if t.model is not None:
            t.model_uri = tracking.log_model(run_id, spec, t.model, BASTConfig.model_validate(cfg))
        c.set_terminated(run_id, status="FAILED" if t.state == "failed" else
                         "KILLED" if t.state == "stopped" else "FINISHED")
        params = {k: t.overrides.get(k, cfg[k.split(".")[0]][k.split(".")[1]]) for k in dists}
        if t.state == "failed":
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                      state=optuna.trial.TrialState.FAIL))
        else:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=min(t.val_history)))
    c.set_terminated(parent, status="FINISHED")
    return {"parent": parent, "trials": trials}


def corrupt_logged_model(model_uri: str) -> None:
    """Overwrite the model's weights (artifacts/weights.pt) with junk; MLmodel and the rest stay."""
    import mlflow
    from urllib.parse import urlparse

    location = mlflow.get_logged_model(model_uri.split("/")[-1]).artifact_location
    path = Path(urlparse(location).path) if location.startswith("file:") else Path(location)
    files = [p for p in (path / "artifacts").rglob("*.pt") if p.is_file()]
    assert files, f"no serialized model under {path}"
    for p in files:
        p.write_bytes(b"not a pickle\x00" * 8)


@functools.cache
def sweep_world() -> World:
    from trainables.localization.builder import LocalizationBuildConfig, build

    home = Path(os.environ["BINSWEEP_HOME"])
    root = home / DATA_REL
    manifest = build(LocalizationBuildConfig(generated_sounds=24, azimuths=tuple(range(0, 360, 30)),
                                             environments=("anechoic",), test_fraction=0.25, shard_rows=256, seed=1),
                     root)
    fingerprint = manifest.fingerprint

    strong_cfg = base_config(**{"model.sharing": "NSP", "model.integration": "sub", "loss.name": "hybrid",
                                "train.lr": 3e-3})
    weak_cfg = base_config(**{"model.sharing": "SP", "model.integration": "add", "loss.name": "mse",
                              "train.lr": 1e-4})
    strong = _train(strong_cfg, epochs=2, seed=0)
    weak = _train(weak_cfg, epochs=0, seed=1)
    eval_dir = Path(tempfile.mkdtemp(prefix="binsweep-eval-"))
    strong_eval = _evaluate(strong, strong_cfg, out_dir=eval_dir)
    (eval_dir / "summary.txt").write_text(strong_eval.summary)
    weak_eval = _evaluate(weak, weak_cfg)
    top = lambda m: {k: v for k, v in m.items() if k.startswith("test_")}  # noqa: E731
    strong_test, weak_test = top(strong_eval.metrics), top(weak_eval.metrics)
    # the premise of every promotion test: the trained model is measurably better on the test split
    assert strong_test["test_ad_deg"] + 10 < weak_test["test_ad_deg"], (strong_test, weak_test)

    sweeps = {}
    sweeps["lb-weak"] = make_sweep("lb-weak", [
        Trial("0", {"model.sharing": "SP", "model.integration": "add", "loss.name": "mse", "train.lr": 1e-4},
              "completed", weak, [86.0, 84.0], weak_test)], fingerprint)
    sweeps["lb-corrupt"] = make_sweep("lb-corrupt", [
        Trial("0", {"model.sharing": "NSP", "model.integration": "sub", "loss.name": "hybrid", "train.lr": 3e-3},
              "completed", strong, [60.0, 48.0], strong_test)], fingerprint)
    corrupt_logged_model(sweeps["lb-corrupt"]["trials"][0].model_uri)
    sweeps["lb-otherdata"] = make_sweep("lb-otherdata", [
        Trial("0", {"model.sharing": "NSP", "model.integration": "sub", "loss.name": "hybrid", "train.lr": 3e-3},
              "completed", strong, [60.0, 48.0], strong_test, fingerprint="0000deadbeef0000")], "0000deadbeef0000")
    files = {**strong_eval.files, "summary": eval_dir / "summary.txt"}
    sweeps["lb-grid"] = make_sweep("lb-grid", [
        Trial("0", {"model.sharing": "NSP", "model.integration": "sub", "loss.name": "hybrid", "train.lr": 3e-3},
              "completed", strong, [60.0, 48.0], strong_test, files),
        Trial("1", {"model.sharing": "SP", "model.integration": "add", "loss.name": "mse", "train.lr": 1e-4},
              "completed", weak, [86.0, 84.0], weak_test),
        Trial("2", {"model.sharing": "NSP", "model.integration": "concat", "loss.name": "ad", "train.lr": 1e-3},
              "stopped", None, [150.0]),
        Trial("3", {"model.sharing": "SP", "model.integration": "sub", "loss.name": "hybrid", "loss.alpha": 0.3,
                    "train.lr": 2e-3}, "failed"),
    ], fingerprint)
    return World(root, fingerprint, strong, weak, strong_test, weak_test, sweeps)


@pytest.fixture(scope="module")
def world() -> World:
    return sweep_world()


# ------------------------------------------------------------------------------------------------------ tests


def test_leaderboard_ranks_trials_with_fallback_and_failed_last(world):
    # by default: the sweep's own metric (sweep.yaml: val_ad_deg, min), each trial's best validation epoch
    rows = lb.leaderboard("lb-grid")
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["rank"] for r in rows] == [1, 2, 3, None]
    best, weak, stopped, failed = rows
    assert best["metric"] == "val_ad_deg" and best["mode"] == "min" and best["value"] == 48.0
    assert best["value_source"] == "val_ad_deg (best epoch)" and best["objective_value"] == 48.0
    # the test metrics beside it
    assert best["metrics"]["test_ad_deg"] == pytest.approx(world.strong_test["test_ad_deg"])
    assert best["metrics"]["test_mse"] == pytest.approx(world.strong_test["test_mse"])
    assert weak["value"] == 84.0 and weak["metrics"]["test_ad_deg"] == pytest.approx(world.weak_test["test_ad_deg"])
    assert stopped["value"] == 150.0 and stopped["metrics"] == {} and not lb.is_fallback(stopped)
    assert stopped["state"] == "stopped" and stopped["epochs"] == 1
    assert failed["state"] == "failed" and failed["error"] == FAILED_ERROR and failed["value"] is None
    # ranked by the test metric when asked: an ASHA-stopped trial without a test score falls back to its best
    # validation epoch, and says so
    by_test = lb.leaderboard("lb-grid", metric="test_ad_deg")
    assert [r["trial"] for r in by_test] == ["0", "1", "2", "3"]
    assert by_test[0]["value"] == pytest.approx(world.strong_test["test_ad_deg"])
    assert by_test[0]["value_source"] == "test_ad_deg" and by_test[0]["objective_value"] == 48.0
    assert by_test[2]["value"] == 150.0 and by_test[2]["value_source"] == "val_ad_deg (best epoch)"
    assert lb.is_fallback(by_test[2]) and not lb.is_fallback(by_test[0])
    # key params: BAST's three always, then those that vary (alpha only differs in the failed trial)
    assert list(best["params"]) == ["model.sharing", "model.integration", "loss.name", "loss.alpha", "train.lr"]
    assert best["params"]["model.sharing"] == "NSP" and best["epochs"] == 2 and best["gpu_hours"] == 0.0
    assert best["run_name"] == "lb-grid-0" and best["sweep"] == "lb-grid"


def test_leaderboard_other_metric_best_epoch_and_top(world):
    rows = lb.leaderboard("lb-grid", metric="val_ad_deg", top=2)
    assert [(r["trial"], r["value"]) for r in rows] == [("0", 48.0), ("1", 84.0)]
    assert rows[0]["value_source"] == "val_ad_deg (best epoch)"
    thr = lb.leaderboard("lb-grid", metric="samples_per_s")  # higher is better; ties keep trial order
    assert [r["trial"] for r in thr][-1] == "3"


def test_leaderboard_formats_through_the_cli(world):
    runner = CliRunner()
    res = runner.invoke(app, ["leaderboard", "--sweep", "lb-grid", "--format", "csv"])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["trial"] for r in table] == ["0", "1", "2", "3"]
    assert float(table[0]["val_ad_deg"]) == 48.0
    assert float(table[0]["test_ad_deg"]) == pytest.approx(world.strong_test["test_ad_deg"])
    assert table[0]["test_ad_deg"] == repr(world.strong_test["test_ad_deg"])  # full precision for machines
    assert table[0]["model.integration"] == "sub" and table[3]["error"] == FAILED_ERROR
    assert "from" not in table[0] and "test_mse" in table[0]
    res = runner.invoke(app, ["leaderboard", "--sweep", "lb-grid", "--format", "csv", "--metric", "test_ad_deg"])
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert table[2]["from"] == "val_ad_deg (best epoch)" and table[0]["from"] == ""

    res = runner.invoke(app, ["leaderboard", "--sweep", "lb-grid", "--format", "json", "--top", "2"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 2 and rows[0]["rank"] == 1 and rows[0]["params"]["loss.name"] == "hybrid"

    res = runner.invoke(app, ["leaderboard", "--sweep", "lb-grid", "--format", "markdown"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("| rank | trial | run | state | val_ad_deg | test_ad_deg | test_mse |")
    assert "| model.sharing |" in lines[0]
    assert re.fullmatch(r"\|(---:?\|)+", lines[1]) and len(lines) == 2 + 4
    assert lines[-1].startswith("|  | 3 |") and "nan at epoch 1" in lines[-1]

    res = runner.invoke(app, ["leaderboard", "--sweep", "lb-grid"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "sweep lb-grid (bast), ranked by val_ad_deg (best epoch), lower is better" in res.stdout
    assert re.search(r"rank +trial +state +val_ad_deg +test_ad_deg +epochs +wall +sharing +integration +loss +alpha "
                     r"+lr\b", res.stdout)
    assert re.search(r"completed +48 +\d+\.\d+ +2 ", res.stdout) and "3e-3" in res.stdout and "1e-4" in res.stdout
    assert "(val)" not in res.stdout and max(len(ln) for ln in res.stdout.splitlines()) <= 120
    assert "failed trial 3 (lb-grid-3, " in res.stdout and FAILED_ERROR in res.stdout
    res = runner.invoke(app, ["leaderboard", "--sweep", "lb-grid", "--metric", "test_ad_deg"], env={"COLUMNS": "200"})
    assert "ranked by test_ad_deg, lower is better" in res.stdout and "150 (val)" in res.stdout
    assert re.search(r"rank +trial +state +test_ad_deg +val_ad_deg +epochs", res.stdout)


def test_compare_paper_matches_sharing_integration_loss(world):
    rows = {r["trial"]: r for r in lb.leaderboard("lb-grid", compare_paper=True)}
    assert rows["0"]["paper_ad_deg"] == 1.29 and rows["0"]["paper_mse_ref"] == 0.001  # NSP, sub, hybrid (abstract)
    assert rows["1"]["paper_ad_deg"] == 4.97 and rows["1"]["paper_mse_ref"] == 0.018  # SP, add, mse
    assert rows["2"]["paper_ad_deg"] == 2.39 and rows["2"]["paper_mse_ref"] is None  # NSP, concat, ad: no MSE given
    assert len(bast_paper.TABLE1) == 18
    res = CliRunner().invoke(app, ["leaderboard", "--sweep", "lb-grid", "--compare-paper", "-f", "csv"])
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [t["paper_ad_deg"] for t in table] == ["1.29", "4.97", "2.39", "2.03"]


def test_default_is_the_most_recent_sweep_and_unknown_names_are_clear(world):
    make_sweep("lb-latest", [Trial("0", {}, "running", None, [70.0])], world.fingerprint)
    rows = lb.leaderboard()
    assert [r["sweep"] for r in rows] == ["lb-latest"] and rows[0]["state"] == "running"
    res = CliRunner().invoke(app, ["leaderboard", "--sweep", "no-such-sweep"])
    assert res.exit_code == 2
    assert "no sweep named 'no-such-sweep'" in res.output and "lb-grid" in res.output


def test_report_is_self_contained_and_logged_to_the_parent(world, tmp_path):
    out = tmp_path / "grid.html"
    res = CliRunner().invoke(app, ["report", "lb-grid", "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no external assets
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # importance chart, 4 metric-vs-param plots (alpha varies only in the failed trial), and the best trial's polar,
    # hemifield, rollout and prediction plots
    assert len(images) >= 9
    import base64

    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for text in ("Leaderboard", "Parameter importances", "train.lr", "Attention rollout", "hemifield",
                 FAILED_ERROR, "1.29", "fANOVA over 3 completed trials"):
        assert text in page, text
    # SP-add and SP-sub trials on the anechoic KEMAR data (mirror-symmetric): the note says what limit follows
    assert "mirror-symmetric in anechoic" in page and "cannot tell left from right" in page
    assert "cannot go below 45.0°" in page and "at least 15.0°" in page  # 12 azimuths: 2 * 90° / 12 for SP-sub
    parent = world.sweeps["lb-grid"]["parent"]
    logged = [f.path for f in tracking.client().list_artifacts(parent)]
    assert "report.html" in logged and "sweep.yaml" in logged


def test_importances_need_enough_trials(world):
    from sweep_platform.report import param_importances

    imp, note = param_importances("lb-weak")
    assert imp is None and "only 1 completed trial" in note
    imp, note = param_importances("never-ran")
    assert imp is None and "no Optuna study named 'never-ran'" in note
    imp, _ = param_importances("lb-grid")
    assert set(imp) == {"model.sharing", "model.integration", "loss.name", "train.lr"}
    assert sum(imp.values()) == pytest.approx(1.0)


def test_test_metrics_and_key_params_come_from_the_trainable_spec():
    from types import SimpleNamespace

    from test_model_store import registered, tiny_spec

    def run(**params):
        return SimpleNamespace(data=SimpleNamespace(params=params))

    runs = [run(**{"model.width": "8", "train.lr": "0.1", "train.seed": "0"}),
            run(**{"model.width": "8", "train.lr": "0.2", "train.seed": "0"})]
    spec = tiny_spec("tiny_board", test_metrics=("test_err", "test_cost"), key_params=("model.width", "missing.key"))
    with registered(spec):
        assert lb.default_metric("tiny_board") == "test_err"
        assert lb.test_metrics("tiny_board") == ("test_err", "test_cost")
        assert lb.primary_metric("tiny_board") == ("val_err", "min")
        # the spec's key params first (those the runs have), then the ones that vary
        assert lb.key_params(runs, "tiny_board") == ["model.width", "train.lr"]
        row = {"rank": 1, "trial": "0", "run_name": "r", "run_id": "0" * 8, "trainable": "tiny_board",
               "params": {}, "metric": "test_err", "value": 1.0, "value_source": "test_err",
               "metrics": {"test_err": 1.0, "test_cost": 2.0, "test_other": 3.0}, "epochs": 1, "gpu_hours": 0.0,
               "state": "completed", "error": None}
        assert [c.header for c in lb.columns([row])] == ["rank", "trial", "run", "state", "test_err", "test_cost",
                                                          "epochs", "gpu_hours"]
    with registered(tiny_spec("tiny_board")):  # no test_metrics: the test counterpart of the primary metric
        assert lb.default_metric("tiny_board") == "test_err" and lb.test_metrics("tiny_board") == ()
    # a trainable that is no longer installed: its sweeps still list, by val_loss's test counterpart
    assert lb.default_metric("uninstalled") == "test_loss" and lb.primary_metric("uninstalled") == ("val_loss", "min")
    assert lb.key_params(runs, "uninstalled") == ["train.lr"]
