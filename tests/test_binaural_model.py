import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from trainables.binaural import metrics
from trainables.binaural.config import PRESETS, BinauralConfig, BinauralModelConfig, preset
from trainables.binaural.model import (BinauralNet, complex_mul, count_parameters, even_taps, istft, stft)

MODALITIES = ["audio", "audio+image", "audio+depth", "audio+image+depth"]
B = 2
IMAGE = (32, 64)  # a 2×4 ViT grid: R = 8 regions per visual modality
# timm's own test ViT (6 blocks, width 64): vit_tiny's trunc_normal_ init alone takes seconds on two cores.
BACKBONE = "test_vit"
LEVELS = [(8, 2), (16, 4), (32, 8), (64, 16), (128, 32)]  # (f_i, t_i) at each decoder layer's input


def tiny(**kw) -> BinauralModelConfig:
    return preset("binaural_tiny", **{"image_size": IMAGE, "backbone": BACKBONE, **kw})


def inputs(cfg: BinauralModelConfig, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"mix_spec": torch.randn(B, 2, cfg.freq_bins, cfg.frames, generator=g)}
    if cfg.needs_image:
        out["image"] = torch.randn(B, 3, *cfg.image_size, generator=g)
    if cfg.needs_depth_map:
        out["depth"] = torch.rand(B, 1, *cfg.image_size, generator=g)
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def full_model() -> BinauralNet:
    torch.manual_seed(0)
    return BinauralNet(tiny()).eval()


# --- config ----------------------------------------------------------------------------------------------------------

def test_config_defaults_are_the_2_5d_front_end():
    cfg = BinauralModelConfig()
    assert (cfg.clip_samples, cfg.freq_bins, cfg.frames) == (10080, 257, 64)
    assert cfg.unet_channels == (64, 128, 256, 512, 512) and cfg.proj_channels * cfg.n_taps == 512
    assert PRESETS["binaural_paper"].backbone == "vit_large_patch16_384"


def test_preset_expansion_and_strictness():
    cfg = BinauralConfig.model_validate({"model": {"preset": "binaural_tiny", "modalities": "audio"},
                                         "loss": {"kind": "both"}})
    assert cfg.model.unet_channels == (16, 32, 64, 64, 64) and cfg.model.modalities == "audio"
    with pytest.raises(ValidationError, match="unknown"):
        BinauralConfig.model_validate({"model": {"preset": "nope"}})
    with pytest.raises(ValidationError, match="extra"):
        BinauralConfig.model_validate({"model": {"preset": "binaural_tiny", "dropout": 0.1}})
    with pytest.raises(ValidationError, match="must equal"):
        preset("binaural_tiny", proj_channels=8)
    with pytest.raises(ValidationError, match="divisible"):
        preset("binaural_tiny", clip_seconds=0.5)
    with pytest.raises(ValidationError, match="increasing"):
        preset("binaural_tiny", tap_blocks=(5, 2, 8, 11))
    with pytest.raises(ValidationError):
        preset("binaural_tiny", modalities="image")


def test_even_taps_match_dpt_hooks():
    assert even_taps(24, 4) == [5, 11, 17, 23]  # paper layers 6, 12, 18, 24 (DPT vitl16_384)
    assert even_taps(12, 4) == [2, 5, 8, 11]  # DPT vitb16_384
    assert even_taps(6, 4) == [0, 2, 3, 5]


def test_blocks_after_the_deepest_tap_are_pruned():
    m = BinauralNet(tiny(modalities="audio+image", tap_blocks=(0, 1, 2, 3)))
    assert m.image_net.taps == [0, 1, 2, 3] and len(m.image_net.vit.blocks) == 4  # of 6
    assert BinauralNet(tiny(modalities="audio+image")).image_net.taps == [0, 2, 3, 5]
    assert isinstance(m.image_net.vit.norm, torch.nn.Identity)


# --- STFT ------------------------------------------------------------------------------------------------------------

