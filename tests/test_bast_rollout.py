import matplotlib.image
import numpy as np
import pytest
import torch

from trainables.bast.config import preset
from trainables.bast.model import BAST
from trainables.bast.rollout import (
    attention_maps,
    bast_rollout,
    fuse_heads,
    rollout,
    save_rollout_png,
    to_spectrogram,
    token_weights,
)

CFG = preset("bast_tiny")  # 129x61 spectrogram, P=16, S=6: a 20x9 grid, 1 row padded on top, 3 columns on the right


def maps(*rows) -> torch.Tensor:
    """One single-head, batch-1 attention map [1, 1, N, N] from its rows."""
    return torch.tensor([[rows]], dtype=torch.float64)


def random_maps(layers: int, B: int = 2, H: int = 3, N: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(B, H, N, N, generator=g, dtype=torch.float64).softmax(dim=-1) for _ in range(layers)]


# --- head fusion -------------------------------------------------------------------------------------------------


def test_fuse_heads_by_hand():
    attn = torch.tensor([[[[0.2, 0.8], [0.6, 0.4]],
                          [[0.4, 0.6], [0.1, 0.9]],
                          [[0.9, 0.1], [0.5, 0.5]]]])  # [1, 3 heads, 2, 2]
    torch.testing.assert_close(fuse_heads(attn, "mean"), torch.tensor([[[0.5, 0.5], [0.4, 0.6]]]))
    torch.testing.assert_close(fuse_heads(attn, "max"), torch.tensor([[[0.9, 0.8], [0.6, 0.9]]]))
    torch.testing.assert_close(fuse_heads(attn, "min"), torch.tensor([[[0.2, 0.1], [0.1, 0.4]]]))
    assert fuse_heads(attn).shape == (1, 2, 2)


def test_fuse_heads_rejects_bad_input():
    with pytest.raises(ValueError, match="head fusion"):
        fuse_heads(torch.ones(1, 2, 3, 3), "median")
    with pytest.raises(ValueError, match=r"\[B, H, N, N\]"):
        fuse_heads(torch.ones(2, 3, 3))


# --- rollout -----------------------------------------------------------------------------------------------------


def test_one_layer_by_hand():
    # A + I = [[1.5, 0.5], [0.2, 1.8]]; both rows sum to 2.
    R = rollout([maps([0.5, 0.5], [0.2, 0.8])])
    torch.testing.assert_close(R, torch.tensor([[[0.75, 0.25], [0.1, 0.9]]], dtype=torch.float64))


def test_two_layers_by_hand_later_layer_on_the_left():
    # Â1 = [[0.75, 0.25], [0.1, 0.9]], Â2 = ([[0, 1], [1, 0]] + I) / 2 = all 0.5.
    # Â2 · Â1 = [[0.425, 0.575], [0.425, 0.575]], whereas Â1 · Â2 would be all 0.5.
    R = rollout([maps([0.5, 0.5], [0.2, 0.8]), maps([0.0, 1.0], [1.0, 0.0])])
    torch.testing.assert_close(R, torch.tensor([[[0.425, 0.575], [0.425, 0.575]]], dtype=torch.float64))


def test_rows_normalised_by_their_own_sum():
    # Max fusion: [[1, 1], [0.5, 0.5]]; + I = [[2, 1], [0.5, 1.5]], row sums 3 and 2.
    # Dividing column j by the sum of row j (the reference's broadcast) would give [[2/3, 1/2], [1/6, 3/4]].
    attn = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]]], dtype=torch.float64)
    R = rollout([attn], head_fusion="max")
    torch.testing.assert_close(R, torch.tensor([[[2 / 3, 1 / 3], [0.25, 0.75]]], dtype=torch.float64))


def test_start_matrix_is_multiplied_on_the_right():
    start = torch.tensor([[[0.875, 0.125], [0.05, 0.95]]], dtype=torch.float64)
    # Â = ([[0.6, 0.4], [0, 1]] + I) / 2 = [[0.8, 0.2], [0, 1]]; Â · start by hand:
    R = rollout([maps([0.6, 0.4], [0.0, 1.0])], start=start)
    torch.testing.assert_close(R, torch.tensor([[[0.71, 0.29], [0.05, 0.95]]], dtype=torch.float64))
    assert rollout([], start=start) is start


def test_identity_attention_gives_identity():
    eye = torch.eye(6).expand(2, 4, 6, 6)
    torch.testing.assert_close(rollout([eye, eye, eye]), torch.eye(6).expand(2, 6, 6))


def test_uniform_attention_gives_uniform_token_weights():
    N = 7
    uniform = torch.full((2, 3, N, N), 1 / N, dtype=torch.float64)
    R = rollout([uniform] * 3)
    torch.testing.assert_close(token_weights(R, cls_token=False), torch.full((2, N), 1 / N, dtype=torch.float64))
    assert not torch.allclose(R, torch.full_like(R, 1 / N))  # the residual keeps R itself off uniform


