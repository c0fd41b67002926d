"""The training loop's session inside a single-worker trial: the Tune function's own process, no Train worker group.

Why not a one-worker TorchTrainer: each one starts a Train controller, a worker group, a DatasetManager and a
PreemptionWatcher, 15-30 s per trial on two cores (bench/README.md), for a trial that needs none of them. Why not
Train's local mode (`ScalingConfig(num_workers=0)`): in Ray 2.60 it keeps the last report in memory only, with no
checkpoint persistence, no restore and no callbacks, so neither resume nor MLflow would work.

So the trial runs `trainables.loop.train_loop` itself, with this session:
- the trial's device: the GPU Ray gave the trial (`tune.with_resources`), else the CPU;
- checkpoints: snapshotted by the loop, persisted here on a background thread while the next epoch trains, under the
  trial's run folder (storage.run_dir: the layout a multi-worker trial's Train run has), keeping the latest and the
  `keep` best by the sweep's first objective;
- restore: the newest complete checkpoint in that folder, so a trial that Tune retries (FailureConfig max_failures)
  or that `binsweep resume` restarts goes on from its last epoch;
- metrics: `ray.tune.report`, with the trial's constants (params_m) and the checkpoint's path;
- the trial's last epoch: before it is reported, the best checkpoint is scored on the test split and the model is
  logged (`trial_eval`), because a scheduler may stop the trial as soon as it sees that report (ASHA stops at max_t).
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch

from sweep_platform import storage, tracking

log = logging.getLogger(__name__)


def trial_device() -> torch.device:
    """The GPU that Ray assigned to this trial (CUDA_VISIBLE_DEVICES names only it), else the CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


class TrialSession:
    """`trainables.loop.Session` of a single-worker trial; see the module docstring."""

    rank, world_size = 0, 1

    def __init__(self, sweep_name: str, trial_id: str, *, metric: str, mode: str, keep: int, final_epoch: int,
                 extra: dict[str, float], before_final_report: Callable[[], None] | None = None,
                 device: torch.device | None = None):
        self.sweep_name, self.trial_id = sweep_name, trial_id
        self.metric, self.mode, self.keep, self.final_epoch = metric, mode, keep, final_epoch
        self.extra = dict(extra)
        self.before_final_report = before_final_report
        self.device = device or trial_device()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="binsweep-ckpt")
        self._pending: Future | None = None

    def latest_checkpoint(self):
        kept = storage.trial_checkpoints(self.sweep_name, self.trial_id)
        if not kept:
            return contextlib.nullcontext(None)
        return storage.checkpoint_dir(kept[-1][1])

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint) -> None:
        import ray.tune

        self._wait()  # one checkpoint in flight at most: a slow store slows training rather than filling memory
        path = None
        if checkpoint is not None:
            path = storage.checkpoint_path(self.sweep_name, self.trial_id, checkpoint.epoch)
            self._pending = self._pool.submit(self._persist, checkpoint)
        if int(metrics.get("epoch", 0)) >= self.final_epoch and self.before_final_report is not None:
            self._wait()  # the evaluation needs every checkpoint on storage
            self.before_final_report()
            self.before_final_report = None
        ray.tune.report({**metrics, **self.extra, **({"checkpoint_path": path} if path else {})})

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a failure to persist fails the trial here, naming the epoch's storage error

    def _persist(self, checkpoint) -> None:
        storage.write_checkpoint(checkpoint, self.sweep_name, self.trial_id)
        self._prune()

    def _prune(self) -> None:
        """Keep the newest checkpoint (to resume from) and the `keep` best by the metric (to evaluate)."""
        kept = storage.trial_checkpoints(self.sweep_name, self.trial_id)
        scored = [(m.get(self.metric), e, p) for e, p, m in kept if tracking.is_number(m.get(self.metric))]
        scored.sort(key=lambda x: x[0], reverse=self.mode == "max")
        wanted = {p for _, _, p in scored[:self.keep]} | ({kept[-1][1]} if kept else set())
        for _, path, _ in kept:
            if path not in wanted:
                storage.delete_checkpoint(path)