def test_stft_shape_and_round_trip():
    wave = torch.randn(3, 10080)
    spec = stft(wave)
    assert spec.shape == (3, 2, 257, 64)
    assert (istft(spec, 10080) - wave).abs().max() < 1e-4


def test_stft_equals_librosa_style_numpy_stft():
    wave = np.random.default_rng(0).standard_normal(4000)
    ours = stft(torch.from_numpy(wave)).numpy()  # float64
    ref = metrics.stft(wave)
    np.testing.assert_allclose(ours[0] + 1j * ours[1], ref, atol=1e-9)


# --- forward ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("modalities", MODALITIES)
def test_shapes_per_modality(modalities):
    cfg = tiny(modalities=modalities)
    m = BinauralNet(cfg).eval()
    with torch.no_grad():
        out = m(**inputs(cfg), return_attention=True)
    assert out["diff_spec"].shape == out["mask"].shape == (B, 2, 256, 64)
    visual = [n for n in ("image", "depth") if n in modalities]
    assert sorted(out["attention"]) == sorted(visual)
    for maps in out["attention"].values():
        assert [tuple(a.shape) for a in maps] == [(B, 8, f, t) for f, t in LEVELS]
    assert (m.image_net is not None) == ("image" in modalities)
    assert (m.depth_net is not None) == ("depth" in modalities)


def test_depth_source_map_reads_a_one_channel_depth_map():
    cfg = tiny(modalities="audio+depth", depth_source="map")
    m = BinauralNet(cfg).eval()
    assert m.depth_net.vit.patch_embed.proj.in_channels == 1 and m.depth_net.in_chans == 1
    x = inputs(cfg)
    assert set(x) == {"mix_spec", "depth"}  # no RGB needed
    with torch.no_grad():
        assert m(**x)["diff_spec"].shape == (B, 2, 256, 64)
    with pytest.raises(ValueError, match="needs depth"):
        m(x["mix_spec"])
    with pytest.raises(ValueError, match="does not use it"):
        m(x["mix_spec"], image=torch.zeros(B, 3, *IMAGE), depth=x["depth"])


def test_depth_source_rgb_reads_the_frame(full_model):
    assert full_model.depth_net.in_chans == 3 and full_model.depth_net is not full_model.image_net
    x = inputs(full_model.cfg)
    with pytest.raises(ValueError, match="does not use it"):
        full_model(**x, depth=torch.zeros(B, 1, *IMAGE))
    with pytest.raises(ValueError, match=r"image must be"):
        full_model(x["mix_spec"], image=torch.zeros(B, 3, 64, 64))
    with pytest.raises(ValueError, match="mix_spec"):
        full_model(x["mix_spec"][:, :, :, :60], image=x["image"])


def test_mask_is_bounded_and_multiplies_the_mix_as_complex(full_model):
    x = inputs(full_model.cfg)
    x["mix_spec"] = x["mix_spec"] * 1e4  # saturate the decoder
    with torch.no_grad():
        out = full_model(**x)
    mask, mix = out["mask"], x["mix_spec"][:, :, :-1]
    assert mask.abs().max() <= 1.0 and mask.abs().max() > 0.5
    expected = torch.view_as_complex(mask.permute(0, 2, 3, 1).contiguous()) * torch.view_as_complex(
        mix.permute(0, 2, 3, 1).contiguous())
    torch.testing.assert_close(out["diff_spec"], torch.view_as_real(expected).permute(0, 3, 1, 2))
    torch.testing.assert_close(complex_mul(torch.tensor([[[[0.0]], [[1.0]]]]), torch.tensor([[[[0.0]], [[1.0]]]])),
                               torch.tensor([[[[-1.0]], [[0.0]]]]))  # i · i = -1


