"""BAST with the paper's settings: the bast_paper preset's training settings, the paper grid's hybrid mix (the reference
code's weighting) and `--compare-paper` comparing the MSE on the reference's scale."""

import math
from pathlib import Path

import pytest
import torch

from sweep_platform import leaderboard_format
from sweep_platform.sweep_file import load_sweep
from sweep_platform.sweep_spec import trial_config
from trainables.bast import BASTConfig, TrainConfig
from trainables.bast import paper as bast_paper
from trainables.bast.losses import hybrid_loss
from trainables.cnn_loc import paper as cnn_paper
from trainables.registry import get_trainable

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
REFERENCE_ALPHA = 2 * math.pi / (1 + 2 * math.pi)


# ------------------------------------------------------------------------------ the preset trains as the paper


def test_bast_paper_preset_trains_fp32_without_clipping():
    cfg = BASTConfig.model_validate({"model": {"preset": "bast_paper", "sharing": "SP"}})
    assert (cfg.train.grad_clip, cfg.train.precision) == (None, "fp32")
    assert cfg.model.sharing == "SP" and cfg.model.embed_dim == 1024


def test_explicit_train_settings_win_over_the_preset():
    cfg = BASTConfig.model_validate({"model": {"preset": "bast_paper"}, "train": {"grad_clip": 2.0, "epochs": 3}})
    assert (cfg.train.grad_clip, cfg.train.precision, cfg.train.epochs) == (2.0, "fp32", 3)
    cfg = BASTConfig.model_validate({"model": {"preset": "bast_paper"}, "train": {"precision": "bf16"}})
    assert (cfg.train.grad_clip, cfg.train.precision) == (None, "bf16")
    # a TrainConfig built in code: what it was given wins, what it left unset takes the preset's value
    cfg = BASTConfig(model={"preset": "bast_paper"}, train=TrainConfig(epochs=3, grad_clip=0.5))
    assert (cfg.train.grad_clip, cfg.train.precision, cfg.train.epochs) == (0.5, "fp32", 3)


@pytest.mark.parametrize("model", [{"preset": "bast_tiny"}, {"preset": "bast_small"}, {}])
def test_other_presets_keep_the_train_defaults(model):
    cfg = BASTConfig.model_validate({"model": model})
    assert (cfg.train.grad_clip, cfg.train.precision) == (1.0, "auto")


def test_a_checkpointed_config_keeps_the_paper_settings():
    # a trained model's config is stored expanded (no preset key) and must rebuild with the same training settings
    dumped = BASTConfig.model_validate({"model": {"preset": "bast_paper"}}).model_dump(mode="json")
    again = BASTConfig.model_validate(dumped)
    assert (again.train.grad_clip, again.train.precision) == (None, "fp32")


def test_the_paper_grid_trains_as_the_paper_and_a_sweep_can_ask_otherwise():
    spec = load_sweep(SPACES / "bast_paper_grid.yaml")
    cfg = BASTConfig.model_validate(trial_config(spec, {"loss.name": "hybrid", "loss.alpha": 0.8627}))
    assert (cfg.train.grad_clip, cfg.train.precision) == (None, "fp32")
    asked = BASTConfig.model_validate(trial_config(spec, {"train.grad_clip": 1.0, "train.precision": "bf16"}))
    assert (asked.train.grad_clip, asked.train.precision) == (1.0, "bf16")
    # the shipped searches keep their behaviour: bast_tiny / bast_small bases clip at 1.0
    for name in ("bast_smoke.yaml", "bast_tpe.yaml"):
        base = BASTConfig.model_validate(trial_config(load_sweep(SPACES / name), {}))
        assert base.train.grad_clip == 1.0, name


# --------------------------------------------------------------------------------------------- the hybrid mix


def test_the_grid_alpha_is_the_reference_codes_weighting():
    spec = load_sweep(SPACES / "bast_paper_grid.yaml")
    alpha = spec.space["loss.alpha"].fixed
    assert alpha == pytest.approx(REFERENCE_ALPHA, abs=1e-4) and alpha / (1 - alpha) == pytest.approx(2 * math.pi,
                                                                                                      rel=1e-4)
    assert "alpha = 2*pi / (1 + 2*pi)" in (SPACES / "bast_paper_grid.yaml").read_text()  # the derivation is there


