"""Pretrained ViT weights from local files (trainables/binaural/weights.py): every format is written to disk here from
a randomly initialised timm test ViT in its original key layout (DPT / MiDaS v3, timm, safetensors, Google .npz),
converted, loaded into ViTFeatures and compared tensor by tensor with the source; DPT's input normalisation; the
config's depth_rgb_norm; and how `binsweep train` and its MLflow run say which branches start random.
"""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError
from safetensors.torch import save_file
from typer.testing import CliRunner

from sweep_platform import tracking
from sweep_platform.cli import app
from sweep_platform.training import Resources, _find_or_create_run
from trainables.binaural import SPEC
from trainables.binaural import weights as W
from trainables.binaural.config import BinauralConfig, preset
from trainables.binaural.inference import trained_config
from trainables.binaural.model import BinauralNet, ViTFeatures
from trainables.binaural.recipe import IMAGENET_MEAN, IMAGENET_STD, image_input
from trainables.registry import get_trainable

BACKBONE = "test_vit"  # timm's test ViT: 6 blocks, width 64, a CLS token
IMAGE = (32, 64)  # a 2×4 grid
SRC_SIZE = 48  # checkpoints are saved at a 3×3 grid, so loading must resample the position embedding


def tiny(**kw):
    return preset("binaural_tiny", **{"image_size": IMAGE, "backbone": BACKBONE, **kw})


def source_vit(img_size=SRC_SIZE, **kw) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(BACKBONE, pretrained=False, img_size=img_size, **kw).eval()  # with its 1000-class head


def dpt_state(vit: torch.nn.Module, readout: bool = True, seed: int = 2) -> dict[str, torch.Tensor]:
    """isl-org DPT / MiDaS v3 layout: the timm ViT under pretrained.model., per hook a readout projection
    (act_postprocess{i}.0.project.0), reassemble convs (act_postprocess{i}.3/.4) and a scratch.* decoder."""
    g = torch.Generator().manual_seed(seed)
    d = vit.embed_dim
    state = {f"pretrained.model.{k}": v.clone() for k, v in vit.state_dict().items()}
    for i in range(1, 5):
        if readout:
            state[f"pretrained.act_postprocess{i}.0.project.0.weight"] = torch.randn(d, 2 * d, generator=g) * 0.05
            state[f"pretrained.act_postprocess{i}.0.project.0.bias"] = torch.randn(d, generator=g) * 0.05
        state[f"pretrained.act_postprocess{i}.3.weight"] = torch.randn(8, d, 1, 1, generator=g)
        state[f"pretrained.act_postprocess{i}.3.bias"] = torch.randn(8, generator=g)
        state[f"scratch.layer{i}_rn.weight"] = torch.randn(16, 8, 3, 3, generator=g)
    state["scratch.output_conv.0.weight"] = torch.randn(8, 16, 3, 3, generator=g)
    return state


