"""The sweep's Optuna searcher: Ray's OptunaSearch on the sweep's define-by-run space and study, telling Optuna what
really happened to each trial.

Ray's OptunaSearch tells a trial that the scheduler stopped early as COMPLETE with the value of the epoch it was
stopped at (reference/platform.md §2), so TPE and the report's fANOVA importances would learn mostly from epoch-3
values as if they were final. Here, in Optuna's own semantics:
- every epoch's value is an intermediate value at step = epoch (monotonic across restores, unlike Tune's
  training_iteration);
- a trial stopped before its last epoch is told as PRUNED (Optuna keeps its intermediate values; TPE treats pruned
  trials as such);
- a trial that ran all its epochs is told as COMPLETE with its best value (the epoch whose checkpoint is evaluated),
  for every objective at that epoch; epochs that only its checkpoints know (a resumed trial) count too;
- a trial that failed is told as FAIL; if `binsweep resume --retry-failed` runs it again and it completes, its
  outcome joins the study as a new COMPLETE trial with the same parameters (Optuna never changes a finished trial).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from sweep_platform import storage, tracking
from sweep_platform.sweep_spec import SweepSpec

log = logging.getLogger(__name__)
TRIAL_ATTR = "ray_trial_id"


class _Space:
    """`optuna_space.define_by_run(spec)` as a picklable object: OptunaSearch.save pickles the searcher, space included,
    with plain pickle every time Tune saves the experiment, and a closure cannot be pickled."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def __call__(self, trial):
        from sweep_platform.optuna_space import define_by_run

        return define_by_run(self.spec)(trial)


