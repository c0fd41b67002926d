"""Pretrained weights for the image and depth ViTs from local files, in the formats they are published in.

Nothing is ever downloaded: `model.image_weights` / `model.depth_weights` name files on the machine that trains
(relative paths are under BINSWEEP_HOME, like a dataset folder).
The format is detected from the file's content, not its name:

- timm state_dict (`.pth`, `.pt`, `.bin`): ImageNet ViTs as timm saves them, optionally under "state_dict" / "model"
  or with DDP's "module." prefix.
- safetensors: the same keys (what the HF hub serves for timm models).
- Google's ViT `.npz` (JAX/Flax, `Transformer/encoderblock_N/...`): read by timm's own converter.
- DPT / MiDaS v3 (isl-org/DPT `dpt_large-midas-*.pt`, MiDaS `dpt_large_384.pt` / `dpt_base_384.pt`): the checkpoint of
  the whole depth network. `pretrained.model.*` is the timm ViT (timm 0.4.5 key names, which timm 1.x still uses),
  `pretrained.act_postprocess{1..4}.0.project.0.*` DPT's readout projection (Linear 2D→D + GELU) of each hook, the
  rest of `pretrained.*` its reassemble convs and `scratch.*` its decoder and head: those are dropped, since the
  binauralizer taps the ViT itself (binauralization.md §7). DPT-Hybrid (ResNet-50 stem), BEiT/Swin/LeViT MiDaS v3.1
  and the convolutional MiDaS v2.x are refused: their taps are not blocks of a plain ViT.

DPT/MiDaS networks were trained on frames normalised with mean 0.5, std 0.5 (`NormalizeImage` in DPT's
`run_monodepth.py`), the binauralizer's frames with ImageNet's mean and std: `renormalisation` gives the per-channel
affine map from one to the other that ViTFeatures applies when the depth branch reads RGB (`model.depth_rgb_norm`).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from trainables.home import resolve

# The recipe's frames (recipe.image_input) use these same numbers; a test ties the two together.
IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
DPT_MEAN, DPT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # DPT run_monodepth.py NormalizeImage

SUPPORTED = ("a timm ViT state_dict (.pth/.pt/.bin), .safetensors, Google's ViT .npz, or a DPT / MiDaS v3 ViT "
             "checkpoint (dpt_large*.pt, dpt_base*.pt: backbone vit_large_patch16_384 / vit_base_patch16_384)")
_DPT_VIT = "pretrained.model."
_DPT_READOUT = re.compile(r"^pretrained\.act_postprocess([1-9])\.0\.project\.0\.(weight|bias)$")
_NPZ_EMBEDDING = ("embedding/kernel", "opt/target/embedding/kernel", "params/embedding/kernel",
                  "params/img/embedding/kernel")


class WeightsError(ValueError):
    """A weights file that cannot start a backbone; the message names the file, the format and what would fit."""


@dataclass
class Checkpoint:
    """A weights file read and converted to timm's ViT keys.

    vit: the timm VisionTransformer state_dict, or None for a Google .npz (timm's own reader loads those into a model).
    readout: DPT's readout projection per hook, shallow to deep: (weight [D, 2D], bias [D]); empty when there is none.
    dropped: what of the file the backbone does not use, in words (for the run's description of its start).
    """

    path: str
    format: str  # "timm", "safetensors", "npz", "dpt"
    vit: dict[str, torch.Tensor] | None
    readout: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def is_dpt(self) -> bool:
        return self.format == "dpt"

    @property
    def label(self) -> str:
        return {"timm": "timm state_dict", "safetensors": "safetensors", "npz": "Google ViT .npz",
                "dpt": "DPT/MiDaS"}[self.format]


def sniff(path: Path) -> str:
    """The container of a weights file from its first bytes: "torch" (zip or legacy pickle), "npz" or "safetensors"."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":  # a zip: torch's format (…/data.pkl) or numpy's .npz (*.npy members)
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith(".npy") for n in names):
            return "npz"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
    elif head[:1] == b"\x80":  # pickle protocol 2+: torch.save with _use_new_zipfile_serialization=False
        return "torch"
    elif len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header
        return "safetensors"
    raise WeightsError(f"{path}: not a weights file binsweep can read; expected {SUPPORTED}")


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    """A training checkpoint's model part: DPT/MiDaS keep {"model": ..., "optimizer": ...}, others "state_dict"."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no state_dict of tensors; expected {SUPPORTED}")
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a weights file (relative paths are under BINSWEEP_HOME, like a dataset) and convert it to timm ViT keys;
    WeightsError names the file and what is supported."""
    if "://" in str(path):
        raise WeightsError(f"{path}: a URI; pretrained weights are read from local files, never downloaded")
    path = resolve(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (pretrained weights are read from local files, never downloaded)")
    container = sniff(path)
    if container == "npz":
        import numpy as np

        with np.load(path) as npz:
            keys = set(npz.files)
        if not keys & set(_NPZ_EMBEDDING):
            raise WeightsError(f"{path}: a .npz without a ViT patch embedding (one of {', '.join(_NPZ_EMBEDDING)}); "
                               f"expected {SUPPORTED}")
        return Checkpoint(str(path), "npz", None)
    try:
        if container == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:  # weights_only: a checkpoint from shared storage cannot run code (README, security defaults)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, OSError, EOFError) as exc:
        raise WeightsError(f"{path}: cannot be read as a {container} file ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); expected {SUPPORTED}") from None
    return _convert(path, "safetensors" if container == "safetensors" else "timm", _unwrap(state, path))


def _convert(path: Path, fmt: str, state: dict[str, torch.Tensor]) -> Checkpoint:
    if any(k.startswith("pretrained.") for k in state):
        return _from_dpt(path, state)
    if any(k.startswith(("dpt.", "backbone.embeddings.")) for k in state):
        raise WeightsError(f"{path}: a Hugging Face transformers DPT checkpoint; binsweep reads the original "
                           f"isl-org DPT/MiDaS .pt files. Expected {SUPPORTED}")
    if "patch_embed.proj.weight" not in state:
        raise WeightsError(f"{path}: no ViT patch embedding (patch_embed.proj.weight); first keys "
                           f"{list(state)[:5]}. Expected {SUPPORTED}")
    head = [k for k in state if k.startswith("head.")]
    vit = {k: v for k, v in state.items() if not k.startswith("head.")}
    return Checkpoint(str(path), fmt, vit, dropped=[f"classifier head ({len(head)} tensors)"] if head else [])


def _from_dpt(path: Path, state: dict[str, torch.Tensor]) -> Checkpoint:
    """DPT / MiDaS v3 (isl-org layout) -> the timm ViT under `pretrained.model.` and the readout projections."""
    keys = list(state)
    if any(k.startswith(_DPT_VIT + "patch_embed.backbone.") for k in keys):
        raise WeightsError(f"{path}: a DPT-Hybrid checkpoint (ViT-B/16 on a ResNet-50 stem); its first two hooks are "
                           f"ResNet stages, not ViT blocks, so it cannot start a plain ViT. Supported: {SUPPORTED}")
    if any("relative_position" in k for k in keys) or any(k.startswith(_DPT_VIT + "layers.") for k in keys):
        raise WeightsError(f"{path}: a MiDaS v3.1 BEiT/Swin checkpoint, not a plain ViT. Supported: {SUPPORTED}")
    if not any(k.startswith(_DPT_VIT + "blocks.") for k in keys):
        raise WeightsError(f"{path}: a DPT/MiDaS checkpoint without ViT blocks under {_DPT_VIT!r} (MiDaS v2.x ResNeXt "
                           f"or a v3.1 LeViT/Next-ViT?); first keys {keys[:5]}. Supported: {SUPPORTED}")
    vit = {k[len(_DPT_VIT):]: v for k, v in state.items() if k.startswith(_DPT_VIT)}
    vit = {k: v for k, v in vit.items() if not k.startswith("head.")}  # timm's ImageNet classifier, never used
    readout: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = _DPT_READOUT.match(k)
        if m:
            readout.setdefault(int(m[1]), {})[m[2]] = v
    hooks = sorted(readout)
    if hooks != list(range(1, len(hooks) + 1)) or any(set(readout[h]) != {"weight", "bias"} for h in hooks):
        raise WeightsError(f"{path}: DPT readout projections are incomplete (hooks {hooks}); the file is damaged")
    used = {k for k in keys if k.startswith(_DPT_VIT) or _DPT_READOUT.match(k)}
    n_scratch = sum(k.startswith("scratch.") for k in keys)
    n_other = len(keys) - len(used) - n_scratch
    dropped = [f"DPT decoder and head scratch.* ({n_scratch} tensors)"] if n_scratch else []
    dropped += [f"reassemble convs and other non-ViT tensors ({n_other})"] if n_other else []
    dropped += ["classifier head"] if any(k.startswith(_DPT_VIT + "head.") for k in keys) else []
    return Checkpoint(str(path), "dpt", vit, [(readout[h]["weight"], readout[h]["bias"]) for h in hooks], dropped)


def _fit_state(vit: nn.Module, ckpt: Checkpoint, backbone: str) -> dict[str, torch.Tensor]:
    """The checkpoint's ViT tensors resampled to this model (pos-embed grid, patch size, input channels), checked
    key by key: a wrong architecture fails here with the first mismatches, before anything is copied."""
    from timm.models import adapt_input_conv
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    state = dict(ckpt.vit)
    own = vit.state_dict()
    same_width = ("pos_embed" in state and "pos_embed" in own
                  and state["pos_embed"].shape[-1] == own["pos_embed"].shape[-1])
    if isinstance(vit, VisionTransformer) and same_width:  # another width fails below, naming the keys
        state = checkpoint_filter_fn(state, vit)  # resamples pos_embed to this grid, converts old timm layouts
    proj = "patch_embed.proj.weight"
    if proj in state and state[proj].ndim == 4 and state[proj].shape[1] != own[proj].shape[1]:
        state[proj] = adapt_input_conv(own[proj].shape[1], state[proj])  # RGB weights for a 1-channel depth map
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        parts = (([f"shapes {'; '.join(wrong[:3])}"] if wrong else []) + ([f"missing {missing[:3]}"] if missing else [])
                 + ([f"unexpected {unexpected[:3]}"] if unexpected else []))
        raise WeightsError(f"{ckpt.path} ({ckpt.label}) does not fit backbone {backbone!r}: {', '.join(parts)} "
                           f"({len(wrong)} shape mismatches, {len(missing)} missing, {len(unexpected)} unexpected)")
    return state


def _load_npz(vit: nn.Module, ckpt: Checkpoint, backbone: str) -> None:
    import numpy as np

    with np.load(ckpt.path) as npz:
        blocks = {int(m[1]) for k in npz.files for m in [re.search(r"encoderblock_(\d+)/", k)] if m}
    if blocks and len(blocks) != len(vit.blocks):  # timm's reader would silently load the first blocks only
        raise WeightsError(f"{ckpt.path} ({ckpt.label}) does not fit backbone {backbone!r}: {len(blocks)} encoder "
                           f"blocks in the file, {len(vit.blocks)} in the model")
    try:
        vit.load_pretrained(ckpt.path)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{ckpt.path} ({ckpt.label}) does not fit backbone {backbone!r}: {exc}") from None


def load_backbone(vit: nn.Module, ckpt: Checkpoint, backbone: str) -> None:
    """Copy a converted checkpoint into an unpruned timm ViT (all blocks, final norm) or raise WeightsError."""
    if ckpt.vit is None:
        _load_npz(vit, ckpt, backbone)
        return
    vit.load_state_dict(_fit_state(vit, ckpt, backbone), strict=True)


def load_readout(readout_proj: nn.ModuleList, ckpt: Checkpoint, backbone: str) -> None:
    """DPT's 'project' readout (one Linear 2D→D per hook) into ViTFeatures' readout_proj[k][0], tap k = hook k."""
    if len(ckpt.readout) != len(readout_proj):
        raise WeightsError(f"{ckpt.path} ({ckpt.label}) has readout projections for {len(ckpt.readout)} hooks, the "
                           f"model taps {len(readout_proj)} blocks; use readout=ignore or as many taps as DPT's hooks")
    for k, ((w, b), seq) in enumerate(zip(ckpt.readout, readout_proj)):
        linear = seq[0]
        if w.shape != linear.weight.shape or b.shape != linear.bias.shape:
            raise WeightsError(f"{ckpt.path} ({ckpt.label}) does not fit backbone {backbone!r}: readout of hook "
                               f"{k + 1}: file {tuple(w.shape)} vs model {tuple(linear.weight.shape)}")
        with torch.no_grad():
            linear.weight.copy_(w)
            linear.bias.copy_(b)


def renormalisation(src_mean, src_std, dst_mean, dst_std) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each [1, C, 1, 1], with x_dst = x_src · scale + shift for the same pixels.

    x_src = (p - m_s) / s_s, so p = x_src · s_s + m_s and x_dst = (p - m_d) / s_d = x_src · s_s/s_d + (m_s - m_d)/s_d.
    """
    ms, ss, md, sd = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                      for v in (src_mean, src_std, dst_mean, dst_std))
    return ss / sd, (ms - md) / sd


def describe_init(cfg) -> dict[str, str]:
    """How each visual branch of a BinauralModelConfig starts and what it reads, in words: {"image": ..., "depth": ...}.

    From the config alone (no file is opened), so the platform can print it before training and tag the MLflow run.
    """
    out: dict[str, str] = {}
    if cfg.uses_image:
        out["image"] = (f"weights from {cfg.image_weights}" if cfg.image_weights
                        else "random init (no model.image_weights)") + "; reads the RGB frame, ImageNet-normalised"
    if cfg.uses_depth:
        start = f"weights from {cfg.depth_weights}" if cfg.depth_weights else "random init (no model.depth_weights)"
        if cfg.depth_source == "map":
            reads = "the depth map (ground truth for generated scenes)"
        else:
            reads = f"the RGB frame, {'DPT' if cfg.depth_norm == 'dpt' else 'ImageNet'}-normalised"
        out["depth"] = f"{start}; reads {reads}"
    return out
