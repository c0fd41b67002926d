"""Sweep files: loading the shipped files, defaults, the schema's own errors, trial configs, equality."""

from pathlib import Path

import pytest
from sweep_cases import GOOD, SHIPPED, SPACES, assert_refused, write

from sweep_platform.optuna_space import describe
from sweep_platform.sweep_file import load_sweep
from sweep_platform.sweep_spec import trial_config
from trainables.bast.config import BASTConfig


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweep_files_load(name):
    spec = load_sweep(SPACES / name)
    assert spec.trainable == "bast" and spec.metric == "val_ad_deg" and spec.mode == "min"
    assert spec.source == str(SPACES / name) and spec.name == Path(name).stem
    BASTConfig.model_validate(trial_config(spec, {}))  # the base alone is a valid config
    text = describe(spec)
    assert spec.name in text and f"trials     {spec.trials}" in text
    assert all(key in text for key in spec.space)


def test_shipped_files_say_what_the_brief_asks():
    smoke = load_sweep(SPACES / "bast_smoke.yaml")
    assert smoke.trials == 6 and smoke.resources.workers == 1 and smoke.sampler.type == "tpe"
    assert (smoke.scheduler.type, smoke.scheduler.grace_epochs, smoke.scheduler.max_epochs,
            smoke.scheduler.reduction_factor) == ("asha", 1, 4, 2)
    base = BASTConfig.model_validate(trial_config(smoke, {}))
    assert (base.model.layers_left, base.model.layers_right, base.model.layers_center) == (1, 1, 1)
    assert base.model.embed_dim in (32, 64) and base.train.epochs == 4
    assert base.data.root == "data/loc_smoke" and smoke.dataset_build["generated_sounds"] == 24

    paper = load_sweep(SPACES / "bast_paper_grid.yaml")
    cfg = BASTConfig.model_validate(trial_config(paper, {}))
    assert cfg.model == BASTConfig().model  # the paper's architecture defaults
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (50, 48, 1e-4)
    assert paper.scheduler.type == "none" and paper.resources.gpus_per_worker == 1 and paper.trials == 18

    tpe = load_sweep(SPACES / "bast_tpe.yaml")
    assert tpe.scheduler.type == "asha" and tpe.sampler.group
    assert tpe.space["model.layers_right"].else_.same_as == "model.layers_left"


def test_defaults_come_from_the_trainable_and_the_base(tmp_path):
    text = GOOD.replace("name: t\n", "").replace("scheduler: {type: asha, grace_epochs: 1, max_epochs: 4}\n", "")
    spec = load_sweep(write(tmp_path, "my_sweep.yaml", text))
    assert spec.name == "my_sweep"  # the file's stem
    assert (spec.metric, spec.mode) == ("val_ad_deg", "min")  # bast's primary metric
    assert spec.scheduler.type == "asha" and spec.scheduler.max_epochs == 4  # base train.epochs
    assert spec.concurrency == "auto" and spec.sampler.type == "tpe" and spec.resources.workers == 1
    # PyYAML reads 1e-3 as a string; the base keeps it and the trainable config types it.
    assert BASTConfig.model_validate(trial_config(spec, {})).train.lr == pytest.approx(1e-3)


def test_trial_config_nests_and_merges():
    spec = load_sweep(SPACES / "bast_smoke.yaml")
    before = spec.model_dump()
    cfg = trial_config(spec, {"model.sharing": "SP", "loss.name": "hybrid", "loss.alpha": 0.3, "train.lr": 2e-4})
    assert cfg["model"]["preset"] == "bast_tiny" and cfg["model"]["sharing"] == "SP"
    assert cfg["model"]["embed_dim"] == 32  # base kept next to the new key
    assert cfg["loss"] == {"name": "hybrid", "alpha": 0.3}
    assert cfg["train"]["lr"] == 2e-4 and cfg["train"]["epochs"] == 4
    assert cfg["data"]["root"] == "data/loc_smoke"
    assert spec.model_dump() == before  # the spec's base is not modified


def test_equality_ignores_the_source_file(tmp_path):
    a = load_sweep(write(tmp_path, "a.yaml", GOOD))
    b = load_sweep(write(tmp_path, "b.yaml", GOOD))
    assert a.source != b.source and a == b
    c = load_sweep(write(tmp_path, "c.yaml", GOOD.replace("trials: 4", "trials: 5")))
    assert a != c


def test_multi_objective(tmp_path):
    text = GOOD + "objectives: [{metric: val_ad_deg, mode: min}, {metric: params_m, mode: min}]\n"
    spec = load_sweep(write(tmp_path, "mo.yaml", text))
    assert spec.multi_objective and spec.metrics == ["val_ad_deg", "params_m"] and spec.modes == ["min", "min"]
    assert spec.metric == "val_ad_deg"  # the one ASHA uses
    assert "objectives val_ad_deg (min), params_m (min)" in describe(spec)


# (case, change to GOOD, substrings the message must hold besides the file name): what the YAML and the schema
# catch on their own (test_sweep_checks.py has the cases that need the trainable)
BAD = [
    ("syntax", lambda t: t.replace("trials: 4", "trials: [4"), ["(line 5, column", "not valid YAML"]),
    ("top_level_key", lambda t: t + "schedular: {type: none}\n",
     ["schedular: unknown key", "allowed:", "scheduler", "sampler"]),
    ("param_kind_key", lambda t: t + "  model.heads: {chioce: [2, 4]}\n",
     ["space.model.heads.chioce", "unknown key", "choice, int, float, fixed, same_as"]),
    ("unknown_trainable", lambda t: t.replace("trainable: bast", "trainable: bert"),
     ["trainable", "'bert'", "allowed: bast"]),
    ("concurrency", lambda t: t + "concurrency: 0\n", ["concurrency", "auto or a positive integer"]),
    ("param_not_mapping", lambda t: t + "  train.seed: [1, 2]\n", ["space.train.seed", "choice, int, float"]),
    ("two_kinds", lambda t: t + "  train.seed: {choice: [1, 2], fixed: 3}\n",
     ["space.train.seed", "exactly one of choice, int, float, fixed, same_as"]),
]


@pytest.mark.parametrize("case, change, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_files_name_the_file_the_key_and_what_is_allowed(tmp_path, case, change, expected):
    assert_refused(tmp_path, case, change, expected)
