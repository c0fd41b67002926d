"""Train and score a localizer in this process, without Ray: the shared loop (`trainables.loop.train_loop`) on a
session that keeps the newest checkpoint in memory. For benches and learning checks that compare trained models
(bench/room_generalisation.py, tests/test_random_rooms.py); sweeps and `binsweep train` use the platform's sessions.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from trainables.audio import BinauralFrontEnd
from trainables.bast.metrics import angular_error_deg
from trainables.localization.reader import ShardReader


class InProcessSession:
    """`trainables.loop.Session` of one worker in this process: every epoch's metrics and the last model state."""

    rank, world_size = 0, 1

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.history: list[dict[str, Any]] = []
        self.model_state: dict | None = None

    def latest_checkpoint(self):
        return contextlib.nullcontext(None)  # always a fresh run

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics, checkpoint) -> None:
        self.history.append(dict(metrics))
        if checkpoint is not None:
            self.model_state = checkpoint.state["model"]

    def close(self) -> None:
        pass


def train(trainable: str, config: dict, device: str = "cpu") -> tuple[torch.nn.Module, list[dict]]:
    """Train `trainable` with `config` (its config section as a dict) -> (the trained model in eval mode, per-epoch
    metrics)."""
    from trainables.loop import train_loop
    from trainables.registry import get_trainable

    session = InProcessSession(device)
    train_loop({"trainable": trainable, "config": config}, session)
    spec = get_trainable(trainable)
    model = spec.build_model(spec.config_type.model_validate(config))
    model.load_state_dict(session.model_state)
    return model.to(device).eval(), session.history


@torch.no_grad()
def ad_by_environment(model: torch.nn.Module, root, split: str, environments=None, device: str = "cpu",
                      batch_size: int = 128) -> dict[str, tuple[float, int]]:
    """Mean angular error in degrees and row count per environment of `split` (names or patterns), and over all
    of them under "all"."""
    reader = ShardReader(root, split, batch_size, shuffle=False, environments=environments)
    front_end = BinauralFrontEnd(sample_rate=reader.manifest.sample_rate).to(device)
    names = np.array(reader.environments)
    errors, envs = [], []
    model.eval()
    for batch in reader:
        pred = model(front_end(batch["wave"].to(device))).float().cpu().numpy()  # [B, 2] (x, y)
        az = np.radians(batch["azimuth"].numpy())
        errors.append(angular_error_deg(pred, np.stack([np.cos(az), np.sin(az)], axis=1)))
        envs.append(names[batch["environment"].numpy()])
    err, env = np.concatenate(errors), np.concatenate(envs)
    out = {str(e): (float(err[env == e].mean()), int((env == e).sum())) for e in np.unique(env)}
    out["all"] = (float(err.mean()), len(err))
    return out
