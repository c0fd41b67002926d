"""The shared loop's small formulas: learning-rate schedule, per-epoch seeds, fault specs, checkpoint files."""

import math

import pytest
import torch

from trainables.loop import Fault, epoch_seed, load_checkpoint_state, lr_factor, read_checkpoint_config, save_checkpoint


def test_warmup_is_linear_then_constant():
    assert [lr_factor(s, 100, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 100, 0, "constant") == 1.0


def test_cosine_after_warmup_by_hand():
    # 10 steps, 2 of warmup: cosine over the remaining 8; halfway (step 6) is 0.5, the end is 0
    assert lr_factor(1, 10, 2, "cosine") == 1.0  # last warmup step: (1 + 1) / 2
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(4, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, 10, 2, "cosine") == pytest.approx(0.0)  # never negative past the end


def test_epoch_seeds_differ_by_epoch_and_rank_and_repeat():
    seeds = {epoch_seed(0, e, r) for e in range(1, 20) for r in range(8)}
    assert len(seeds) == 19 * 8
    assert epoch_seed(3, 5, 1) == epoch_seed(3, 5, 1)
    assert epoch_seed(3, 5, 1) != epoch_seed(4, 5, 1)


def test_fault_spec_parses_and_rejects():
    f = Fault.parse("kill:1:2:/tmp/m")
    assert (f.action, f.rank, f.epoch, f.marker) == ("kill", 1, 2, "/tmp/m")
    assert Fault.parse(None) is None and Fault.parse("") is None
    with pytest.raises(ValueError, match="ACTION:RANK:EPOCH:MARKER_FILE"):
        Fault.parse("kill:1")
    with pytest.raises(ValueError, match="allowed kill or raise"):
        Fault.parse("explode:0:1:/tmp/m")


def test_raise_fault_fires_once(tmp_path):
    f = Fault("raise", 0, 2, str(tmp_path / "marker"))
    f.maybe_fire(rank=1, epoch=2)  # another rank: nothing
    f.maybe_fire(rank=0, epoch=1)  # another epoch: nothing
    with pytest.raises(RuntimeError, match="injected fault: rank 0 at epoch 2"):
        f.maybe_fire(rank=0, epoch=2)
    f.maybe_fire(rank=0, epoch=2)  # the marker exists: a restored run goes on


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, epoch=4, seed=7, trainable="bast",
                    config={"train": {"lr": 0.1}}, metrics={"val_ad_deg": 12.5})
    state = load_checkpoint_state(tmp_path)  # torch.load(weights_only=True) inside
    assert state["epoch"] == 4 and state["seed"] == 7
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(state["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 1
    meta = read_checkpoint_config(tmp_path)
    assert meta == {"trainable": "bast", "config": {"train": {"lr": 0.1}}, "epoch": 4, "metrics": {"val_ad_deg": 12.5},
                    "history": [{"val_ad_deg": 12.5}]}  # no history given: the checkpoint's own epoch
