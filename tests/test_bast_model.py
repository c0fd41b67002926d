import itertools

import pytest
import torch
from pydantic import ValidationError

from trainables.bast.config import BASTConfig, BASTModelConfig, preset
from trainables.bast.model import BAST, azimuth_to_target, count_parameters, prediction_to_azimuth, sinusoidal_table
from trainables.registry import TrainableNotFoundError, get_trainable, register_trainable

VARIANTS = list(itertools.product(["SP", "NSP"], ["add", "sub", "concat"]))


def tiny(**kw) -> BASTModelConfig:
    return preset("bast_tiny", **kw)


# Paper Table 2, each within 2%.
@pytest.mark.parametrize(
    "sharing,integration,millions",
    [("NSP", "add", 57), ("NSP", "sub", 57), ("SP", "add", 38), ("SP", "sub", 38), ("NSP", "concat", 76),
     ("SP", "concat", 57)],
)
def test_paper_parameter_counts(sharing, integration, millions):
    n = count_parameters(BAST(preset("bast_paper", sharing=sharing, integration=integration)))
    assert abs(n / 1e6 - millions) / millions < 0.02, f"{sharing}-{integration}: {n / 1e6:.2f}M"


def test_parameter_count_by_hand():
    # One D=1024 layer: qkv 1024*3072 (no bias) + proj 1024*1024+1024 + 2 LayerNorms 4*1024 + MLP 2*(1024*1024+1024).
    layer = 1024 * 3072 + 1024 * 1024 + 1024 + 4 * 1024 + 2 * (1024 * 1024 + 1024)
    assert layer == 6_298_624
    stem = 256 * 1024 + 1024  # 16x16 patch -> D, with bias; sinusoidal position embedding has no parameters
    head = 2 * 1024 + 1024 * 2 + 2
    assert count_parameters(BAST(preset("bast_paper"))) == 9 * layer + stem + head


def test_patch_grid_is_180():
    cfg = BASTModelConfig()
    assert cfg.grid == (20, 9) and cfg.num_patches == 180
    m = BAST(tiny())
    tokens = m.patch_embed(torch.randn(2, 129, 61))
    assert tokens.shape == (2, 180, 64)
    assert m.patch_embed.pad == (0, 3, 1, 0)  # padded to 130 x 64: one row on top, three columns on the right


def test_zero_padding_on_top_and_right():
    m = BAST(tiny())
    pe = m.patch_embed
    with torch.no_grad():
        pe.proj.weight.zero_()
        pe.proj.bias.zero_()
        pe.proj.weight[0, 0, 0, :] = 1.0  # channel 0 sums the patch's first (top-most, padded) row
    x = torch.ones(1, 129, 61)
    out = pe(x)[0, :, 0].view(20, 9)
    assert out[0, 0] == 0.0  # the first patch row starts on the zero row of padding
    assert out[1, 0] == 16.0
    # rightmost patch column covers 13 real frames + 3 padded columns
    with torch.no_grad():
        pe.proj.weight.zero_()
        pe.proj.weight[0, 0, 8, :] = 1.0
    assert pe(x)[0, -1, 0] == 13.0


def test_reflection_padding_option():
    m = BAST(tiny(patch_padding="reflect"))
    with torch.no_grad():
        m.patch_embed.proj.weight.zero_()
        m.patch_embed.proj.bias.zero_()
        m.patch_embed.proj.weight[0, 0, 0, 0] = 1.0
    x = torch.arange(129.0).view(1, 129, 1).expand(1, 129, 61).contiguous()
    # reflect pads row -1 with row 1
    assert m.patch_embed(x)[0, 0, 0] == 1.0


@pytest.mark.parametrize("sharing,integration", VARIANTS)
def test_every_variant_forward_backward(sharing, integration):
    torch.manual_seed(0)
    m = BAST(tiny(sharing=sharing, integration=integration))
    out = m(torch.randn(3, 2, 129, 61))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    out.square().sum().backward()
    # In SP with subtraction a constant added by the shared encoder's last block reaches both ears alike and cancels
    # in left - right: that one bias has no gradient by construction.
    cancels = {"encoder_left.blocks.0.mlp.fc2.bias"} if (sharing, integration) == ("SP", "sub") else set()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} got no finite gradient"
        if name in cancels:
            assert p.grad.abs().sum() == 0, name
        else:
            assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_sp_shares_the_encoder_nsp_does_not():
    sp, nsp = BAST(tiny(sharing="SP")), BAST(tiny(sharing="NSP"))
    assert sp.encoder_right is sp.encoder_left
    assert nsp.encoder_right is not nsp.encoder_left
    enc = sum(p.numel() for p in nsp.encoder_right.parameters())
    assert count_parameters(nsp) - count_parameters(sp) == enc


def test_concat_center_works_at_2d():
    m = BAST(tiny(integration="concat"))
    assert m.encoder_center.blocks[0].norm1.normalized_shape == (128,)
    assert m.head[1].in_features == 128


