"""Every name the platform writes into MLflow and reads back: trial states and run tags (design.md's layout).

One module, so that the sweep driver, the MLflow callback, the leaderboard and the registry agree by construction.
"""

from __future__ import annotations

# -- trial states: the tag TAG_STATE of a child run ("running" and "interrupted" are not final)
COMPLETED = "completed"  # ran all its epochs
STOPPED = "stopped"  # stopped early by the scheduler (ASHA)
FAILED = "failed"  # ended in an error (TAG_ERROR says which)
RUNNING = "running"
INTERRUPTED = "interrupted"  # its sweep was stopped (Ctrl-C, killed driver); `binsweep resume` goes on
FINAL_STATES = (COMPLETED, STOPPED, FAILED)
SUCCEEDED_STATES = (COMPLETED, STOPPED)  # trials with a model: ranked, evaluated, promotable

# -- sweep states: TAG_STATE of a parent run
SWEEP_FINISHED, SWEEP_FAILED, SWEEP_INTERRUPTED = "finished", "failed", INTERRUPTED

# -- roles: TAG_ROLE
ROLE_SWEEP = "sweep"

# -- run tags
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: child run -> parent run
TAG_ROLE = "binsweep.role"
TAG_STATE = "binsweep.state"
TAG_ERROR = "binsweep.error"  # a failed run's error, one line
TAG_SWEEP = "binsweep.sweep_id"
TAG_TRIAL = "binsweep.trial_id"
TAG_TRAINABLE = "binsweep.trainable"
TAG_DATASET = "binsweep.dataset_fingerprint"
TAG_GIT = "binsweep.git_sha"
TAG_TRAIN_NAME = "binsweep.train_name"  # the Ray Train run (its checkpoints) behind an MLflow run
TAG_BEST_CHECKPOINT = "binsweep.best_checkpoint"
TAG_BEST_EPOCH = "binsweep.best_epoch"
TAG_EVAL_ERROR = "binsweep.eval_error"
TAG_RESTARTS = "binsweep.restarts"  # times the trial was restarted: `binsweep resume`, or a retry (max_failures)
TAG_RESUMED_FROM = "binsweep.resumed_from_epoch"  # the checkpoint's epoch Train went on from at the last restart
TAG_BEST_TRIAL = "binsweep.best_trial"  # on a parent run
TAG_BEST_RUN = "binsweep.best_run_id"  # on a parent run
TAG_RAY_JOB = "binsweep.ray_job_id"  # on a parent run: the submission id of the Ray job that ran the sweep
TAG_RAY_DASHBOARD = "binsweep.ray_dashboard_url"  # on a parent run: that cluster's dashboard, as the cluster sees it

# -- model version tags (the registry)
TAG_RUN = "binsweep.run_id"
TAG_SELECTION_METRIC = "binsweep.selection_metric"
TAG_COMPARED_WITH = "binsweep.compared_with"
TAG_PAIRED_TEST = "binsweep.paired_test"
TAG_GATE = "binsweep.gate"  # how the version took the alias: "first champion", "passed" or "forced"
TAG_FORCED = "binsweep.forced"  # "true" when --force overrode a refusal of the gate
TAG_FORCED_REASON = "binsweep.forced_reason"  # what --force overrode (the refusals, "; "-joined)

# -- Ray job metadata (binsweep submit)
JOB_SWEEP = "binsweep.sweep"
JOB_SWEEP_FILE = "binsweep.sweep_file"
JOB_COMMAND = "binsweep.command"  # sweep, resume, promote, report or leaderboard

# -- metrics logged once per trial at step 0, never per epoch (their latest value is the value)
TRIAL_METRICS = frozenset({"params_m", "gpu_hours", "wall_s", "startup_s"})
