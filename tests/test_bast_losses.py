import math

import pytest
import torch

from trainables.bast.config import LossConfig
from trainables.bast.losses import BASTLoss, ad_loss, angle_between, hybrid_loss, mse_loss


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_mse_by_hand():
    pred = t([[1.0, 2.0], [0.0, 0.0]])
    target = t([[1.0, 0.0], [0.0, 1.0]])
    # squared distances 4 and 1, mean over the batch (not over coordinates): 2.5
    assert mse_loss(pred, target).item() == pytest.approx(2.5)


def test_ad_by_hand():
    pred = t([[1.0, 1.0], [-2.0, 0.0], [0.0, 5.0]])
    target = t([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # angles 45°, 180°, 90° -> mean 105° -> /180° (i.e. radians / π)
    assert ad_loss(pred, target).item() == pytest.approx(105 / 180)
    torch.testing.assert_close(angle_between(pred, target), t([math.pi / 4, math.pi, math.pi / 2]))


def test_ad_ignores_scale_mse_does_not():
    target = t([[0.0, 1.0]])
    assert ad_loss(t([[0.0, 7.0]]), target).item() == 0.0
    assert mse_loss(t([[0.0, 7.0]]), target).item() == pytest.approx(36.0)


def test_hybrid_by_hand():
    pred, target = t([[0.0, 2.0]]), t([[1.0, 0.0]])  # AD = 0.5, MSE = 1 + 4 = 5
    assert hybrid_loss(pred, target, 0.3).item() == pytest.approx(0.3 * 0.5 + 0.7 * 5)
    for name, value in [("mse", 5.0), ("ad", 0.5), ("hybrid", 0.25 + 2.5)]:
        assert BASTLoss(LossConfig(name=name, alpha=0.5))(pred, target).item() == pytest.approx(value)


@pytest.mark.parametrize(
    "pred",
    [[[1.0, 0.0]], [[3.0, 0.0]], [[-1.0, 0.0]], [[0.0, 0.0]], [[1.0, 1e-9]], [[-1.0, 1e-9]]],
    ids=["0deg", "0deg-scaled", "180deg", "zero-vector", "tiny-error", "near-180"],
)
@pytest.mark.parametrize("name", ["mse", "ad", "hybrid"])
def test_gradients_are_finite(pred, name):
    p = t(pred).requires_grad_(True)
    loss = BASTLoss(LossConfig(name=name))(p, t([[1.0, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_zero_prediction_scores_chance():
    assert ad_loss(t([[0.0, 0.0]]), t([[1.0, 0.0]])).item() == pytest.approx(0.5)


def test_small_errors_keep_a_useful_gradient():
    # The reference's clamp at 0.999 gives zero gradient below 2.56°; atan2 keeps ~1/|p| there.
    theta = math.radians(1.0)
    p = t([[math.cos(theta), math.sin(theta)]]).requires_grad_(True)
    ad_loss(p, t([[1.0, 0.0]])).backward()
    # d(angle)/dp is the unit tangent / |p|; divided by π for the loss
    assert p.grad.norm().item() == pytest.approx(1 / math.pi, rel=1e-6)
    # a step against the gradient reduces the angle
    with torch.no_grad():
        q = p - 0.01 * p.grad
    assert angle_between(q, t([[1.0, 0.0]])).item() < theta


def test_float32_batch_matches_float64():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    torch.testing.assert_close(ad_loss(pred, target).double(), ad_loss(pred.double(), target.double()), atol=1e-6,
                               rtol=1e-6)