class SweepSearch(OptunaSearch):
    """OptunaSearch with pruning and best values; see the module docstring. Its state (configs, best results) is
    part of `__dict__`, which OptunaSearch.save/restore pickle, so it survives `binsweep resume`."""

    def __init__(self, spec: SweepSpec, study_name: str, parent_run_id: str | None = None):
        from sweep_platform.optuna_space import make_sampler

        multi = spec.multi_objective
        super().__init__(space=_Space(spec), metric=spec.metrics if multi else spec.metric,
                         mode=spec.modes if multi else spec.mode, sampler=make_sampler(spec),
                         storage=storage.optuna_rdb(), study_name=study_name)
        self._sweep, self._sweep_name = spec, study_name  # the study is named after the sweep
        self._configs: dict[str, dict] = {}
        self._best: dict[str, dict] = {}  # trial id -> the result of its best epoch so far
        self._last_epoch: dict[str, int] = {}
        describe_study(self._ot_study, spec, study_name, parent_run_id)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._configs[trial_id] = config
            self._ot_trials[trial_id].set_user_attr(TRIAL_ATTR, trial_id)  # which Tune trial this Optuna trial is
        return config

    def _first(self, result: dict) -> Any:
        return result.get(self._sweep.metrics[0])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._note(trial_id, result)
        value = self._first(result)
        if isinstance(self.metric, list) or trial_id in self._completed_trials or not tracking.is_number(value):
            return  # Optuna keeps no intermediate values for multi-objective studies
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:  # an epoch replayed after a restore is ignored by Optuna (sweep._tune_env)
            ot_trial.report(float(value), int(result.get("epoch", 0)))

    def _note(self, trial_id: str, result: dict) -> None:
        """The trial's last epoch and best result so far."""
        epoch = int(result.get("epoch", 0))
        self._last_epoch[trial_id] = max(self._last_epoch.get(trial_id, 0), epoch)
        value = self._first(result)
        if tracking.is_number(value):
            best = self._best.get(trial_id)
            if tracking.better(value, self._first(best) if best else None, self._sweep.modes[0]):
                self._best[trial_id] = dict(result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)  # Ray's own warning / bookkeeping
        from sweep_platform.trial import trial_epochs

        ot_trial = self._ot_trials[trial_id]
        if result and not error:  # a result that made the scheduler stop the trial reaches only this method
            self.on_trial_result(trial_id, result)
        if not error:
            # epochs whose checkpoint was saved but whose result never reached Tune (the driver died in between and
            # the resumed trial went on after them): the history the loop keeps in every checkpoint has them
            constants = self._best.get(trial_id) or result or {}  # e.g. params_m, which checkpoints do not keep
            for epoch, (metrics, _) in sorted(storage.trial_history(self._sweep_name, trial_id).items()):
                if epoch > self._last_epoch.get(trial_id, 0):
                    self.on_trial_result(trial_id, {**constants, **metrics, "epoch": epoch})
        last = self._last_epoch.get(trial_id, 0)
        best = self._best.get(trial_id)
        config = self._configs.get(trial_id)
        if error:
            state, values = optuna.trial.TrialState.FAIL, None
        elif best is None or (config is not None and last < trial_epochs(self._sweep, config)):
            state, values = optuna.trial.TrialState.PRUNED, None
        else:
            state = optuna.trial.TrialState.COMPLETE
            values = [best.get(m) for m in self._sweep.metrics] if isinstance(self.metric, list) else self._first(best)
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is used up, which only an optimize() loop may do; the
            # trial is stored before that (Optuna's tell sets the state in a finally)
            if "Study.stop" not in str(exc):
                log.warning("Optuna refused trial %s (%s): %s", trial_id, state.name, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a NaN objective: Optuna refuses it, the sweep goes on
            log.warning("Optuna refused trial %s (%s): %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)
        self._configs.pop(trial_id, None)


def describe_study(study, spec: SweepSpec, sweep_name: str, parent_run_id: str | None) -> None:
    """What optuna-dashboard shows of the sweep: the objectives named after the sweep's metrics (not "Objective 0"),
    and the sweep's name, MLflow parent run and trainable as user attributes. Never fails the sweep."""
    attrs = {"sweep": sweep_name, "trainable": spec.trainable}
    if parent_run_id:
        attrs["mlflow_parent_run_id"] = parent_run_id
    import warnings

    try:
        if study.metric_names != list(spec.metrics):
            with warnings.catch_warnings():  # "set_metric_names is experimental" (Optuna 5 still says so)
                warnings.simplefilter("ignore")
                study.set_metric_names(list(spec.metrics))
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
    except Exception as exc:  # noqa: BLE001 - labels for the dashboard are not worth failing a sweep for
        log.warning("Optuna study %s: could not record the sweep's metric names and attributes: %s", sweep_name, exc)


class RetriedTrials(Callback):
    """Tells Optuna how a trial that it already knows as FAIL ended when `binsweep resume --retry-failed` ran it
    again. The searcher never hears of such a trial (Tune's ConcurrencyLimiter forwards only the trials it suggested
    in this session), and Optuna never changes a finished trial: the outcome joins the study as a new trial with the
    same parameters, COMPLETE with its best value (or PRUNED), its `retry_of` naming the failed one."""

    def __init__(self, spec: SweepSpec, study_name: str):
        self.spec, self.study_name = spec, study_name

    def on_trial_complete(self, iteration, trials, trial, **info):
        tell_retried(self.spec, self.study_name, trial.trial_id, trial.config)


def tell_retried(spec: SweepSpec, study_name: str, trial_id: str, config: dict) -> None:
    import optuna

    from sweep_platform.trial import trial_epochs

    study = optuna.load_study(study_name=study_name, storage=storage.optuna_rdb())
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(TRIAL_ATTR) == trial_id]
    failed = [t for t in mine if t.state == optuna.trial.TrialState.FAIL]
    if not failed or any(t.state != optuna.trial.TrialState.FAIL for t in mine):
        return  # not a retried failure, or already told
    first = spec.metrics[0]
    scored = [(e, m) for e, (m, _) in sorted(storage.trial_history(study_name, trial_id).items())
              if tracking.is_number(m.get(first))]
    if not scored:
        return
    best = scored[0][1]
    for _, m in scored[1:]:
        if tracking.better(m[first], best[first], spec.modes[0]):
            best = m
    done = scored[-1][0] >= trial_epochs(spec, config)
    values = ({"values": [best.get(m) for m in spec.metrics]} if spec.multi_objective else {"value": best[first]}) \
        if done else {}
    try:
        study.add_trial(optuna.trial.create_trial(
            params=failed[-1].params, distributions=failed[-1].distributions,
            state=optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.PRUNED,
            intermediate_values=None if spec.multi_objective else {e: float(m[first]) for e, m in scored},
            user_attrs={TRIAL_ATTR: trial_id, "retry_of": failed[-1].number}, **values))
    except Exception as exc:  # noqa: BLE001 - e.g. a NaN objective: Optuna refuses it, the sweep goes on
        log.warning("Optuna refused the retried trial %s: %s", trial_id, exc)
