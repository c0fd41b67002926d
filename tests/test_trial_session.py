"""A single-worker trial's loop session: checkpoints persisted on a background thread (the next epoch does not wait
for storage), the newest and the best kept, the newest restored; and the loop's prefetcher and NaN guard."""

from __future__ import annotations

import threading

import pytest
import torch

from sweep_platform import storage, trial_session
from sweep_platform.trial_session import TrialSession
from trainables.loop import CheckpointData, _nan_guard, choose_precision, read_checkpoint_config
from trainables.prefetch import Prefetcher


def checkpoint(epoch: int, val: float) -> CheckpointData:
    metrics = {"epoch": epoch, "val_ad_deg": val}
    return CheckpointData({"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch},
                          {"trainable": "bast", "config": {}, "epoch": epoch, "metrics": metrics,
                           "history": [metrics]})


@pytest.fixture()
def reports(monkeypatch):
    """What the session hands to Tune (ray.tune.report needs a running trial; its own path is covered by the sweep
    tests, which run real trials)."""
    import ray.tune

    seen = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: seen.append(dict(metrics)))
    return seen


def session(name: str, **kw) -> TrialSession:
    return TrialSession(name, "t1", metric="val_ad_deg", mode="min", keep=2, final_epoch=kw.pop("final_epoch", 99),
                        extra={"params_m": 0.5}, device=torch.device("cpu"), **kw)


def test_keeps_the_newest_and_the_two_best_and_restores_the_newest(reports):
    s = session("keep")
    for epoch, val in [(1, 50.0), (2, 20.0), (3, 30.0), (4, 10.0), (5, 40.0)]:
        s.report({"epoch": epoch, "val_ad_deg": val}, checkpoint(epoch, val))
    s.close()
    assert [e for e, _, _ in storage.trial_checkpoints("keep", "t1")] == [2, 4, 5]  # best 10 and 20, newest 5
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4, 5] and all(r["params_m"] == 0.5 for r in reports)
    assert reports[0]["checkpoint_path"].endswith("keep-trial-t1/checkpoint_000001")
    with session("keep").latest_checkpoint() as d:
        assert read_checkpoint_config(d)["epoch"] == 5


def test_the_next_epoch_does_not_wait_for_storage(reports, monkeypatch):
    """The writer is held until the loop has reported the next epoch: with a synchronous write, report would block."""
    release, wrote = threading.Event(), []
    real = storage.write_checkpoint

    def held(cp, sweep, trial):
        assert release.wait(30), "never released"
        wrote.append(cp.epoch)
        return real(cp, sweep, trial)

    monkeypatch.setattr(trial_session.storage, "write_checkpoint", held)
    s = session("async")
    s.report({"epoch": 1, "val_ad_deg": 9.0}, checkpoint(1, 9.0))
    assert [r["epoch"] for r in reports] == [1] and wrote == []  # reported while its checkpoint is still being written
    release.set()
    s.report({"epoch": 2, "val_ad_deg": 8.0}, checkpoint(2, 8.0))  # waits for epoch 1's write first
    assert wrote[0] == 1
    s.close()
    assert wrote == [1, 2] and [e for e, _, _ in storage.trial_checkpoints("async", "t1")] == [1, 2]


def test_the_last_epoch_is_evaluated_after_its_checkpoint_is_stored_and_before_it_is_reported(reports):
    order = []
    s = session("final", final_epoch=2)
    s.before_final_report = lambda: order.append(
        ("evaluate", [e for e, _, _ in storage.trial_checkpoints("final", "t1")], len(reports)))
    s.report({"epoch": 1, "val_ad_deg": 9.0}, checkpoint(1, 9.0))
    s.report({"epoch": 2, "val_ad_deg": 8.0}, checkpoint(2, 8.0))
    s.close()
    assert order == [("evaluate", [1, 2], 1)]  # both checkpoints on storage, epoch 2 not yet reported


def test_a_failed_write_fails_the_trial_at_the_next_report(reports, monkeypatch):
    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(trial_session.storage, "write_checkpoint", broken)
    s = session("broken")
    s.report({"epoch": 1, "val_ad_deg": 9.0}, checkpoint(1, 9.0))
    with pytest.raises(OSError, match="disk full"):
        s.report({"epoch": 2, "val_ad_deg": 8.0}, checkpoint(2, 8.0))


def test_prefetcher_keeps_order_raises_where_the_reader_failed_and_stops_early():
    assert list(Prefetcher(iter(range(10)), depth=2)) == list(range(10))

    def reader():
        yield 1
        yield 2
        raise ValueError("corrupt shard")

    got = []
    with pytest.raises(ValueError, match="corrupt shard"):
        for x in Prefetcher(reader()):
            got.append(x)
    assert got == [1, 2]
    it = iter(Prefetcher(iter(range(1000)), depth=2))
    assert next(it) == 0
    it.close()  # a consumer that leaves early (a NaN loss) stops the thread


def test_nan_guard_names_the_first_bad_step():
    losses = [torch.tensor(1.0), torch.tensor(0.5), torch.tensor(float("nan")), torch.tensor(float("inf"))]
    _nan_guard("bast", losses[:2], 1, 3, 0)  # finite: nothing
    with pytest.raises(FloatingPointError, match="training loss is nan at epoch 3, step 67 .rank 0."):
        _nan_guard("bast", losses, 65, 3, 0)


def test_cpu_training_is_fp32_whatever_was_asked():
    for asked in ("auto", "bf16", "fp32"):
        p = choose_precision(torch.device("cpu"), asked)
        assert p.dtype is None and not p.scaler and "fp32 on cpu" in p.why