def google_npz(vit: torch.nn.Module, path) -> None:
    """Google's ViT .npz (big_vision / vision_transformer JAX layout): HWIO convs, [in, out] dense kernels,
    attention as [D, heads, head_dim] query/key/value kernels and a [heads, head_dim, D] output kernel."""
    d, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    n = lambda t: t.detach().numpy()  # noqa: E731
    w = {"embedding/kernel": n(vit.patch_embed.proj.weight.permute(2, 3, 1, 0)),
         "embedding/bias": n(vit.patch_embed.proj.bias), "cls": n(vit.cls_token),
         "Transformer/posembed_input/pos_embedding": n(vit.pos_embed),
         "Transformer/encoder_norm/scale": n(vit.norm.weight), "Transformer/encoder_norm/bias": n(vit.norm.bias),
         "head/kernel": n(vit.head.weight.T), "head/bias": n(vit.head.bias)}
    for i, b in enumerate(vit.blocks):
        p = f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = n(b.norm1.weight), n(b.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = n(b.norm2.weight), n(b.norm2.bias)
        for j, name in enumerate(("query", "key", "value")):
            w[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = n(
                b.attn.qkv.weight[j * d:(j + 1) * d].T.reshape(d, heads, d // heads))
            w[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = n(
                b.attn.qkv.bias[j * d:(j + 1) * d].reshape(heads, d // heads))
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = n(
            b.attn.proj.weight.reshape(d, heads, d // heads).permute(1, 2, 0))
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = n(b.attn.proj.bias)
        w[p + "MlpBlock_3/Dense_0/kernel"], w[p + "MlpBlock_3/Dense_0/bias"] = n(b.mlp.fc1.weight.T), n(b.mlp.fc1.bias)
        w[p + "MlpBlock_3/Dense_1/kernel"], w[p + "MlpBlock_3/Dense_1/bias"] = n(b.mlp.fc2.weight.T), n(b.mlp.fc2.bias)
    np.savez(path, **w)


def assert_blocks_equal(vit, src, blocks=range(6)):
    for i in blocks:
        for name, p in src.blocks[i].state_dict().items():
            torch.testing.assert_close(vit.blocks[i].state_dict()[name], p, rtol=0, atol=0, msg=f"blocks.{i}.{name}")


def pixels(seed=0):
    return torch.rand(2, 3, *IMAGE, generator=torch.Generator().manual_seed(seed))  # [B, 3, H, W] in [0, 1]


# -- normalisation


def test_imagenet_constants_are_the_recipes():
    assert W.IMAGENET_MEAN == IMAGENET_MEAN and W.IMAGENET_STD == IMAGENET_STD


def test_renormalisation_maps_imagenet_input_to_dpt_input():
    scale, shift = W.renormalisation(W.IMAGENET_MEAN, W.IMAGENET_STD, W.DPT_MEAN, W.DPT_STD)
    # by hand: scale = std_imagenet / 0.5, shift = (mean_imagenet - 0.5) / 0.5
    torch.testing.assert_close(scale.flatten(), torch.tensor([0.458, 0.448, 0.450]))
    torch.testing.assert_close(shift.flatten(), torch.tensor([-0.030, -0.088, -0.188]))
    p = pixels()
    torch.testing.assert_close(image_input(p, IMAGE) * scale + shift, (p - 0.5) / 0.5)


# -- DPT / MiDaS


def test_dpt_checkpoint_loads_backbone_and_readout_and_sees_dpt_normalised_frames(tmp_path):
    src = source_vit(img_size=IMAGE)  # same grid: the ViT's outputs can be compared with the source's own
    state = dpt_state(src)
    path = tmp_path / "dpt_large-midas-2f21e586.pt"
    torch.save(state, path)
    cfg = tiny(modalities="audio+depth", depth_weights=str(path), readout="project")
    assert cfg.depth_norm == "dpt"
    net = ViTFeatures(cfg, 3, str(path), "depth").eval()
    assert net.taps == [0, 2, 3, 5] and net.renormalise
    assert_blocks_equal(net.vit, src)
    torch.testing.assert_close(net.vit.pos_embed, src.pos_embed, rtol=0, atol=0)
    for k in range(4):  # DPT hook k+1 -> tap k
        hook = f"pretrained.act_postprocess{k + 1}.0.project.0"
        torch.testing.assert_close(net.readout_proj[k][0].weight, state[f"{hook}.weight"], rtol=0, atol=0)
        torch.testing.assert_close(net.readout_proj[k][0].bias, state[f"{hook}.bias"], rtol=0, atol=0)
    assert net.init.startswith(f"DPT/MiDaS weights from {path}; reads the RGB frame, DPT-normalised")
    assert "scratch.* (5 tensors)" in net.init and "classifier head" in net.init

    # Independent reference: the source ViT on DPT-normalised pixels, then DPT's ProjectReadout (concat the CLS token
    # to every token, Linear + GELU) with the file's weights, then the module's own 1×1 convs.
    p = pixels()
    with torch.no_grad():
        got = net(image_input(p, IMAGE))
        taps = src.forward_intermediates((p - 0.5) / 0.5, indices=net.taps, return_prefix_tokens=True,
                                         intermediates_only=True)
        ref = []
        for k, (grid, prefix) in enumerate(taps):
            tokens = grid.flatten(2).transpose(1, 2)  # [B, R, D]
            cat = torch.cat([tokens, prefix[:, :1].expand_as(tokens)], dim=-1)
            w, b = (state[f"pretrained.act_postprocess{k + 1}.0.project.0.{n}"] for n in ("weight", "bias"))
            ref.append(net.proj[k](F.gelu(cat @ w.T + b).transpose(1, 2).reshape(grid.shape)))
    torch.testing.assert_close(got, torch.cat(ref, dim=1), rtol=1e-4, atol=1e-5)


def test_midas_checkpoint_with_optimizer_and_readout_ignore_resamples_and_drops_the_readout(tmp_path):
    src = source_vit()
    path = tmp_path / "dpt_large_384.pt"
    torch.save({"model": dpt_state(src), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    cfg = tiny(modalities="audio+depth", depth_weights=str(path))  # readout: ignore
    torch.manual_seed(0)
    net = ViTFeatures(cfg, 3, str(path), "depth").eval()
    assert_blocks_equal(net.vit, src)
    assert net.vit.pos_embed.shape == (1, 1 + 8, 64)  # 3×3 -> 2×4
    torch.testing.assert_close(net.vit.pos_embed[:, :1], src.pos_embed[:, :1])  # the CLS position is not resampled
    assert "DPT readout projection (model.readout=ignore)" in net.init
    torch.manual_seed(0)
    random = ViTFeatures(tiny(modalities="audio+depth", depth_rgb_norm="dpt"), 3, None, "depth").eval()
    assert random.init.startswith("random init (no model.depth_weights)")
    x = image_input(pixels(), IMAGE)
    with torch.no_grad():  # same seed, same 1×1 convs: only the loaded ViT differs
        assert not torch.allclose(net(x), random(x), atol=1e-3)


def test_loaded_readout_survives_binauralnets_init(tmp_path):
    path = tmp_path / "dpt.pt"
    state = dpt_state(source_vit())
    torch.save(state, path)
    m = BinauralNet(tiny(modalities="audio+image+depth", depth_weights=str(path), readout="project"))
    torch.testing.assert_close(m.depth_net.readout_proj[2][0].weight,
                               state["pretrained.act_postprocess3.0.project.0.weight"], rtol=0, atol=0)
    assert m.image_net.init.startswith("random init") and not m.image_net.renormalise
    assert m.depth_net.readout_proj[2][0].weight.std() > 0.04  # not re-drawn at N(0, 0.02) like the image branch's
    assert m.image_net.readout_proj[2][0].weight.std() < 0.025


@pytest.mark.parametrize("keys, message", [
    ({"pretrained.model.patch_embed.backbone.stem.conv.weight": torch.zeros(64, 3, 7, 7)}, "DPT-Hybrid"),
    ({"pretrained.model.blocks.0.attn.relative_position_bias_table": torch.zeros(4, 2)}, "BEiT/Swin"),
    ({"pretrained.layer1.0.weight": torch.zeros(4), "scratch.layer1_rn.weight": torch.zeros(4)}, "without ViT blocks"),
    ({"dpt.embeddings.cls_token": torch.zeros(1, 1, 4)}, "Hugging Face transformers DPT"),
    ({"conv1.weight": torch.zeros(4, 3, 7, 7)}, "no ViT patch embedding"),
])
def test_unsupported_checkpoints_are_refused_naming_the_file(tmp_path, keys, message):
    path = tmp_path / "weights.pt"
    torch.save(keys, path)
    with pytest.raises(W.WeightsError, match=message) as err:
        W.read_checkpoint(path)
    assert str(path) in str(err.value) and "vit_large_patch16_384" in str(err.value)  # what is supported


def test_wrong_architecture_names_file_backbone_and_first_mismatches(tmp_path):
    path = tmp_path / "dpt_base.pt"
    torch.save(dpt_state(source_vit(embed_dim=32, num_heads=2)), path)
    with pytest.raises(W.WeightsError) as err:
        BinauralNet(tiny(modalities="audio+depth", depth_weights=str(path)))
    msg = str(err.value)
    assert str(path) in msg and "'test_vit'" in msg and "DPT/MiDaS" in msg
    assert "cls_token: file (1, 1, 32) vs model (1, 1, 64)" in msg


def test_dpt_weights_are_refused_for_the_image_branch_and_for_imagenet_input(tmp_path):
    path = tmp_path / "dpt.pt"
    torch.save(dpt_state(source_vit()), path)
    with pytest.raises(W.WeightsError, match="image_weights .* is a DPT/MiDaS depth network"):
        BinauralNet(tiny(modalities="audio+image", image_weights=str(path)))
    with pytest.raises(W.WeightsError, match="set model.depth_rgb_norm: dpt"):
        BinauralNet(tiny(modalities="audio+depth", depth_weights=str(path), depth_rgb_norm="imagenet"))


# -- ImageNet weights: timm, safetensors, Google .npz


def test_timm_state_dict_from_ddp_under_state_dict_key(tmp_path):
    src = source_vit()
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 90}, path)
    ckpt = W.read_checkpoint(path)
    assert ckpt.format == "timm" and not any(k.startswith(("head.", "module.")) for k in ckpt.vit)
    net = ViTFeatures(tiny(modalities="audio+image", image_weights=str(path)), 3, str(path), "image")
    assert_blocks_equal(net.vit, src)
    assert net.init.startswith(f"timm state_dict weights from {path}; reads the RGB frame, ImageNet-normalised")
    assert not net.renormalise and "readout" not in net.init
    project = ViTFeatures(tiny(modalities="audio+image", image_weights=str(path), readout="project"), 3, str(path))
    assert project.init.endswith("readout projection: random init (none in the file)")


def test_safetensors_into_the_depth_map_branch_sums_the_input_channels(tmp_path):
    src = source_vit()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    cfg = tiny(modalities="audio+depth", depth_source="map", depth_weights=str(path))
    assert cfg.depth_norm == "imagenet"
    net = ViTFeatures(cfg, 1, str(path), "depth")
    assert W.read_checkpoint(path).format == "safetensors"
    assert_blocks_equal(net.vit, src)
    torch.testing.assert_close(net.vit.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    assert "reads the depth map (ground truth for generated scenes)" in net.init and not net.renormalise


def test_google_npz_loads_through_timm(tmp_path):
    src = source_vit()
    path = tmp_path / "ViT-Ti_16.npz"
    google_npz(src, path)
    assert W.read_checkpoint(path).format == "npz"
    net = ViTFeatures(tiny(modalities="audio+image", image_weights=str(path)), 3, str(path), "image")
    for i in range(6):
        for name, p in src.blocks[i].state_dict().items():
            torch.testing.assert_close(net.vit.blocks[i].state_dict()[name], p, msg=f"blocks.{i}.{name}")
    torch.testing.assert_close(net.vit.patch_embed.proj.weight, src.patch_embed.proj.weight)
    torch.testing.assert_close(net.vit.cls_token, src.cls_token)
    assert net.vit.pos_embed.shape == (1, 9, 64)


def test_npz_with_other_depth_and_unknown_files_are_refused(tmp_path):
    path = tmp_path / "ViT-S.npz"
    google_npz(source_vit(depth=4), path)
    with pytest.raises(W.WeightsError, match="4 encoder blocks in the file, 6 in the model"):
        ViTFeatures(tiny(modalities="audio+image", image_weights=str(path)), 3, str(path), "image")
    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module, not a state_dict: weights_only refuses it
    with pytest.raises(W.WeightsError, match="whole_model.pt: cannot be read as a torch file"):
        W.read_checkpoint(pickled)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(W.WeightsError, match="notes.txt: not a weights file"):
        W.read_checkpoint(text)
    with pytest.raises(W.WeightsError, match="no such file .* never downloaded"):
        W.read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(W.WeightsError, match="a URI; pretrained weights are read from local files"):
        W.read_checkpoint("s3://bucket/dpt_large_384.pt")


def test_relative_paths_are_under_binsweep_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BINSWEEP_HOME", str(tmp_path))
    src = source_vit()
    (tmp_path / "weights").mkdir()
    torch.save(src.state_dict(), tmp_path / "weights" / "vit.pth")
    net = BinauralNet(tiny(modalities="audio+image", image_weights="weights/vit.pth")).image_net
    assert_blocks_equal(net.vit, src)
    assert "weights from weights/vit.pth" in net.init


# -- the config: depth_rgb_norm


def test_depth_rgb_norm_auto_is_pinned_and_survives_dropping_the_weights_path(tmp_path):
    path = tmp_path / "dpt.pt"
    torch.save(dpt_state(source_vit()), path)
    raw = {"model": {"preset": "binaural_tiny", "backbone": BACKBONE, "image_size": list(IMAGE),
                     "depth_weights": str(path)}}
    cfg = BinauralConfig.model_validate(raw)
    assert cfg.model.depth_rgb_norm == "dpt"  # pinned, not "auto"
    served = trained_config(cfg)  # what a logged model is rebuilt with: no weights paths
    assert served.model.depth_weights is None and served.model.depth_norm == "dpt"
    assert BinauralNet(served.model).depth_net.renormalise
    assert BinauralConfig.model_validate(BinauralConfig.model_validate(raw).model_dump()).model.depth_rgb_norm == "dpt"
    bare = BinauralConfig.model_validate({"model": {"preset": "binaural_tiny"}})
    assert bare.model.depth_rgb_norm == "imagenet"  # random init: what models saved before the field saw
    with pytest.raises(ValidationError, match="depth_rgb_norm=dpt applies to a depth network reading RGB"):
        tiny(modalities="audio+depth", depth_source="map", depth_rgb_norm="dpt")


# -- saying which branches start random


def test_describe_init_for_each_branch():
    assert W.describe_init(tiny(modalities="audio")) == {}
    got = W.describe_init(tiny(image_weights="/w/vit.npz"))
    assert got == {"image": "weights from /w/vit.npz; reads the RGB frame, ImageNet-normalised",
                   "depth": "random init (no model.depth_weights); reads the RGB frame, ImageNet-normalised"}
    assert W.describe_init(tiny(depth_weights="/w/dpt.pt"))["depth"] == \
        "weights from /w/dpt.pt; reads the RGB frame, DPT-normalised"


def test_train_cli_prints_which_branches_start_random(tmp_path):
    cfg = tmp_path / "binaural.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"preset": "binaural_tiny", "backbone": BACKBONE},
                                   "data": {"root": str(tmp_path / "no-dataset")}}))
    res = CliRunner().invoke(app, ["train", "binaural", "--config", str(cfg)])
    assert res.exit_code != 0 and "no binaural dataset" in res.output  # stops before Ray starts
    assert "image: random init (no model.image_weights); reads the RGB frame, ImageNet-normalised" in res.output
    assert "depth: random init (no model.depth_weights); reads the RGB frame, ImageNet-normalised" in res.output


def test_mlflow_run_is_tagged_with_each_branchs_start(tmp_path):
    config = BinauralConfig.model_validate({"model": {"preset": "binaural_tiny", "backbone": BACKBONE,
                                                      "image_weights": str(tmp_path / "vit.pth")},
                                            "data": {"root": str(tmp_path)}})
    run_id = _find_or_create_run(SPEC, config, "init-tags", "binsweep-test-init", Resources())
    tags = tracking.client().get_run(run_id).data.tags
    image = f"weights from {tmp_path / 'vit.pth'}; reads the RGB frame, ImageNet-normalised"
    assert tags["binsweep.init.image"] == image
    assert tags["binsweep.init.depth"].startswith("random init (no model.depth_weights)")
    bast = get_trainable("bast")  # a trainable without the hook: no such tags, nothing printed
    assert tracking.init_tags(bast, bast.config_type()) == {}
