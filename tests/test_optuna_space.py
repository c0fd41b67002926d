"""The Optuna side of a sweep: the define-by-run space, conditions, the grid, complete params, seeded samplers."""

from collections import Counter

import optuna
import pytest
from sweep_cases import GOOD, SPACES, write

from sweep_platform.optuna_space import complete_params, define_by_run, grid, grid_size, make_sampler
from sweep_platform.sweep_file import load_sweep
from sweep_platform.sweep_spec import SweepSpec, trial_config
from trainables.bast.config import BASTConfig, LossConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(spec: SweepSpec, study: optuna.Study) -> tuple[optuna.Trial, dict]:
    """One trial the way Ray's OptunaSearch makes it: suggested params plus the returned constants."""
    trial = study.ask()
    constants = define_by_run(spec)(trial)
    assert constants is None or isinstance(constants, dict)
    return trial, {**trial.params, **(constants or {})}


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
        assert ("loss.alpha" in params) == (cfg.loss.name == "hybrid")
        assert cfg.loss.alpha == (0.8627 if cfg.loss.name == "hybrid" else LossConfig().alpha)
        return 1.0

    study.optimize(objective, n_trials=spec.trials)
    assert len(study.trials) == 18 and len(triples) == 18 and set(triples.values()) == {1}
    assert sampler.is_exhausted(study)


def test_complete_params_restores_constants_from_optuna_params():
    spec = load_sweep(SPACES / "bast_tpe.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(10):
        trial, params = sample(spec, study)
        assert complete_params(spec, trial.params) == params
        study.tell(trial, 0.0)


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
