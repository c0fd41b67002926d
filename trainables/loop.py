"""The training loop every trainable shares: DDP, mixed precision, checkpoints, exact resume.

`train_loop(loop_config, session)` runs wherever its `Session` says: in a Ray Train worker (`train_worker`, the
`train_loop_per_worker` of a `TorchTrainer`, with `RayTrainSession`) or in a single-worker trial's own process (the
platform's session). One loop, whatever runs it. A trainable supplies a `Recipe` (its model, batches, loss and
validation sums); this module owns everything else:

- the model goes through the session's `prepare_model` (DDP across workers, gloo on CPU, NCCL on GPU);
- Adam with optional linear warmup and cosine decay, stepped per batch; gradient clipping; on CUDA bf16 autocast
  where the device supports it, else fp16 with a gradient scaler, and TF32 for what stays fp32 (said once in the log);
- the step never waits for the host: losses and validation sums stay on the device and are read once per epoch
  (the NaN guard reads the losses every NAN_CHECK_STEPS steps); batches are read ahead in a background thread;
- validation sums are all-reduced, so every rank reports the same metrics and rank 0's are the run's;
- a checkpoint every epoch (model, optimizer, scheduler, epoch, seeds, config), snapshotted by rank 0 and persisted
  by the session, which may do so while the next epoch trains;
- randomness is re-derived from (seed, epoch, rank) at the start of each epoch, so an epoch replayed after a restore
  draws exactly what it drew the first time: a resumed run ends with the metrics of an uninterrupted one;
- a NaN or inf loss stops the run with the epoch and step, never a silent NaN metric.

A trainable knows nothing of Tune or MLflow: metrics and checkpoints leave through the session only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch

log = logging.getLogger("binsweep.loop")

CHECKPOINT_FILE = "state.pt"
CONFIG_FILE = "config.json"


class Recipe(Protocol):
    """What a trainable supplies to the shared loop (built on every worker from its validated config)."""

    train: Any  # the config's `train` section: epochs, batch_size, lr, weight_decay, schedule, warmup_epochs, ...

    def build_model(self) -> torch.nn.Module: ...

    def batches(self, split: str, epoch: int, rank: int, world_size: int) -> Iterable[dict[str, torch.Tensor]]:
        """This rank's batches of `split` ("train" or "val"); every rank gets the same number of batches."""

    def steps_per_epoch(self, world_size: int) -> int: ...

    def loss(self, model: torch.nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, int]:
        """Mean training loss over the batch and the batch's sample count."""

    def validation_sums(self, model: torch.nn.Module, batch: dict,
                        device: torch.device) -> dict[str, tuple[torch.Tensor | float, int]]:
        """Per metric name: (sum over the batch's samples, sample count); the loop turns these into global means.
        Return the sum as a tensor on the device (not `.item()`): the loop reads all sums once per epoch."""


@dataclass(frozen=True)
class Fault:
    """A deliberate failure, for fault-tolerance tests and chaos drills (BINSWEEP_FAULT=kill:RANK:EPOCH:MARKER).

    At the start of 1-based `epoch`, worker `rank` kills its own process with SIGKILL (`kill`) or raises
    (`raise`), once: the marker file records that it happened, so the restored run goes on.
    """

    action: str
    rank: int
    epoch: int
    marker: str

    @classmethod
    def parse(cls, text: str | None) -> Fault | None:
        if not text:
            return None
        try:
            action, rank, epoch, marker = text.split(":", 3)
            fault = cls(action, int(rank), int(epoch), marker)
        except ValueError:
            raise ValueError(f"BINSWEEP_FAULT={text!r}: expected ACTION:RANK:EPOCH:MARKER_FILE, e.g. "
                             "kill:1:2:/tmp/killed") from None
        if action not in ("kill", "raise"):
            raise ValueError(f"BINSWEEP_FAULT action {action!r}: allowed kill or raise")
        return fault

    def maybe_fire(self, rank: int, epoch: int) -> None:
        if rank != self.rank or epoch != self.epoch or os.path.exists(self.marker):
            return
        Path(self.marker).write_text(f"{self.action} rank {rank} at epoch {epoch}, pid {os.getpid()}\n")
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault: rank {rank} at epoch {epoch}")


