"""Sweep files: loading, validation errors, the Optuna define-by-run space, the grid and trial configs."""

from collections import Counter
from pathlib import Path

import optuna
import pytest

from sweep_platform.configfile import ConfigError
from sweep_platform.space import (
    SweepSpec,
    complete_params,
    define_by_run,
    describe,
    grid,
    grid_size,
    load_sweep,
    make_sampler,
    trial_config,
)
from trainables.bast.config import BASTConfig

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
SHIPPED = ["bast_smoke.yaml", "bast_paper_grid.yaml", "bast_tpe.yaml"]

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A valid sweep that the bad cases below break one key at a time.
GOOD = """\
name: t
trainable: bast
dataset: data/loc_smoke
trials: 4
scheduler: {type: asha, grace_epochs: 1, max_epochs: 4}
base:
  model: {preset: bast_tiny}
  train: {epochs: 4, batch_size: 16, lr: 1e-3}
space:
  model.sharing: {choice: [SP, NSP]}
  loss.name: {choice: [mse, ad, hybrid]}
  loss.alpha: {float: [0.1, 0.9], when: {loss.name: hybrid}}
  model.layers_left: {int: [1, 3]}
  model.layers_right: {int: [1, 3], when: {model.sharing: NSP}, else: {same_as: model.layers_left}}
  train.lr: {float: [1.0e-5, 1.0e-3], log: true}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sample(spec: SweepSpec, study: optuna.Study) -> tuple[optuna.Trial, dict]:
    """One trial the way Ray's OptunaSearch makes it: suggested params plus the returned constants."""
    trial = study.ask()
    constants = define_by_run(spec)(trial)
    assert constants is None or isinstance(constants, dict)
    return trial, {**trial.params, **(constants or {})}


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


def test_define_by_run_gives_valid_configs_for_30_tpe_trials():
    spec = load_sweep(SPACES / "bast_tpe.yaml")
    study = optuna.create_study(sampler=make_sampler(spec), direction="minimize")
    seen = Counter()
    for _ in range(30):
        trial, params = sample(spec, study)
        cfg = BASTConfig.model_validate(trial_config(spec, params))
        m = cfg.model
        seen[m.sharing] += 1
        seen[cfg.loss.name == "hybrid"] += 1
        if m.sharing == "SP":
            assert m.layers_right == m.layers_left
            assert "model.layers_right" not in trial.params  # not searched, follows the left encoder
        else:
            assert trial.params["model.layers_right"] == m.layers_right
        assert m.emb_dropout == m.dropout  # same_as
        assert ("loss.alpha" in trial.params) == (cfg.loss.name == "hybrid")
        assert 1e-5 <= cfg.train.lr <= 1e-3 and cfg.data.root == "data/loc"
        study.tell(trial, cfg.train.lr * 1e3 + m.layers_left)  # any deterministic value lets TPE model
    assert seen["SP"] and seen["NSP"] and seen[True] and seen[False]


def test_conditional_alpha_only_for_hybrid():
    spec = load_sweep(SPACES / "bast_smoke.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    names = Counter()
    for _ in range(40):
        trial, params = sample(spec, study)
        loss = params["loss.name"]
        names[loss] += 1
        assert ("loss.alpha" in params) == (loss == "hybrid")
        if loss == "hybrid":
            assert 0.1 <= params["loss.alpha"] <= 0.9
        cfg = BASTConfig.model_validate(trial_config(spec, params))
        assert cfg.loss.name == loss
        study.tell(trial, 0.0)
    assert set(names) == {"mse", "ad", "hybrid"}


def test_ray_optuna_search_accepts_the_space():
    from ray.tune.search.optuna import OptunaSearch

    spec = load_sweep(SPACES / "bast_tpe.yaml")
    searcher = OptunaSearch(space=define_by_run(spec), sampler=make_sampler(spec), metric=spec.metric,
                            mode=spec.mode)
    for i in range(5):
        params = searcher.suggest(f"trial_{i}")
        cfg = BASTConfig.model_validate(trial_config(spec, params))
        assert params["model.emb_dropout"] == cfg.model.dropout  # constants reach the trial


def test_paper_grid_visits_each_of_the_18_configs_once():
    spec = load_sweep(SPACES / "bast_paper_grid.yaml")
    assert grid_size(spec) == 18 and spec.trials == 18
    assert grid(spec) == {"model.sharing": ["SP", "NSP"], "model.integration": ["add", "sub", "concat"],
                          "loss.name": ["mse", "ad", "hybrid"]}
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=sampler)
    triples = Counter()
    space = define_by_run(spec)

    def objective(trial):
        constants = space(trial) or {}
        params = {**trial.params, **constants}
        cfg = BASTConfig.model_validate(trial_config(spec, params))
        triples[(cfg.model.sharing, cfg.model.integration, cfg.loss.name)] += 1
        assert ("loss.alpha" in params) == (cfg.loss.name == "hybrid") and cfg.loss.alpha == 0.5
        return 1.0

    study.optimize(objective, n_trials=spec.trials)
    assert len(study.trials) == 18 and len(triples) == 18 and set(triples.values()) == {1}
    assert sampler.is_exhausted(study)


