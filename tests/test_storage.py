"""Where a sweep's state lives: checkpoint folders of a trial and the metric history the loop keeps in each."""

from __future__ import annotations

import json

import torch

from sweep_platform import storage
from trainables.loop import save_checkpoint


def _checkpoint(root, sweep, trial, epoch, history):
    d = root / storage.train_run_name(sweep, trial) / f"checkpoint_{epoch:06d}"
    d.mkdir(parents=True)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(d, model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                    epoch=epoch, seed=0, trainable="t", config={}, metrics=history[-1], history=history)
    return d


def test_history_survives_deleted_checkpoints(tmp_path, monkeypatch):
    """Train keeps the best num_to_keep checkpoints; an epoch whose own checkpoint is gone is still in the history
    of a later one, which is what a resumed sweep backfills from."""
    monkeypatch.setenv("BINSWEEP_RAY_STORAGE", str(tmp_path))
    hist = [{"epoch": e, "val_ad_deg": 50.0 - e} for e in (1, 2, 3)]
    _checkpoint(tmp_path, "s", "t1", 1, hist[:1])
    newest = _checkpoint(tmp_path, "s", "t1", 3, hist)  # epoch 2's checkpoint was deleted
    assert [e for e, _, _ in storage.trial_checkpoints("s", "t1")] == [1, 3]
    first = tmp_path / storage.train_run_name("s", "t1") / "checkpoint_000001"
    assert storage.trial_history("s", "t1") == {1: (hist[0], str(first)), 2: (hist[1], None),
                                                 3: (hist[2], str(newest))}
    meta = json.loads((newest / "config.json").read_text())
    assert meta["metrics"] == hist[2] and meta["history"] == hist
    assert storage.trial_history("s", "other") == {}