def test_reference_loss_is_a_constant_multiple_of_the_hybrid_at_that_alpha():
    # The reference (MixWithCartesianCoordinate): nn.MSELoss + mean acos of the normalised dot product, radians,
    # computed here independently of binsweep's losses (arccos, not atan2; errors kept away from the ±0.999 clamp).
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(64, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.nn.functional.normalize(torch.randn(64, 2, generator=g, dtype=torch.float64), dim=1)
    cos = (torch.nn.functional.normalize(pred, dim=1) * target).sum(dim=1)
    reference = torch.nn.MSELoss()(pred, target) + torch.arccos(cos).mean()
    ours = hybrid_loss(pred, target, REFERENCE_ALPHA)
    assert reference.item() == pytest.approx((math.pi + 0.5) * ours.item(), rel=1e-9)
    g_ref, = torch.autograd.grad(reference, pred)
    g_ours, = torch.autograd.grad(hybrid_loss(pred, target, REFERENCE_ALPHA), pred)
    torch.testing.assert_close(g_ref, (math.pi + 0.5) * g_ours)  # same direction of descent, scaled
    # the old grid value weighted the angular term 2*pi times less, relative to eq. 2
    assert (REFERENCE_ALPHA / (1 - REFERENCE_ALPHA)) / (0.5 / 0.5) == pytest.approx(6.283, abs=1e-3)


# --------------------------------------------------------------------------------------------- --compare-paper


def test_paper_values_are_on_the_reference_scale():
    params = {"model.sharing": "NSP", "model.integration": "sub", "loss.name": "hybrid"}
    assert bast_paper.paper_values(params) == {"paper_ad_deg": 1.29, "paper_mse_ref": 0.001}
    assert get_trainable("bast").paper.columns == bast_paper.COLUMNS == ("paper_ad_deg", "paper_mse_ref")
    assert get_trainable("cnn_loc").paper.columns == cnn_paper.COLUMNS
    assert cnn_paper.paper_values({"model.integration": "sub", "loss.name": "mse"}) == {"paper_ad_deg": 3.67,
                                                                                         "paper_mse_ref": 0.038}
    assert bast_paper.paper_values({"model.sharing": "SP", "model.integration": "add", "loss.name": "ad"}) == {
        "paper_ad_deg": 13.87, "paper_mse_ref": None}
    assert bast_paper.paper_values({"model.sharing": "SP"}) is None


def row(trial: str, metrics: dict, params: dict) -> dict:
    """A leaderboard row as lb.leaderboard(compare_paper=True) returns it, by hand."""
    return {"rank": int(trial) + 1, "sweep": "s", "trainable": "bast", "trial": trial, "run_name": f"s-{trial}",
            "run_id": f"{trial}" * 32, "state": "completed", "params": params, "metric": "val_ad_deg", "mode": "min",
            "value": 3.0, "value_source": "val_ad_deg", "objective": "val_ad_deg", "objective_value": 3.0,
            "metrics": metrics, "epochs": 50, "wall_s": 60.0, "gpu_hours": None, "error": None,
            "dataset_fingerprint": "f", "searched_params": [], "log_params": [],
            **bast_paper.paper_values(params)}


def test_compare_paper_puts_each_paper_value_beside_the_trials_value_on_its_scale():
    params = {"model.sharing": "NSP", "model.integration": "sub", "loss.name": "hybrid"}
    # eq. 2 = 0.004 -> the reference's scale 0.002; a second run evaluated before test_mse_ref existed
    rows = [row("0", {"test_ad_deg": 2.5, "test_mse": 0.004, "test_mse_ref": 0.002}, params),
            row("1", {"test_ad_deg": 2.7, "test_mse": 0.006}, params)]
    cols = [c for c in leaderboard_format.columns(rows) if c.default]
    names = [c.header for c in cols]
    assert names[names.index("paper_ad_deg") - 1] == "test_ad_deg"
    assert names[names.index("paper_mse_ref") - 1] == "test_mse_ref"  # like with like, side by side
    by_name = {c.header: c for c in cols}
    assert [by_name["test_mse_ref"].get(r) for r in rows] == [0.002, None]  # never eq. 2 in its place
    assert [by_name["paper_mse_ref"].get(r) for r in rows] == [0.001, 0.001]
    # without a test_mse_ref anywhere, the paper's value still comes alone, under its scale's name
    old = [row("1", {"test_ad_deg": 2.7, "test_mse": 0.006}, params)]
    names = [c.header for c in leaderboard_format.columns(old)]
    assert "paper_mse_ref" in names and "test_mse_ref" not in names