def test_skip_connections_everywhere_but_the_first_decoder_layer(full_model):
    dec = full_model.decoder
    assert [layer.uses_skip for layer in dec] == [False, True, True, True, True]
    R = 2 * 8  # image + depth regions
    # audio (+ encoder skip) + attention channels; tiny U-Net (16, 32, 64, 64, 64)
    assert [layer.in_channels for layer in dec] == [64 + R, 128 + R, 128 + R, 64 + R, 32 + R]
    assert [layer.up.conv.out_channels for layer in dec] == [64, 64, 32, 16, 2]
    assert isinstance(dec[-1].up.norm, torch.nn.Identity)  # outermost: bare transposed conv before the mask
    # Only layers after the first align the visual channels (paper: "for i = 1 we do not use one-layer network").
    assert [type(a["image"].align).__name__ for a in full_model.attention] == ["Identity"] + ["ChannelAlign"] * 4


def test_first_layer_attention_is_cosine_similarity(full_model):
    x = inputs(full_model.cfg)
    with torch.no_grad():
        att = full_model(**x, return_attention=True)["attention"]
        f_a = full_model.encoder(x["mix_spec"])[-1]  # [B, 64, 8, 2]
        f_i = full_model.image_net(x["image"])  # [B, 64, 2, 4]
    assert f_i.shape == (B, 64, 2, 4)
    expected = F.cosine_similarity(f_i.flatten(2)[:, :, :, None, None], f_a[:, :, None], dim=1)  # [B, R, 8, 2]
    torch.testing.assert_close(att["image"][0], expected, atol=1e-5, rtol=1e-5)
    assert all(a.abs().max() <= 1.0 + 1e-6 for maps in att.values() for a in maps)


# The full model with the default readout; DPT's "project" readout on the cheaper one-ViT model.
@pytest.mark.parametrize("readout,modalities", [("ignore", "audio+image+depth"), ("project", "audio+image")])
def test_gradient_reaches_every_parameter(readout, modalities):
    cfg = tiny(readout=readout, modalities=modalities)
    m = BinauralNet(cfg).train()
    out = m(**inputs(cfg))
    out["diff_spec"].square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"
    zero = [n for n, p in m.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient for {zero}"


def test_local_backbone_weights_are_loaded_and_adapted(tmp_path):
    src = timm.create_model(BACKBONE, pretrained=False, img_size=48)  # 3×3 grid, with a head
    path = tmp_path / "vit.pt"
    torch.save(src.state_dict(), path)
    cfg = tiny(modalities="audio+image+depth", depth_source="map", image_weights=str(path), depth_weights=str(path))
    m = BinauralNet(cfg)
    vit_i, vit_d = m.image_net.vit, m.depth_net.vit
    torch.testing.assert_close(vit_i.blocks[3].attn.qkv.weight, src.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(vit_d.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
    assert vit_i.pos_embed.shape == (1, 1 + 8, 64)  # resampled from 3×3 to the 2×4 grid
    torch.testing.assert_close(vit_d.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(dim=1, keepdim=True))


def test_parameter_counts():
    # Audio-only tiny U-Net by hand: conv 4×4 (+bias) and BN (2 per channel) for each level, both halves.
    enc = [(2, 16), (16, 32), (32, 64), (64, 64), (64, 64)]
    dec = [(64, 64), (128, 64), (128, 32), (64, 16), (32, 2)]
    by_hand = sum(i * o * 16 + o + 2 * o for i, o in enc) + sum(i * o * 16 + o + 2 * o for i, o in dec) - 2 * 2
    assert count_parameters(BinauralNet(tiny(modalities="audio"))) == by_hand
    # The paper model, built on the meta device (no memory): 2 × pruned ViT-L + U-Net + attention.
    with torch.device("meta"):
        paper = BinauralNet(preset("binaural_paper"))
    assert paper.image_net.taps == [5, 11, 17, 23] and paper.image_net.grid == (14, 28)
    vit_l = 303_500_288  # vit_large_patch16 at 224×448 without norm and head
    taps = 4 * (1024 * 128 + 128)
    assert count_parameters(paper.image_net) == count_parameters(paper.depth_net) == vit_l + taps
    assert count_parameters(paper) == 637_762_050