def test_grid_trials_default_to_and_must_equal_the_grid_size(tmp_path):
    grid_text = """\
trainable: bast
sampler: {type: grid}
scheduler: {type: none}
space:
  model.sharing: {choice: [SP, NSP]}
  loss.name: {choice: [mse, ad, hybrid]}
"""
    assert load_sweep(write(tmp_path, "g.yaml", grid_text)).trials == 6
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, "g7.yaml", grid_text + "trials: 7\n"))
    assert "g7.yaml: trials: 7 does not match the grid of 6 points (allowed: 6" in str(err.value)


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


def test_complete_params_restores_constants_from_optuna_params():
    spec = load_sweep(SPACES / "bast_tpe.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(10):
        trial, params = sample(spec, study)
        assert complete_params(spec, trial.params) == params
        study.tell(trial, 0.0)


def test_equality_ignores_the_source_file(tmp_path):
    a = load_sweep(write(tmp_path, "a.yaml", GOOD))
    b = load_sweep(write(tmp_path, "b.yaml", GOOD))
    assert a.source != b.source and a == b
    c = load_sweep(write(tmp_path, "c.yaml", GOOD.replace("trials: 4", "trials: 5")))
    assert a != c


def test_choice_values_are_typed_by_the_config(tmp_path):
    # PyYAML 1.1 reads 1e-4 as a string; the loaded space holds the float the config would.
    text = GOOD.replace("train.lr: {float: [1.0e-5, 1.0e-3], log: true}", "train.lr: {choice: [1e-4, 1e-3]}")
    spec = load_sweep(write(tmp_path, "typed.yaml", text))
    assert spec.space["train.lr"].choice == [1e-4, 1e-3]


def test_multi_objective(tmp_path):
    text = GOOD + "objectives: [{metric: val_ad_deg, mode: min}, {metric: params_m, mode: min}]\n"
    spec = load_sweep(write(tmp_path, "mo.yaml", text))
    assert spec.multi_objective and spec.metrics == ["val_ad_deg", "params_m"] and spec.modes == ["min", "min"]
    assert spec.metric == "val_ad_deg"  # the one ASHA uses
    assert "objectives val_ad_deg (min), params_m (min)" in describe(spec)


@pytest.mark.parametrize("kind, cls", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                       ("gp", optuna.samplers.GPSampler), ("nsga2", optuna.samplers.NSGAIISampler),
                                       ("qmc", optuna.samplers.QMCSampler)])
def test_make_sampler_is_seeded(tmp_path, kind, cls):
    spec = load_sweep(write(tmp_path, f"{kind}.yaml", GOOD + f"sampler: {{type: {kind}, seed: 7}}\n"))
    sampler = make_sampler(spec)
    assert isinstance(sampler, cls)
    if kind in ("random", "qmc"):  # independent samplers: the same seed gives the same first trials
        firsts = []
        for _ in range(2):
            study = optuna.create_study(sampler=make_sampler(spec))
            firsts.append([sample(spec, study)[1] for _ in range(3)])
        assert firsts[0] == firsts[1]