def test_empty_rollout_raises():
    with pytest.raises(ValueError, match="at least one"):
        rollout([])


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_every_rollout_is_row_stochastic(fusion):
    attention = {"left": random_maps(3, seed=1), "right": random_maps(2, seed=2), "center": random_maps(3, seed=3)}
    for name, R in bast_rollout(attention, fusion).items():
        assert R.shape == (2, 5, 5)
        torch.testing.assert_close(R.sum(dim=-1), torch.ones(2, 5, dtype=torch.float64), msg=f"{name} ({fusion})")
        assert (R >= 0).all()


def test_center_starts_from_left_plus_right_by_hand():
    # Left: [[0.75, 0.25], [0.1, 0.9]] (as above); right: identity attention, so Â_R = I.
    # Start = rownorm(L + I) = [[1.75, 0.25], [0.1, 1.9]] / 2 = [[0.875, 0.125], [0.05, 0.95]].
    # Centre Â = [[0.8, 0.2], [0, 1]], so R_C = [[0.71, 0.29], [0.05, 0.95]].
    out = bast_rollout({"left": [maps([0.5, 0.5], [0.2, 0.8])],
                        "right": [maps([1.0, 0.0], [0.0, 1.0])],
                        "center": [maps([0.6, 0.4], [0.0, 1.0])]})
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(out["left"], torch.tensor([[[0.75, 0.25], [0.1, 0.9]]], **f64))
    torch.testing.assert_close(out["right"], torch.eye(2, **f64).unsqueeze(0))
    torch.testing.assert_close(out["center"], torch.tensor([[[0.71, 0.29], [0.05, 0.95]]], **f64))


def test_center_matches_manual_computation():
    left, right, center = random_maps(3, seed=4), random_maps(3, seed=5), random_maps(2, seed=6)
    eye = torch.eye(5, dtype=torch.float64)

    def layer(a):  # mean over heads, residual, each row over its own sum
        a = a.mean(dim=1) + eye
        return a / a.sum(dim=-1, keepdim=True)

    R_left = layer(left[2]) @ layer(left[1]) @ layer(left[0])
    R_right = layer(right[2]) @ layer(right[1]) @ layer(right[0])
    expected = layer(center[1]) @ layer(center[0]) @ ((R_left + R_right) / 2)  # rows of R_L + R_R sum to 2
    out = bast_rollout({"left": left, "right": right, "center": center})
    torch.testing.assert_close(out["left"], R_left)
    torch.testing.assert_close(out["right"], R_right)
    torch.testing.assert_close(out["center"], expected)


def test_bast_rollout_needs_all_three_encoders():
    with pytest.raises(ValueError, match="center"):
        bast_rollout({"left": random_maps(1), "right": random_maps(1)})


# --- token weights and the spectrogram grid ----------------------------------------------------------------------


def test_token_weights_by_hand_and_cls_dropped():
    R = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]])  # column means 0.3, 0.4, 0.3
    torch.testing.assert_close(token_weights(R, cls_token=False), torch.tensor([[0.3, 0.4, 0.3]]))
    torch.testing.assert_close(token_weights(R, cls_token=True), torch.tensor([[0.4, 0.3]]))


def one_hot(token: int, scale: float = 1.0) -> torch.Tensor:
    w = torch.zeros(1, CFG.num_patches)
    w[0, token] = scale
    return w