def per_worker_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch (train.batch_size is global: the same run on 1 or N workers)."""
    if batch_size % world_size:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the {world_size} workers; "
                         f"use a multiple of {world_size}")
    return batch_size // world_size


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps: linear warmup, then constant or cosine."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One torch seed per (seed, epoch, rank): dropout differs across ranks and epochs, and replays exactly."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63 - 1)


@dataclass(frozen=True)
class Precision:
    """How the steps run on a device: an autocast dtype (None = fp32) and whether fp16 needs a gradient scaler."""

    dtype: torch.dtype | None
    scaler: bool
    why: str  # said once in the log

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def choose_precision(device: torch.device, requested: str) -> Precision:
    """bf16 autocast where the GPU supports it, else fp16 with a gradient scaler; fp32 on request and on CPU (CPU
    autocast is slower than fp32 for these models: >10x for bf16 on a CPU without AVX-512 BF16, bench/README.md)."""
    if device.type != "cuda":
        return Precision(None, False, f"fp32 on {device.type} (train.precision={requested})")
    name = torch.cuda.get_device_name(device)
    if requested == "fp32":
        return Precision(None, False, f"fp32 with TF32 matmuls on {name}")
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, False, f"bf16 autocast on {name}")
    return Precision(torch.float16, True, f"fp16 autocast with a gradient scaler on {name} (no bf16 support)")


def autocast(device: torch.device, precision: str):
    """The autocast context of `choose_precision` (evaluation and benches use it alone, without a scaler)."""
    return choose_precision(device, precision).autocast(device)


def enable_tf32() -> None:
    """TF32 for fp32 matmuls and convolutions on Ampere and newer: fp32 steps at tensor-core speed, ~1e-3 relative
    error, which training tolerates (PyTorch leaves matmul TF32 off by default)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _all_reduce(values: list, device: torch.device) -> list[float]:
    """Sum floats and scalar tensors across ranks; one host-device transfer for all of them."""
    import torch.distributed as dist

    t = torch.stack([v.to(device, torch.float64) if isinstance(v, torch.Tensor)
                     else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under the wrappers the loop applies: DDP (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _to_cpu(value: Any) -> Any:
    """A copy on the CPU of every tensor in a (nested) state dict: training goes on changing the originals while the
    copy is written in the background."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


@dataclass
class CheckpointData:
    """One epoch's checkpoint, held in memory (CPU copies) until a session writes it where it belongs.

    `state` is everything a run needs to go on from the next epoch, loadable with torch.load(weights_only=True);
    `meta` (config.json) also keeps every epoch's metrics so far (`history`): a driver that missed some reports can log
    them from the newest checkpoint alone, even after older ones were deleted (num_to_keep). config.json is written
    last, so a folder with config.json holds a complete checkpoint."""

    state: dict
    meta: dict

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state, directory / CHECKPOINT_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True))


def snapshot(*, model, optimizer, scheduler, epoch: int, seed: int, trainable: str, config: dict, metrics: dict,
             history: list[dict] | None = None, scaler=None) -> CheckpointData:
    state = {
        "model": _to_cpu(unwrap(model).state_dict()),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,  # completed epochs
        "seed": seed,  # with the epoch, all a resumed run needs: randomness is re-derived per epoch (epoch_seed)
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    meta = {"trainable": trainable, "config": config, "epoch": epoch, "metrics": metrics,
            "history": history or [metrics]}
    return CheckpointData(state, meta)


def save_checkpoint(directory: Path, **parts) -> None:
    """Write one checkpoint into `directory` now (the arguments of `snapshot`)."""
    snapshot(**parts).write(Path(directory))


def load_checkpoint_state(directory: str | os.PathLike, map_location="cpu") -> dict:
    # weights_only: a checkpoint from shared storage must not be able to run code when loaded
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location=map_location, weights_only=True)


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


class Session(Protocol):
    """Where the loop runs and where its results go: a Ray Train worker (`RayTrainSession`), or a single-worker
    trial's own process (the platform supplies that one)."""

    rank: int
    world_size: int
    device: torch.device

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        """The run's newest checkpoint as a local folder, or None for a fresh start."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on the session's device (wrapped for DDP when world_size > 1)."""

    def report(self, metrics: dict[str, Any], checkpoint: CheckpointData | None) -> None:
        """One epoch's metrics, with rank 0's checkpoint; persisting it may go on while the next epoch trains."""

    def close(self) -> None:
        """Wait for checkpoints still being persisted (raises a failure to persist one)."""

    # Optional: a session may also define `step_progress(epoch, step, steps)`, called on rank 0 after every optimizer
    # step (step 0 at the start of an epoch). It must be cheap (throttle what it sends); sessions without it get no
    # calls.


class RayTrainSession:
    """The loop inside a Ray Train worker group: DDP through `prepare_model`, checkpoints uploaded by Train in the
    background (CheckpointUploadMode.ASYNC), kept and restored by Train."""

    STEP_POST_S = 2.0  # rank 0 sends its step to the progress channel at most this often

    def __init__(self, progress=None):
        import ray.train
        import ray.train.torch

        self._progress, self._posted = progress, 0.0  # an actor handle with `post.remote(dict)`, or None
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def latest_checkpoint(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(None)

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics, checkpoint):
        import ray.train

        if checkpoint is None:
            ray.train.report(metrics)
            return
        folder = Path(tempfile.mkdtemp(prefix="binsweep-ckpt-"))  # Train deletes it once uploaded
        checkpoint.write(folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=True)

    def close(self) -> None:
        pass  # Train waits for its uploads before the run ends

    def step_progress(self, epoch: int, step: int, steps: int) -> None:
        """Rank 0's step, for the driver's progress bar: fire-and-forget, at most every STEP_POST_S seconds (and at
        each epoch's first and last step), so a step never waits on it."""
        if self._progress is None or self.rank != 0:
            return
        now = time.monotonic()
        if step not in (0, steps) and now - self._posted < self.STEP_POST_S:
            return
        self._posted = now
        try:
            self._progress.post.remote({"kind": "step", "epoch": epoch, "step": step, "steps": steps})
        except Exception:  # noqa: BLE001 - progress never fails a run (e.g. the driver's actor is gone)
            self._progress = None


def train_worker(loop_config: dict) -> None:
    """`train_loop_per_worker` of every TorchTrainer: {"trainable": name, "config": dict, "fault": str | None,
    optionally "progress": an actor handle for `RayTrainSession.step_progress`}."""
    train_loop(loop_config, RayTrainSession(progress=loop_config.get("progress")))


NAN_CHECK_STEPS = 64  # the NaN guard reads the device's losses this often (one host-device sync per 64 steps)


def _first_bad_step(losses: list[torch.Tensor], first_step: int) -> int | None:
    finite = torch.isfinite(torch.stack(losses)).cpu()
    bad = (~finite).nonzero()
    return first_step + int(bad[0]) if len(bad) else None


def train_loop(loop_config: dict, session: Session) -> None:
    """The training loop of every trainable, on any session: {"trainable": name, "config": dict, "fault": str|None}."""
    from trainables.registry import get_trainable

    spec = get_trainable(loop_config["trainable"])
    config = spec.config_type.model_validate(loop_config["config"])
    fault = Fault.parse(loop_config.get("fault"))
    rank, world, device = session.rank, session.world_size, session.device
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)

    recipe = spec.recipe(config)
    tc = recipe.train
    precision = choose_precision(device, tc.precision)
    if device.type == "cuda":
        enable_tf32()
    if rank == 0:
        log.info("%s: %s", spec.name, precision.why)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP would broadcast rank 0's anyway)
    model = recipe.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    steps = recipe.steps_per_epoch(world)
    total, warmup = steps * tc.epochs, round(tc.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, tc.schedule))

    start_epoch, history = 0, []
    with session.latest_checkpoint() as d:
        if d is not None:
            state = load_checkpoint_state(d)
            history = list(read_checkpoint_config(d).get("history", []))
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            start_epoch = int(state["epoch"])

    model = session.prepare_model(model)
    _move_optimizer_state(optimizer, device)
    step_model = torch.compile(model) if tc.compile else model
    on_step = getattr(session, "step_progress", None) if rank == 0 else None  # optional in a Session

    try:
        for epoch in range(start_epoch + 1, tc.epochs + 1):  # 1-based: `epoch` = epochs completed after this one
            if fault is not None:
                fault.maybe_fire(rank, epoch)
            torch.manual_seed(epoch_seed(tc.seed, epoch, rank))
            model.train()
            t0 = epoch_start = time.perf_counter()
            loss_sum, seen = _train_epoch(spec.name, recipe, model, step_model, optimizer, scheduler, scaler,
                                          precision, device, epoch, rank, world, tc.grad_clip,
                                          on_step=on_step, steps=steps)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds = time.perf_counter() - t0
            sums = _validate(recipe, step_model, precision, device, epoch, rank, world)

            names = sorted(sums)
            flat = [loss_sum, torch.tensor(float(seen)), torch.tensor(train_seconds)]
            flat += [v for k in names for v in sums[k]]
            red = _all_reduce(flat, device)  # the epoch's one read of the device
            metrics = {"epoch": epoch, "train_loss": red[0] / max(red[1], 1),
                       # the slowest rank sets the pace: summed seconds / world = mean, close enough for a rate
                       "samples_per_s": red[1] / max(red[2] / world, 1e-9),
                       "lr": optimizer.param_groups[0]["lr"],
                       "epoch_s": time.perf_counter() - epoch_start}  # training + validation, this rank
            for i, name in enumerate(names):
                s, n = red[3 + 2 * i], red[4 + 2 * i]
                metrics[name] = s / n if n else float("nan")
            bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"{spec.name}: {', '.join(bad)} not finite after epoch {epoch}")

            history = [h for h in history if h.get("epoch", 0) < epoch] + [metrics]  # a replayed epoch replaces its own
            checkpoint = None
            if rank == 0:
                checkpoint = snapshot(model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                                      seed=tc.seed, trainable=spec.name, config=loop_config["config"],
                                      metrics=metrics, history=history, scaler=scaler)
            session.report(metrics, checkpoint)
    finally:
        session.close()


