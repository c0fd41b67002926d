"""The binauralizer's loss axis (issue 16): a difference head (diff), two ear heads (2ch) or both, each trained by its
own loss; the ears formed from any head by one function (heads.ear_specs / recipe.ears_from_output); model.masks
following loss.kind; a saved 2ch model that rebuilds its 4-channel head."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainables.binaural.config import BinauralConfig
from trainables.binaural.data import BinauralBuildConfig, build
from trainables.binaural.heads import ear_specs
from trainables.binaural.losses import BinauralLoss, diff_loss, two_channel_loss
from trainables.binaural.model import BinauralNet, complex_mul, istft, stft
from trainables.binaural.recipe import BinauralRecipe, ears_from_output
from trainables.loop import save_checkpoint

KINDS = {"diff": "diff", "2ch": "ears", "both": "both"}  # loss.kind -> model.masks


def config(kind: str, root="/nonexistent", modalities="audio", **model) -> BinauralConfig:
    return BinauralConfig.model_validate({
        "model": {"preset": "binaural_tiny", "backbone": "test_vit", "modalities": modalities, "clip_seconds": 0.31,
                  **model},
        "loss": {"kind": kind},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "precision": "fp32"},
        "data": {"root": str(root)},
    })


def spec(*values) -> torch.Tensor:
    """(real, imag) pairs -> [1, 2, len(values), 1]: one batch item, one frame."""
    return torch.tensor([[[[re] for re, _ in values], [[im] for _, im in values]]], dtype=torch.float32)


# --- losses ----------------------------------------------------------------------------------------------------------

def test_two_channel_loss_is_not_a_multiple_of_the_difference_loss():
    # One bin: A = 2, O = 1, so the true ears are Yl = 1.5 and Yr = 0.5. An ear error e = 0.25 + 0.5i has
    # mean(e²) over (real, imag) = (0.0625 + 0.25) / 2 = 0.15625.
    A, O, e = spec((2.0, 0.0)), spec((1.0, 0.0)), spec((0.25, 0.5))
    yl, yr = spec((1.5, 0.0)), spec((0.5, 0.0))
    # Common-mode error (both ears too loud the same way): Ỹl − Ỹr = O exactly, so a difference loss sees nothing;
    # 2ch = 0.15625 + 0.15625.
    assert diff_loss((yl + e) - (yr + e), O) == 0.0
    assert two_channel_loss(yl + e, yr + e, A, O).item() == pytest.approx(0.3125)
    # Opposite errors: Ỹl − Ỹr = O + 2e, diff = 4 · 0.15625 = 0.625 and 2ch is still 0.3125:
    # the ratio 2ch / diff is ∞ in one case and 1/2 in the other.
    assert diff_loss((yl + e) - (yr - e), O).item() == pytest.approx(0.625)
    assert two_channel_loss(yl + e, yr - e, A, O).item() == pytest.approx(0.3125)
    # The old single-mask reading, ears (A ± Õ)/2, made 2ch exactly diff / 2 for every Õ: the reason for ear heads.
    pred = spec((0.2, -0.7))
    ears = ear_specs({"diff_spec": pred}, A)
    torch.testing.assert_close(two_channel_loss(ears[:, 0], ears[:, 1], A, O), diff_loss(pred, O) / 2)


def test_loss_kinds_on_a_both_head_and_a_wrong_head():
    g = torch.Generator().manual_seed(0)
    mix, target = torch.randn(2, 2, 257, 8, generator=g), torch.randn(2, 2, 257, 8, generator=g)
    out = {k: torch.randn(2, 2, 256, 8, generator=g) for k in ("diff_spec", "left_spec", "right_spec")}
    d = diff_loss(out["diff_spec"], target)
    c = two_channel_loss(out["left_spec"], out["right_spec"], mix, target)
    torch.testing.assert_close(BinauralLoss(config("both").loss)(out, mix, target), d + c)
    torch.testing.assert_close(BinauralLoss(config("2ch").loss)(out, mix, target), c)
    with pytest.raises(ValueError, match=r"loss.kind='2ch' needs .*left_spec.*model.masks='ears'"):
        BinauralLoss(config("2ch").loss)({"diff_spec": out["diff_spec"]}, mix, target)
    # a bare tensor is the difference head's diff_spec (callers written before the ear heads)
    torch.testing.assert_close(BinauralLoss(config("diff").loss)(out["diff_spec"], mix, target), d)
    with pytest.raises(ValueError, match="needs the model outputs"):
        BinauralLoss(config("both").loss)(out["diff_spec"], mix, target)


# --- config ----------------------------------------------------------------------------------------------------------

def test_model_masks_follow_loss_kind():
    for kind, head in KINDS.items():
        cfg = config(kind)
        assert cfg.model.masks == head and cfg.model.mask_channels == {"diff": 2, "ears": 4, "both": 6}[head]
        again = BinauralConfig.model_validate(cfg.model_dump(mode="json"))  # what a checkpoint's config.json holds
        assert again.model.masks == head
    assert config("2ch", masks="ears").model.masks == "ears"  # explicit and consistent
    with pytest.raises(ValidationError, match=r"model.masks='diff' does not fit loss.kind='2ch'.*'ears'"):
        config("2ch", masks="diff")
    with pytest.raises(ValidationError, match="masks"):
        config("diff", masks="left")


def test_relative_weights_paths_are_under_binsweep_home(monkeypatch, tmp_path):
    """binaural_ablation.yaml names weights/... relative to BINSWEEP_HOME, as its dataset; absolute paths stay. The
    spec's build (what a trial and a loaded model use) looks for the file there, whatever the working directory."""
    from trainables.binaural import SPEC
    from trainables.binaural.weights import WeightsError

    monkeypatch.setenv("BINSWEEP_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    relative = config("both", modalities="audio+image", image_weights="weights/vit.safetensors")
    with pytest.raises(WeightsError, match=f"^{tmp_path / 'weights' / 'vit.safetensors'}: no such file"):
        SPEC.build_model(relative)
    absolute = config("both", modalities="audio+depth", depth_weights="/abs/dpt_large.pt")
    assert absolute.model.masks == "both"
    with pytest.raises(WeightsError, match="^/abs/dpt_large.pt: no such file"):
        SPEC.build_model(absolute)


# --- heads and ears --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_head_shapes_and_masks_times_the_mix(kind):
    cfg = config(kind).model
    torch.manual_seed(0)
    net = BinauralNet(cfg).eval()
    assert net.decoder[-1].up.conv.out_channels == cfg.mask_channels
    mix = torch.randn(3, 2, 257, cfg.frames) * 1e3  # saturate the masks towards ±1
    with torch.no_grad():
        out = net(mix)
    keys = {"diff": {"diff_spec", "mask"}, "ears": {"left_spec", "right_spec", "ear_masks"}}
    assert set(out) == set().union(*(keys[h] for h in keys if cfg.mask_head in (h, "both")))
    a = mix[:, :, :-1]
    if "mask" in out:
        assert out["mask"].shape == (3, 2, 256, cfg.frames) and out["mask"].abs().max() <= 1.0
        torch.testing.assert_close(out["diff_spec"], complex_mul(out["mask"], a))
    if "ear_masks" in out:
        assert out["ear_masks"].shape == (3, 2, 2, 256, cfg.frames) and out["ear_masks"].abs().max() <= 1.0
        assert out["ear_masks"].abs().max() > 0.5
        torch.testing.assert_close(out["left_spec"], complex_mul(out["ear_masks"][:, 0], a))
        torch.testing.assert_close(out["right_spec"], complex_mul(out["ear_masks"][:, 1], a))
        assert not torch.allclose(out["left_spec"] + out["right_spec"], a)  # free ears: L̂ + R̂ need not be the mix


def test_every_head_starts_at_the_mono_baseline():
    """Ear masks start at 0.5 + 0i through the last layer's bias (2 atanh 0.5 on the real parts), the difference mask
    at 0: each kind starts from ears ≈ A/2, so the loss axis does not also compare starting points."""
    b = 2 * np.arctanh(0.5)  # 1.0986...
    expected = {"diff": [0, 0], "2ch": [b, 0, b, 0], "both": [0, 0, b, 0, b, 0]}
    mix = torch.randn(2, 2, 257, 32)
    for kind, bias in expected.items():
        torch.manual_seed(0)
        net = BinauralNet(config(kind).model).eval()
        torch.testing.assert_close(net.decoder[-1].up.conv.bias.detach(), torch.tensor(bias, dtype=torch.float32))
        with torch.no_grad():
            ears = ear_specs(net(mix), mix)
        half = mix[:, None, :, :-1].expand(-1, 2, -1, -1, -1) / 2
        err = (ears[..., :-1, :] - half).abs().mean() / half.abs().mean()
        assert err < 0.1, (kind, float(err))


def test_ear_formation_by_hand():
    # Two bins (the second is the Nyquist bin): A = (4, 2i) at bin 0, Nyquist 6.
    A = spec((4.0, 2.0), (6.0, 0.0))
    diff, left, right = spec((2.0, 0.0)), spec((1.0, 1.0)), spec((3.0, -1.0))
    # diff: ((A + Õ)/2, (A − Õ)/2) = (3 + i, 1 + i); Nyquist: A/2 = 3 for each ear.
    got = ear_specs({"diff_spec": diff}, A)
    assert got.shape == (1, 2, 2, 2, 1)
    torch.testing.assert_close(got[0, :, :, :, 0], torch.tensor([[[3.0, 3.0], [1.0, 0.0]],
                                                                  [[1.0, 3.0], [1.0, 0.0]]]))
    # ears: the two heads as they are
    got = ear_specs({"left_spec": left, "right_spec": right}, A)
    torch.testing.assert_close(got[0, :, :, 0, 0], torch.tensor([[1.0, 1.0], [3.0, -1.0]]))
    # both: the mean of the two estimates, ((3 + i) + (1 + i))/2 = 2 + i and ((1 + i) + (3 − i))/2 = 2
    got = ear_specs({"diff_spec": diff, "left_spec": left, "right_spec": right}, A[..., :1, :])
    assert got.shape == (1, 2, 2, 1, 1)
    torch.testing.assert_close(got[0, :, :, 0, 0], torch.tensor([[2.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="needs 'diff_spec'"):
        ear_specs({"mask": diff}, A)


def test_ears_from_output_in_time():
    cfg = config("both").model
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(2, cfg.clip_samples, generator=g, dtype=torch.float64).float()
    args = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length)
    a = stft(mix, **args)[:, :, :-1]
    diff, left, right = (torch.randn(a.shape, generator=g, dtype=torch.float64).float() for _ in range(3))
    # diff head: 2.5D's (mix ± iSTFT(Õ)) / 2, so L̂ + R̂ is the mix
    ears = ears_from_output(cfg, mix, {"diff_spec": diff, "mask": diff})
    d = istft(torch.nn.functional.pad(diff, (0, 0, 0, 1)), mix.shape[-1], **args)
    torch.testing.assert_close(ears, torch.stack([(mix + d) / 2, (mix - d) / 2], dim=1), atol=1e-5, rtol=0)
    # ear heads: each ear is its own iSTFT (the Nyquist bin gets the mono share)
    ears = ears_from_output(cfg, mix, {"left_spec": left, "right_spec": right})
    nyq = stft(mix, **args)[:, :, -1:] / 2
    for k, s in enumerate((left, right)):
        torch.testing.assert_close(ears[:, k], istft(torch.cat([s, nyq], dim=-2), mix.shape[-1], **args))
    # both: the mean of the two, in time too (the iSTFT is linear)
    both = ears_from_output(cfg, mix, {"diff_spec": diff, "left_spec": left, "right_spec": right})
    torch.testing.assert_close(both, (ears_from_output(cfg, mix, {"diff_spec": diff}) + ears) / 2, atol=1e-5, rtol=0)


# --- training, saving, serving ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_channel") / "scenes"
    build(BinauralBuildConfig(scenes=16, shard_rows=8, val_fraction=0.25, test_fraction=0.25, test_clip_seconds=0.8),
          root)
    return root


@pytest.mark.parametrize("kind", KINDS)
def test_one_training_step_per_kind(kind, scenes):
    """The recipe's loss trains the head its kind names: a step lowers the loss on the same batch, and validation
    forms the ears through ears_from_output."""
    cfg = config(kind, scenes)
    recipe = BinauralRecipe(cfg)
    torch.manual_seed(0)
    model = recipe.build_model()
    assert model.cfg.masks == KINDS[kind]
    batch = next(iter(recipe.batches("train", 1, 0, 1)))
    device = torch.device("cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.eval()  # fixed BatchNorm statistics, so the before/after losses compare like for like
    with torch.no_grad():
        before = recipe.loss(model, batch, device)[0].item()
    model.train()
    for _ in range(3):
        loss, n = recipe.loss(model, batch, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert model.decoder[-1].up.conv.weight.grad.abs().sum() > 0
        opt.step()
    model.eval()
    with torch.no_grad():
        after = recipe.loss(model, batch, device)[0].item()
        sums = recipe.validation_sums(model, next(iter(recipe.batches("val", 1, 0, 1))), device)
    assert np.isfinite(before) and after < before, (before, after)
    assert {"val_loss", "val_stft_dist", "val_env_dist"} == set(sums)
    assert all(np.isfinite(float(s)) and n > 0 for s, n in sums.values())


def test_saved_two_channel_model_rebuilds_its_head(scenes, tmp_path):
    from sweep_platform.model_store import load_model
    from trainables.binaural.inference import serve

    cfg = config("2ch", scenes)
    torch.manual_seed(0)
    model = BinauralRecipe(cfg).build_model().eval()
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1),
                    epoch=1, seed=0, trainable="binaural", config=cfg.model_dump(mode="json"), metrics={})
    loaded, loaded_cfg = load_model(str(tmp_path), "binaural", "cpu")
    assert loaded_cfg.model.masks == "ears" and loaded_cfg.loss.kind == "2ch"
    assert loaded.decoder[-1].up.conv.out_channels == 4
    x = torch.randn(1, 2, 257, cfg.model.frames)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert set(b) == {"left_spec", "right_spec", "ear_masks"}
    torch.testing.assert_close(a["left_spec"], b["left_spec"])
    # served: mono in, two ears out, through the same ear formation
    mono = np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32) * 0.1
    ears = serve(loaded, loaded_cfg, {"mono": mono})
    assert ears.shape == (1, 2, 8000) and np.isfinite(ears).all() and not np.allclose(ears[0, 0], ears[0, 1])