# (case, change to GOOD, substrings the message must hold besides the file name)
BAD = [
    ("syntax", lambda t: t.replace("trials: 4", "trials: [4"), ["(line 5, column", "not valid YAML"]),
    ("top_level_key", lambda t: t + "schedular: {type: none}\n",
     ["schedular: unknown key", "allowed:", "scheduler", "sampler"]),
    ("space_key_path", lambda t: t.replace("model.sharing: {choice", "model.shareing: {choice"),
     ["space.model.shareing", "no field 'shareing'", "allowed:", "model.sharing", "model.layers_left"]),
    ("param_kind_key", lambda t: t + "  model.heads: {chioce: [2, 4]}\n",
     ["space.model.heads.chioce", "unknown key", "choice, int, float, fixed, same_as"]),
    ("choice_value", lambda t: t.replace("[SP, NSP]", "[SP, XP]"),
     ["space.model.sharing.choice", "'XP'", "'SP' or 'NSP'"]),
    ("when_later_key", lambda t: t.replace("when: {loss.name: hybrid}", "when: {model.layers_left: 2}"),
     ["space.loss.alpha.when.model.layers_left", "defined after", "allowed:", "model.sharing, loss.name"]),
    ("when_unknown_key", lambda t: t.replace("when: {loss.name: hybrid}", "when: {loss.nam: hybrid}"),
     ["space.loss.alpha.when.loss.nam", "not a param", "model.sharing, loss.name"]),
    ("when_value", lambda t: t.replace("when: {loss.name: hybrid}", "when: {loss.name: hybird}"),
     ["space.loss.alpha.when.loss.name", "'hybird'", "mse, ad, hybrid"]),
    ("same_as_later", lambda t: t.replace("same_as: model.layers_left", "same_as: train.lr"),
     ["space.model.layers_right.else.same_as", "train.lr is defined after", "model.layers_left"]),
    ("unknown_trainable", lambda t: t.replace("trainable: bast", "trainable: bert"),
     ["trainable", "'bert'", "allowed: bast"]),
    ("unknown_metric", lambda t: t + "metric: val_acc\n", ["metric", "'val_acc'", "val_ad_deg", "val_mse"]),
    ("first_objective", lambda t: t + "objectives: [{metric: params_m}, {metric: val_ad_deg}]\n",
     ["objectives[0].metric", "'params_m'", "ASHA", "val_ad_deg"]),
    ("grace_over_max", lambda t: t.replace("grace_epochs: 1", "grace_epochs: 5"),
     ["scheduler.grace_epochs", "5 exceeds scheduler.max_epochs 4", "allowed: 1..4"]),
    ("grid_float_range", lambda t: t.replace("trials: 4", "sampler: {type: grid}"),
     ["space.train.lr", "float range", "allowed with grid: choice, fixed, same_as"]),
    ("grid_conditional_choice", lambda t: t.replace("trials: 4", "sampler: {type: grid}").replace(
        "loss.alpha: {float: [0.1, 0.9]", "loss.alpha: {choice: [0.3, 0.7]"),
     ["space.loss.alpha.when", "repeat grid points", "allowed with grid"]),
    ("base_field", lambda t: t.replace("batch_size: 16", "batch_sise: 16"),
     ["base.train.batch_sise", "unknown key", "batch_size"]),
    ("base_value", lambda t: t.replace("bast_tiny", "bast_huge"), ["base", "bast_huge", "bast_tiny"]),
    ("section_not_value", lambda t: t + "  model: {fixed: 1}\n", ["space.model", "section", "model.sharing"]),
    ("float_on_int", lambda t: t + "  model.heads: {float: [1, 4]}\n",
     ["space.model.heads.float", "integer field", "allowed: int"]),
    ("range_out_of_field", lambda t: t + "  model.dropout: {float: [0.0, 1.0]}\n",
     ["space.model.dropout.float", "1.0", "less than 1"]),
    ("max_over_epochs", lambda t: t.replace("max_epochs: 4", "max_epochs: 8"),
     ["scheduler.max_epochs", "exceeds train.epochs 4", "allowed: 1..4"]),
    ("trials_missing", lambda t: t.replace("trials: 4\n", ""), ["trials", "required", "positive integer"]),
    ("concurrency", lambda t: t + "concurrency: 0\n", ["concurrency", "auto or a positive integer"]),
    ("batch_vs_workers", lambda t: t + "resources: {workers: 3}\n",
     ["base.train.batch_size", "not divisible by resources.workers 3", "multiple of 3"]),
    ("param_not_mapping", lambda t: t + "  train.seed: [1, 2]\n", ["space.train.seed", "choice, int, float"]),
    ("two_kinds", lambda t: t + "  train.seed: {choice: [1, 2], fixed: 3}\n",
     ["space.train.seed", "exactly one of choice, int, float, fixed, same_as"]),
]


@pytest.mark.parametrize("case, change, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_files_name_the_file_the_key_and_what_is_allowed(tmp_path, case, change, expected):
    path = write(tmp_path, f"bad_{case}.yaml", change(GOOD))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_all_problems_are_reported_at_once(tmp_path):
    text = (GOOD.replace("[SP, NSP]", "[SP, XP]").replace("grace_epochs: 1", "grace_epochs: 5")
            + "metric: val_acc\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, "many.yaml", text))
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(str(tmp_path / "many.yaml")) for line in lines)


def test_cross_field_rules_are_left_to_sampling_time(tmp_path):
    # SP with a free layers_right loads (each value is valid on its own) ...
    text = GOOD.replace(", when: {model.sharing: NSP}, else: {same_as: model.layers_left}", "")
    spec = load_sweep(write(tmp_path, "free.yaml", text))
    # ... and the trainable's config type rejects the mismatched trial.
    with pytest.raises(ValueError, match="layers_left"):
        BASTConfig.model_validate(trial_config(spec, {"model.sharing": "SP", "model.layers_left": 1,
                                                      "model.layers_right": 2}))
