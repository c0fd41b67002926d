"""The per-worker training loop every trainable shares: DDP, mixed precision, checkpoints, exact resume.

Runs inside a Ray Train worker (`train_worker` is the `train_loop_per_worker` of a `TorchTrainer`). A trainable
supplies a `Recipe` (its model, batches, loss and validation sums); this module owns everything else:

- the model is wrapped by `ray.train.torch.prepare_model` (DDP across workers, gloo on CPU, NCCL on GPU);
- Adam with optional linear warmup and cosine decay, stepped per batch; gradient clipping; bf16 autocast on CUDA;
- validation sums are all-reduced, so every rank reports the same metrics and rank 0's are the run's;
- a checkpoint every epoch (model, optimizer, scheduler, epoch, seeds, config), written by rank 0;
- randomness is re-derived from (seed, epoch, rank) at the start of each epoch, so an epoch replayed after a restore
  draws exactly what it drew the first time: a resumed run ends with the metrics of an uninterrupted one;
- a NaN or inf loss stops the run with the epoch and step, never a silent NaN metric.

A trainable knows nothing of Tune or MLflow: metrics leave through `ray.train.report` only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch

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

    def validation_sums(self, model: torch.nn.Module, batch: dict, device: torch.device) -> dict[str, tuple[float, int]]:
        """Per metric name: (sum over the batch's samples, sample count); the loop turns these into global means."""


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


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA ("auto" or "bf16"); fp32 elsewhere (CPU autocast is slower than fp32 for these models)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
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


def save_checkpoint(directory: Path, *, model, optimizer, scheduler, epoch: int, seed: int, trainable: str,
                    config: dict, metrics: dict, history: list[dict] | None = None) -> None:
    """Everything a run needs to go on from the next epoch, loadable with torch.load(weights_only=True).

    config.json also keeps every epoch's metrics so far (`history`): a driver that missed some reports can log them
    from the newest checkpoint alone, even after Train has deleted the older ones (CheckpointConfig.num_to_keep)."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,  # completed epochs
        "seed": seed,  # with the epoch, all a resumed run needs: randomness is re-derived per epoch (epoch_seed)
    }
    torch.save(state, directory / CHECKPOINT_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps({"trainable": trainable, "config": config, "epoch": epoch,
                                                     "metrics": metrics, "history": history or [metrics]},
                                                    indent=2, sort_keys=True))


def load_checkpoint_state(directory: str | os.PathLike, map_location="cpu") -> dict:
    # weights_only: a checkpoint from shared storage must not be able to run code when loaded
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location=map_location, weights_only=True)


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


def train_worker(loop_config: dict) -> None:
    """`train_loop_per_worker` for every trainable: {"trainable": name, "config": dict, "fault": str | None}."""
    import ray.train
    import ray.train.torch

    from trainables.registry import get_trainable

    spec = get_trainable(loop_config["trainable"])
    config = spec.config_type.model_validate(loop_config["config"])
    fault = Fault.parse(loop_config.get("fault"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)

    recipe = spec.recipe(config)
    tc = recipe.train
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP would broadcast rank 0's anyway)
    model = recipe.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps = recipe.steps_per_epoch(world)
    total, warmup = steps * tc.epochs, round(tc.warmup_epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, tc.schedule))

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint_state(d)
            history = list(read_checkpoint_config(d).get("history", []))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])

    model = ray.train.torch.prepare_model(model)  # moves to device; DDP when world > 1
    _move_optimizer_state(optimizer, device)
    step_model = torch.compile(model) if tc.compile else model

    for epoch in range(start_epoch + 1, tc.epochs + 1):  # 1-based: `epoch` = epochs completed after this one
        if fault is not None:
            fault.maybe_fire(rank, epoch)
        torch.manual_seed(epoch_seed(tc.seed, epoch, rank))
        model.train()
        loss_sum, seen = 0.0, 0
        t0 = time.perf_counter()
        for step, batch in enumerate(recipe.batches("train", epoch, rank, world), start=1):
            with autocast(device, tc.precision):
                loss, n = recipe.loss(step_model, batch, device)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(
                    f"{spec.name}: training loss is {loss.item()} at epoch {epoch}, step {step} (rank {rank}); "
                    "lower train.lr, turn on train.grad_clip, or check the data for NaN")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * n
            seen += n
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0

        model.eval()
        sums: dict[str, list[float]] = {}
        with torch.no_grad():
            for batch in recipe.batches("val", epoch, rank, world):
                with autocast(device, tc.precision):
                    part = recipe.validation_sums(step_model, batch, device)
                for name, (s, n) in part.items():
                    acc = sums.setdefault(name, [0.0, 0.0])
                    acc[0] += float(s)
                    acc[1] += n
        names = sorted(sums)
        flat = [loss_sum, float(seen), train_seconds] + [v for k in names for v in sums[k]]
        red = _all_reduce(flat, device)
        metrics = {"epoch": epoch, "train_loss": red[0] / max(red[1], 1),
                   # the slowest rank sets the pace: summed seconds / world = mean, close enough for a rate
                   "samples_per_s": red[1] / max(red[2] / world, 1e-9),
                   "lr": optimizer.param_groups[0]["lr"]}
        for i, name in enumerate(names):
            s, n = red[3 + 2 * i], red[4 + 2 * i]
            metrics[name] = s / n if n else float("nan")
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"{spec.name}: {', '.join(bad)} not finite after epoch {epoch}")

        history = [h for h in history if h.get("epoch", 0) < epoch] + [metrics]  # an epoch replayed replaces its own
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="binsweep-ckpt-") as d:
                save_checkpoint(Path(d), model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                                seed=tc.seed, trainable=spec.name, config=loop_config["config"], metrics=metrics,
                                history=history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)