def lit_region(heat: torch.Tensor) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of the nonzero pixels of [F, T]."""
    rows = torch.nonzero(heat.any(dim=1)).flatten()
    cols = torch.nonzero(heat.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@pytest.mark.parametrize(
    "row,col,region",
    [
        # Padded patch rows r*6 .. r*6+15 shift up by pad_top = 1 after the crop; columns stay, cut at frame 60.
        (0, 0, (0, 14, 0, 15)),  # first row of the patch is padding
        (5, 3, (29, 44, 18, 33)),
        (19, 8, (113, 128, 48, 60)),  # last 3 columns of the patch are padding
    ],
)
def test_one_hot_token_lights_exactly_its_patch(row, col, region):
    assert CFG.grid == (20, 9)
    heat = to_spectrogram(one_hot(row * 9 + col, scale=5.0), CFG)[0]
    assert heat.shape == (129, 61)
    assert lit_region(heat) == region
    r0, r1, c0, c1 = region
    assert (heat[r0 : r1 + 1, c0 : c1 + 1] > 0).all()  # the whole patch, no holes
    assert heat.max() == pytest.approx(1.0) and heat.min() == 0.0  # max-normalised despite the scale of 5


def test_uniform_weights_give_a_flat_map():
    # Every pixel's mean over the patches covering it is the same, however many overlap there.
    heat = to_spectrogram(torch.full((2, CFG.num_patches), 0.3), CFG)
    torch.testing.assert_close(heat, torch.ones(2, 129, 61))


def test_to_spectrogram_overlap_is_averaged_by_hand():
    # Weights 1 and 3 on patches (0, 0) and (0, 1); every other patch 0. Patch column c covers columns 6c .. 6c+15.
    # In the first row each pixel is the mean over the patches covering it, zeros included:
    #   cols 0-5: {1} -> 1; 6-11: {1, 3} -> 2; 12-15: {1, 3, 0} -> 4/3; 16-17: {3, 0} -> 3/2; 18-21: {3, 0, 0} -> 1;
    #   col 22: {0, 0} -> 0. The peak, 2, scales everything.
    w = torch.zeros(1, CFG.num_patches)
    w[0, 0], w[0, 1] = 1.0, 3.0
    heat = to_spectrogram(w, CFG)[0]
    cols = [0, 5, 6, 11, 12, 15, 16, 17, 18, 21, 22]
    expected = torch.tensor([1, 1, 2, 2, 4 / 3, 4 / 3, 3 / 2, 3 / 2, 1, 1, 0]) / 2
    torch.testing.assert_close(heat[0, cols], expected)


def test_pixels_between_patches_stay_zero():
    # Stride 20 > patch 16: a 7x4 grid padded to 136x76 (7 rows on top), with 4-pixel gaps between patches.
    cfg = preset("bast_tiny", patch_stride=20)
    assert cfg.grid == (7, 4)
    heat = to_spectrogram(torch.ones(1, cfg.num_patches), cfg)[0]
    assert not heat.isnan().any()
    assert heat[9:13].eq(0).all() and heat[:, 16:20].eq(0).all()  # padded rows 16..19 are cropped rows 9..12
    assert heat[:9, :16].eq(1).all() and heat[13:29, 20:36].eq(1).all()


def test_to_spectrogram_rejects_wrong_patch_count():
    with pytest.raises(ValueError, match="180"):
        to_spectrogram(torch.ones(1, 179), CFG)


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"cls_token": True, "sharing": "SP", "integration": "concat"}],
    ids=["tiny", "cls-SP-concat"],
)
def test_attention_maps_end_to_end(overrides):
    torch.manual_seed(0)
    model = BAST(preset("bast_tiny", **overrides))
    out = attention_maps(model, torch.randn(3, 2, 129, 61))
    assert set(out) == {"left", "right", "center"}
    for name, heat in out.items():
        assert heat.shape == (3, 129, 61), name
        assert not heat.isnan().any(), name
        assert heat.min() >= 0.0 and heat.amax(dim=(1, 2)).tolist() == pytest.approx([1.0] * 3), name


def test_attention_maps_use_eval_mode_and_restore_it():
    torch.manual_seed(0)
    model = BAST(preset("bast_tiny", dropout=0.5, emb_dropout=0.5)).train()
    spec = torch.randn(2, 2, 129, 61)
    first, second = attention_maps(model, spec), attention_maps(model, spec)
    for k in first:
        torch.testing.assert_close(first[k], second[k])  # dropout off, so deterministic
    assert model.training
    assert not any(p.grad is not None for p in model.parameters())


def test_attention_maps_head_fusion_changes_the_maps():
    torch.manual_seed(0)
    model = BAST(CFG)
    spec = torch.randn(1, 2, 129, 61)
    mean, maximum = attention_maps(model, spec, "mean"), attention_maps(model, spec, "max")
    assert not torch.allclose(mean["center"], maximum["center"])


def test_save_rollout_png(tmp_path):
    torch.manual_seed(0)
    spec = torch.randn(1, 2, 129, 61)
    maps_ = {k: v[0] for k, v in attention_maps(BAST(CFG), spec).items()}
    path = save_rollout_png(spec[0], maps_, tmp_path / "nested" / "rollout.png")
    assert path == tmp_path / "nested" / "rollout.png"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[1] > img.shape[0] > 100  # 3 columns wider than 2 rows are tall
    assert img[..., :3].std() > 0.05


def test_save_rollout_png_accepts_numpy_and_checks_shapes(tmp_path):
    spec = np.random.default_rng(0).normal(size=(2, 20, 30))
    heat = {k: np.random.default_rng(1).random((20, 30)) for k in ("left", "right", "center")}
    assert save_rollout_png(spec, heat, tmp_path / "ok.png").exists()
    with pytest.raises(ValueError, match=r"\[2, F, T\]"):
        save_rollout_png(spec[:1], heat, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="center"):
        save_rollout_png(spec, {"left": heat["left"], "right": heat["right"]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="spectrogram"):
        save_rollout_png(spec, {**heat, "center": heat["center"][:10]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
