"""The sweep's Optuna searcher tells the study what happened to each trial, in Optuna's own semantics: stopped by
the scheduler -> PRUNED with its intermediate values, ran every epoch -> COMPLETE with its best value, error -> FAIL.
Driven here as Tune drives it (suggest, results, complete), then read back from the study's storage."""

import optuna
import yaml
from sweep_cases import GOOD

from sweep_platform.searcher import SweepSearch
from sweep_platform.storage import optuna_storage
from sweep_platform.sweep_file import parse_sweep


def spec(name: str, **over):
    data = yaml.safe_load(GOOD)  # ASHA with max_epochs 4, train.epochs 4, val_ad_deg (min)
    data.update(name=name, **over)
    return parse_sweep(data, f"{name}.yaml")


def feed(search: SweepSearch, tid: str, values: list[float], complete_with_last: bool = True, **extra):
    """Epochs 1..n reported; like Tune, the result that makes the scheduler stop the trial goes to
    on_trial_complete only."""
    search.suggest(tid)
    results = [{"epoch": e, "val_ad_deg": v, "params_m": 0.1, **extra} for e, v in enumerate(values, start=1)]
    for r in results[:-1] if complete_with_last else results:
        search.on_trial_result(tid, r)
    search.on_trial_complete(tid, results[-1] if complete_with_last else None)


def test_stopped_trials_are_pruned_and_completed_ones_keep_their_best_value():
    search = SweepSearch(spec("prune"), "prune")
    feed(search, "done", [40.0, 20.0, 12.5, 15.0])  # all 4 epochs; best at epoch 3
    feed(search, "cut", [50.0, 45.0])  # stopped by ASHA at epoch 2
    feed(search, "first-rung", [80.0])  # stopped on its first report (it reaches on_trial_complete only)
    search.suggest("broken")
    search.on_trial_complete("broken", None, error=True)

    study = optuna.load_study(study_name="prune", storage=optuna_storage())
    by_value = {t.number: t for t in study.trials}
    done, cut, first, broken = (by_value[i] for i in range(4))
    assert done.state.name == "COMPLETE" and done.value == 12.5  # the best epoch, not the last (15.0)
    assert done.intermediate_values == {1: 40.0, 2: 20.0, 3: 12.5, 4: 15.0}
    assert cut.state.name == "PRUNED" and cut.intermediate_values == {1: 50.0, 2: 45.0}
    assert first.state.name == "PRUNED" and first.intermediate_values == {1: 80.0}
    assert broken.state.name == "FAIL"
    assert study.best_trial.number == done.number  # pruned trials do not compete with the finished one


def test_multi_objective_trials_complete_with_the_values_of_their_best_epoch():
    search = SweepSearch(spec("multi", metric=None, mode=None,
                              objectives=[{"metric": "val_ad_deg", "mode": "min"},
                                          {"metric": "params_m", "mode": "min"}]), "multi")
    feed(search, "done", [40.0, 20.0, 30.0, 35.0])
    feed(search, "cut", [60.0])
    study = optuna.load_study(study_name="multi", storage=optuna_storage())
    done, cut = sorted(study.trials, key=lambda t: t.number)
    assert done.state.name == "COMPLETE" and done.values == [20.0, 0.1]
    assert cut.state.name == "PRUNED"


def test_the_searcher_survives_a_save_and_restore(tmp_path):
    """OptunaSearch.save/restore pickle __dict__ (Tune does it on every experiment checkpoint and on resume)."""
    search = SweepSearch(spec("saved"), "saved")
    search.suggest("t1")
    search.on_trial_result("t1", {"epoch": 1, "val_ad_deg": 30.0})
    search.save(str(tmp_path / "searcher.pkl"))
    again = SweepSearch(spec("saved"), "saved")
    again.restore(str(tmp_path / "searcher.pkl"))
    for e, v in ((2, 25.0), (3, 22.0)):
        again.on_trial_result("t1", {"epoch": e, "val_ad_deg": v})
    again.on_trial_complete("t1", {"epoch": 4, "val_ad_deg": 24.0})
    (t,) = optuna.load_study(study_name="saved", storage=optuna_storage()).trials
    assert t.state.name == "COMPLETE" and t.value == 22.0 and sorted(t.intermediate_values) == [1, 2, 3, 4]


def test_epochs_known_only_to_the_checkpoints_count(tmp_path):
    """A resumed trial whose last epochs were checkpointed but never reported (the driver died in between) ran all
    its epochs: it is COMPLETE, with the best value among all of them, not PRUNED at its last reported epoch."""
    from sweep_platform import storage
    from trainables.loop import CheckpointData

    history = [{"epoch": e, "val_ad_deg": v} for e, v in ((1, 40.0), (2, 30.0), (3, 20.0), (4, 18.0))]
    cp = CheckpointData({"epoch": 4}, {"trainable": "bast", "config": {}, "epoch": 4, "metrics": history[-1],
                                       "history": history})
    search = SweepSearch(spec("resumed"), "resumed")
    search.suggest("r1")
    storage.write_checkpoint(cp, "resumed", "r1")
    for r in history[:2]:
        search.on_trial_result("r1", {**r, "params_m": 0.1})
    search.on_trial_complete("r1", None)  # restarted after its last checkpoint: nothing more was reported
    (t,) = optuna.load_study(study_name="resumed", storage=optuna_storage()).trials
    assert t.state.name == "COMPLETE" and t.value == 18.0 and sorted(t.intermediate_values) == [1, 2, 3, 4]