def test_integration_semantics():
    m = BAST(tiny())
    a, b = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    m.integrate.method = "sub"
    assert torch.equal(m.integrate(a, b), a - b)  # left minus right
    m.integrate.method = "concat"
    assert torch.equal(m.integrate(a, b)[..., :8], a)


def test_left_right_order_matters_for_sub():
    torch.manual_seed(0)
    m = BAST(tiny(integration="sub")).eval()
    x = torch.randn(1, 2, 129, 61)
    assert not torch.allclose(m(x), m(x.flip(1)))


def test_fused_attention_equals_explicit():
    torch.manual_seed(0)
    fused = BAST(tiny(dropout=0.0, emb_dropout=0.0), fused_attn=True).eval()
    explicit = BAST(tiny(dropout=0.0, emb_dropout=0.0), fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(4, 2, 129, 61)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)


def test_fused_attention_env_switch(monkeypatch):
    monkeypatch.setenv("BINSWEEP_FUSED_ATTN", "0")
    assert BAST(tiny()).encoder_left.blocks[0].attn.fused is False
    monkeypatch.setenv("BINSWEEP_FUSED_ATTN", "1")
    assert BAST(tiny()).encoder_left.blocks[0].attn.fused is True


@pytest.mark.parametrize("cls_token", [False, True])
def test_return_attention(cls_token):
    cfg = tiny(cls_token=cls_token, layers_center=2)
    m = BAST(cfg).eval()
    x = torch.randn(2, 2, 129, 61)
    out, attn = m(x, return_attention=True)
    torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)
    n = 180 + int(cls_token)
    assert [len(attn[k]) for k in ("left", "right", "center")] == [1, 1, 2]
    for maps in attn.values():
        for a in maps:
            assert a.shape == (2, cfg.heads, n, n)
            torch.testing.assert_close(a.sum(-1), torch.ones(2, cfg.heads, n))


def test_position_embeddings():
    table = sinusoidal_table(180, 64)
    assert table.shape == (180, 64)
    assert table[0, 0] == 0 and table[0, 1] == 1  # sin(0), cos(0)
    torch.testing.assert_close(table[5, 0], torch.tensor(5.0).sin())
    fixed, learned = BAST(tiny()), BAST(tiny(pos_embedding="learned"))
    assert count_parameters(learned) - count_parameters(fixed) == 180 * 64
    assert "token_embed.pos" not in dict(fixed.named_parameters())


def test_cls_pooling():
    m = BAST(tiny(cls_token=True, pool="cls"))
    assert m(torch.randn(2, 2, 129, 61)).shape == (2, 2)


def test_seeded_determinism():
    x = torch.randn(2, 2, 129, 61)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(BAST(tiny()).eval()(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\[B, 2, F, T\]"):
        BAST(tiny())(torch.randn(2, 129, 61))


def test_config_errors_are_clear():
    with pytest.raises(ValidationError, match="layers_left .3. must equal layers_right .2."):
        BASTModelConfig(sharing="SP", layers_left=3, layers_right=2)
    with pytest.raises(ValidationError, match="integration"):
        BASTModelConfig(integration="multiply")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BASTConfig.model_validate({"model": {"embed_dimm": 3}})
    with pytest.raises(ValidationError, match="pool=cls needs cls_token"):
        BASTModelConfig(pool="cls")
    with pytest.raises(KeyError, match="known presets: bast_paper, bast_small, bast_tiny"):
        preset("huge")
    # NSP may use different depths per ear
    assert BASTModelConfig(sharing="NSP", layers_left=3, layers_right=1).layers_right == 1


def test_targets_and_azimuths():
    az = torch.tensor([0.0, 90.0, 180.0, 270.0])
    t = azimuth_to_target(az)
    torch.testing.assert_close(t, torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(prediction_to_azimuth(t * 3), az, atol=1e-4, rtol=0)


def test_registry():
    spec = get_trainable("bast")
    assert spec.primary_metric == "val_ad_deg" and spec.mode == "min"
    model = spec.build_model(spec.config_type(model=tiny()))
    assert isinstance(model, BAST)
    with pytest.raises(TrainableNotFoundError, match="known trainables: bast"):
        get_trainable("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_trainable(spec)


def test_meta_device_build_keeps_torch_dynamo_unimported():
    """A sweep counts each trial's parameters on the meta device, in the driver and in the trial; the position table
    is computed on the CPU so that this does not import torch._dynamo (1.3 s on first use, in the driver's Tune loop).
    A fresh interpreter, so that no other test has imported it already."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from trainables.bast.config import preset\n"
        "from trainables.bast.model import BAST, sinusoidal_table\n"
        "with torch.device('meta'):\n"
        "    model = BAST(preset('bast_paper'))\n"
        "    table = sinusoidal_table(4, 6)\n"
        "assert model.token_embed.pos.device.type == 'meta' and table.device.type == 'meta'\n"
        "assert sum(p.numel() for p in model.parameters()) > 5e7\n"
        "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    pos = BAST(preset("bast_tiny")).token_embed.pos  # built on the CPU: the same table as before the change
    assert pos.device.type == "cpu"
    torch.testing.assert_close(pos[0], sinusoidal_table(pos.shape[1], pos.shape[2]))