def _train_epoch(name, recipe, model, step_model, optimizer, scheduler, scaler, precision, device, epoch, rank,
                 world, grad_clip, on_step=None, steps: int = 0) -> tuple[torch.Tensor, int]:
    """One epoch of optimizer steps; the loss sum stays on the device (no host sync per step)."""
    from trainables.prefetch import prefetch

    if on_step is not None:
        on_step(epoch, 0, steps)

    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen, pending, first = 0, [], 1
    for step, batch in enumerate(prefetch(recipe.batches("train", epoch, rank, world), device), start=1):
        with precision.autocast(device):
            loss, n = recipe.loss(step_model, batch, device)
        pending.append(loss.detach().float())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        loss_sum += loss.detach().double() * n
        seen += n
        if len(pending) == NAN_CHECK_STEPS:
            _nan_guard(name, pending, first, epoch, rank)
            first, pending = step + 1, []
        if on_step is not None:
            on_step(epoch, step, steps)
    if pending:
        _nan_guard(name, pending, first, epoch, rank)
    return loss_sum, seen


def _nan_guard(name: str, losses: list[torch.Tensor], first_step: int, epoch: int, rank: int) -> None:
    bad = _first_bad_step(losses, first_step)
    if bad is not None:
        value = losses[bad - first_step].item()
        raise FloatingPointError(
            f"{name}: training loss is {value} at epoch {epoch}, step {bad} (rank {rank}); "
            "lower train.lr, turn on train.grad_clip, or check the data for NaN")


def _validate(recipe, step_model, precision, device, epoch, rank, world) -> dict[str, list]:
    """Validation sums per metric, [sum, count], accumulated on the device."""
    from trainables.prefetch import prefetch

    step_model.eval()
    sums: dict[str, list] = {}
    with torch.no_grad():
        for batch in prefetch(recipe.batches("val", epoch, rank, world), device):
            with precision.autocast(device):
                part = recipe.validation_sums(step_model, batch, device)
            for name, (s, n) in part.items():
                acc = sums.setdefault(name, [torch.zeros((), dtype=torch.float64, device=device), 0.0])
                acc[0] = acc[0] + (s.detach().double() if isinstance(s, torch.Tensor) else float(s))
                acc[1] += n
    return {k: [v[0], torch.tensor(float(v[1]))] for k, v in sums.items()}


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)
