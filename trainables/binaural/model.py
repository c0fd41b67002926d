"""Depth-infused binaural audio generation with hierarchical cross-modal attention (Parida et al. 2021, §2, Fig. 1).

The mono mix spectrogram A goes through the 2.5D Visual Sound audio U-Net (Gao & Grauman 2019; `binauralization.md`
§2): five strided conv-BN-LeakyReLU layers down, five transposed-conv layers up, encoder skips into every decoder layer
but the first. An image ViT and a depth ViT each tap four blocks, reshape the tokens to the patch grid, map each tap
to d channels with a 1×1 conv and concatenate them to 4d (§2.1). At every decoder layer the cosine similarity between
each visual position and each audio time-frequency position (eq. 1–2) is flattened to h·w channels at that layer's
resolution, image and depth maps are concatenated (eq. 3) and joined to the audio features (§2.3). The last layer
gives complex masks in [-1, 1], each multiplied with A (`model.masks`, heads.py): a difference mask M, Õ = M ⊙ A and
ears Ỹl = (A + Õ) / 2, Ỹr = (A − Õ) / 2 (2.5D); or ear masks M_l, M_r, Ỹl = M_l ⊙ A, Ỹr = M_r ⊙ A (APNet's "2 Ch.");
or both.

Notation: B batch, S samples, F frequency bins (257), T frames (64), C channels, d tap channels, (h, w) ViT patch grid,
R = h·w visual regions, (f_i, t_i) resolution of decoder layer i. Spectrograms stack (real, imag) as 2 channels.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

from trainables.binaural import weights as W
from trainables.binaural.config import BinauralModelConfig

_LEAKY_SLOPE = 0.2  # 2.5D unet_conv


def stft(wave: torch.Tensor, n_fft: int = 512, hop_length: int = 160, win_length: int = 400) -> torch.Tensor:
    """[..., S] -> [..., 2, F, T] (real, imag), equal to librosa.stft(center=True, pad_mode='reflect') with Hann.

    torch zero-pads the periodic Hann window to n_fft in the middle, as librosa does, so frames line up with 2.5D's.
    """
    lead = wave.shape[:-1]
    window = torch.hann_window(win_length, periodic=True, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave.reshape(-1, wave.shape[-1]), n_fft, hop_length, win_length, window, center=True,
                      pad_mode="reflect", return_complex=True)  # [N, F, T]
    spec = torch.view_as_real(spec).permute(0, 3, 1, 2)  # [N, 2, F, T]
    return spec.reshape(*lead, *spec.shape[1:])


def istft(spec: torch.Tensor, length: int, n_fft: int = 512, hop_length: int = 160, win_length: int = 400) -> torch.Tensor:
    """[..., 2, F, T] -> [..., S = length]; the inverse of `stft` (least-squares overlap-add, as librosa.istft)."""
    lead = spec.shape[:-3]
    window = torch.hann_window(win_length, periodic=True, dtype=spec.dtype, device=spec.device)
    z = torch.complex(spec[..., 0, :, :], spec[..., 1, :, :]).reshape(-1, *spec.shape[-2:])  # [N, F, T]
    wave = torch.istft(z, n_fft, hop_length, win_length, window, center=True, length=length)  # [N, S]
    return wave.reshape(*lead, length)


def complex_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise complex product of (real, imag) stacks: [B, 2, F, T] x [B, 2, F, T] -> [B, 2, F, T]."""
    re = a[:, 0] * b[:, 0] - a[:, 1] * b[:, 1]
    im = a[:, 0] * b[:, 1] + a[:, 1] * b[:, 0]
    return torch.stack([re, im], dim=1)


class DownBlock(nn.Module):
    """Conv 4×4, stride 2, pad 1 -> BN -> LeakyReLU 0.2 (2.5D unet_conv): halves F - 1 and T."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, f, t] -> [B, C_out, f // 2, t // 2]."""
        return self.act(self.norm(self.conv(x)))


class UpBlock(nn.Module):
    """ConvTranspose 4×4, stride 2, pad 1 -> BN -> ReLU (2.5D unet_upconv); the outermost one is the bare conv."""

    def __init__(self, c_in: int, c_out: int, outermost: bool = False):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
        self.norm = nn.Identity() if outermost else nn.BatchNorm2d(c_out)
        self.act = nn.Identity() if outermost else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C_in, f, t] -> [B, C_out, 2f, 2t]."""
        return self.act(self.norm(self.conv(x)))


class AudioEncoder(nn.Module):
    """The contracting half of the U-Net (paper §2.2): 2 -> channels[0] -> ... -> channels[-1]."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        ins = (2,) + tuple(channels[:-1])
        self.layers = nn.ModuleList(DownBlock(i, o) for i, o in zip(ins, channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 2, F, T] -> every layer's output, shallow to deep; the last is f_A [B, 4d, (F-1)/32, T/32]."""
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def _load_backbone_weights(vit: nn.Module, path: str, backbone: str, branch: str, norm: str):
    """Load local weights (format detected, weights.py) into the unpruned ViT; never downloads. Returns the
    converted checkpoint (its readout projections, what was dropped).

    A 3-channel patch embedding is adapted to a 1-channel depth map by timm's `adapt_input_conv` (channel sum); the
    position embedding is resampled to this grid. A DPT/MiDaS checkpoint is a depth network trained on DPT-normalised
    frames: refused for the image branch, and for a depth branch told to see ImageNet-normalised frames.
    """
    ckpt = W.read_checkpoint(path)
    if ckpt.is_dpt and branch == "image":
        raise W.WeightsError(f"image_weights {path} is a DPT/MiDaS depth network; the image branch takes ImageNet "
                             "weights (timm .pth/.bin, .safetensors, .npz). Did you mean depth_weights?")
    if ckpt.is_dpt and branch == "depth" and norm != "dpt":
        raise W.WeightsError(f"depth_weights {path} is a DPT/MiDaS checkpoint, trained on frames normalised with "
                             "mean 0.5, std 0.5, but depth_rgb_norm resolves to imagenet; set model.depth_rgb_norm: "
                             "dpt (or auto)")
    W.load_backbone(vit, ckpt, backbone)
    return ckpt


def even_taps(depth: int, n_taps: int) -> list[int]:
    """The last block of each of n_taps equal parts, 0-based: (24, 4) -> [5, 11, 17, 23], (12, 4) -> [2, 5, 8, 11]."""
    return [(k + 1) * depth // n_taps - 1 for k in range(n_taps)]


class ViTFeatures(nn.Module):
    """Image or depth network (paper §2.1): a timm ViT tapped at n blocks, each tap 1×1-conved to d, concatenated.

    Blocks after the deepest tap, the final norm and the head are pruned: they would never receive a gradient.
    The depth branch reading RGB with depth_rgb_norm=dpt re-normalises its ImageNet-normalised input to DPT's
    (mean 0.5, std 0.5) with a fixed per-channel affine map, so DPT/MiDaS weights see what they were trained on.
    `init` says how the branch started, in words (weights.describe_init, plus what a checkpoint left out).
    """

    def __init__(self, cfg: BinauralModelConfig, in_chans: int, weights: str | None, branch: str = "image"):
        super().__init__()
        self.vit = timm.create_model(cfg.backbone, pretrained=False, img_size=cfg.image_size, in_chans=in_chans,
                                     num_classes=0)
        if not hasattr(self.vit, "forward_intermediates") or not hasattr(self.vit, "patch_embed"):
            raise ValueError(f"backbone {cfg.backbone!r} is not a timm ViT with forward_intermediates")
        patch = self.vit.patch_embed.patch_size
        if cfg.image_size[0] % patch[0] or cfg.image_size[1] % patch[1]:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of {cfg.backbone}'s patch size {patch}")
        self.branch = branch
        self.init = W.describe_init(cfg).get(branch, "random init")
        ckpt = None
        if weights is not None:
            ckpt = _load_backbone_weights(self.vit, weights, cfg.backbone, branch, cfg.depth_norm)
            self.init = self.init.replace(f"weights from {weights}", f"{ckpt.label} weights from {weights}")
        depth = len(self.vit.blocks)
        self.taps = list(cfg.tap_blocks) if cfg.tap_blocks is not None else even_taps(depth, cfg.n_taps)
        if self.taps[-1] >= depth:
            raise ValueError(f"tap_blocks {self.taps} reach past {cfg.backbone}'s {depth} blocks")
        self.vit.prune_intermediate_layers(self.taps, prune_norm=True, prune_head=True)
        self.grid: tuple[int, int] = tuple(self.vit.patch_embed.grid_size)
        self.in_chans = in_chans
        dim = self.vit.embed_dim
        self.readout = cfg.readout
        if cfg.readout == "project" and not getattr(self.vit, "num_prefix_tokens", 0):
            raise ValueError(f"readout=project needs a CLS token, and {cfg.backbone!r} has none; use readout=ignore")
        if cfg.readout == "project":
            self.readout_proj = nn.ModuleList(nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU()) for _ in self.taps)
        self.proj = nn.ModuleList(nn.Conv2d(dim, cfg.proj_channels, kernel_size=1) for _ in self.taps)
        self._readout_loaded = False
        if ckpt is not None and ckpt.readout:
            if cfg.readout == "project":
                W.load_readout(self.readout_proj, ckpt, cfg.backbone)
                self._readout_loaded = True
            else:
                ckpt.dropped.append("DPT readout projection (model.readout=ignore)")
        if ckpt is not None and ckpt.dropped:
            self.init += f"; not used from the file: {', '.join(ckpt.dropped)}"
        if ckpt is not None and cfg.readout == "project" and not self._readout_loaded:
            self.init += "; readout projection: random init (none in the file)"
        # Non-persistent: derived from the config, so state dicts saved before this existed still load.
        self.renormalise = branch == "depth" and in_chans == 3 and cfg.depth_norm == "dpt"
        if self.renormalise:
            scale, shift = W.renormalisation(W.IMAGENET_MEAN, W.IMAGENET_STD, W.DPT_MEAN, W.DPT_STD)
            self.register_buffer("input_scale", scale, persistent=False)  # [1, 3, 1, 1]
            self.register_buffer("input_shift", shift, persistent=False)  # [1, 3, 1, 1]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters that keep their timm init or loaded weights (BinauralNet re-initialises the rest)."""
        loaded = list(self.readout_proj.parameters()) if self._readout_loaded else []
        return list(self.vit.parameters()) + loaded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_chans, H, W] (RGB: ImageNet-normalised) -> f_I or f_D [B, n_taps·d, h, w]."""
        if self.renormalise:
            x = x * self.input_scale + self.input_shift  # ImageNet -> DPT normalisation, [B, 3, H, W]
        project = self.readout == "project"
        inter = self.vit.forward_intermediates(x, indices=self.taps, return_prefix_tokens=project,
                                               intermediates_only=True)  # n_taps × [B, D, h, w] (+ prefix tokens)
        out = []
        for k, tap in enumerate(inter):
            if project:
                grid, prefix = tap
                B, D, h, w = grid.shape
                tokens = grid.flatten(2).transpose(1, 2)  # [B, R, D]
                cls = prefix[:, :1].expand(-1, tokens.shape[1], -1)  # [B, R, D]
                tokens = self.readout_proj[k](torch.cat([tokens, cls], dim=-1))  # [B, R, D]
                tap = tokens.transpose(1, 2).reshape(B, D, h, w)  # [B, D, h, w]
            out.append(self.proj[k](tap))  # [B, d, h, w]
        return torch.cat(out, dim=1)  # [B, n_taps·d, h, w]


class ChannelAlign(nn.Module):
    """One-layer network + GELU mapping visual channels 4d to a decoder layer's audio channels d_i (paper §2.3).

    A Linear applied at every (h, w) position, written as a 1×1 conv.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, kernel_size=1)
        self.act = nn.GELU()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v: [B, 4d, h, w] -> [B, d_i, h, w]."""
        return self.act(self.proj(v))


class CrossModalAttention(nn.Module):
    """Cosine similarity between every visual position and every audio T-F position (paper eq. 1–2).

    The 4-D map [h, w, f_i, t_i] is flattened to R = h·w channels at the layer's own resolution (the "resize" of
    eq. 3), so channel r says how strongly image region r matches each audio concept. The first decoder layer compares
    f_A with the raw 4d visual features; later layers first align the visual channels with `ChannelAlign`.
    """

    def __init__(self, visual_channels: int, audio_channels: int, align: bool):
        super().__init__()
        if not align and visual_channels != audio_channels:
            raise ValueError(f"unaligned attention needs equal channels, got {visual_channels} and {audio_channels}")
        self.align = ChannelAlign(visual_channels, audio_channels) if align else nn.Identity()

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """visual: [B, 4d, h, w], audio: [B, d_i, f_i, t_i] -> [B, R, f_i, t_i], every value in [-1, 1]."""
        B, _, f, t = audio.shape
        v = F.normalize(self.align(visual).flatten(2), dim=1)  # [B, d_i, R]
        a = F.normalize(audio.flatten(2), dim=1)  # [B, d_i, f_i·t_i]
        return torch.einsum("bcr,bcn->brn", v, a).reshape(B, -1, f, t)  # [B, R, f_i, t_i]


class DecoderLayer(nn.Module):
    """One decoder level: [audio, encoder skip (all but the first layer), attention maps] -> UpBlock (paper §2.3)."""

    def __init__(self, audio_channels: int, skip_channels: int, attention_channels: int, c_out: int, outermost: bool):
        super().__init__()
        self.uses_skip = skip_channels > 0
        self.in_channels = audio_channels + skip_channels + attention_channels
        self.up = UpBlock(self.in_channels, c_out, outermost=outermost)

    def forward(self, audio: torch.Tensor, skip: torch.Tensor | None, attention: list[torch.Tensor]) -> torch.Tensor:
        """audio: [B, C_a, f_i, t_i], skip: [B, C_s, f_i, t_i] or None, attention: maps [B, R, f_i, t_i]
        -> [B, C_out, 2f_i, 2t_i]."""
        if self.uses_skip != (skip is not None):
            raise ValueError("skip given to a layer without one, or missing from a layer with one")
        parts = [audio] + ([skip] if skip is not None else []) + attention
        return self.up(torch.cat(parts, dim=1))  # [B, in_channels, f_i, t_i] -> [B, C_out, 2f_i, 2t_i]


class BinauralNet(nn.Module):
    """The full network: audio U-Net, optional image and depth ViTs, cross-modal attention at every decoder layer."""

    def __init__(self, cfg: BinauralModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = AudioEncoder(cfg.unet_channels)
        visual = cfg.n_taps * cfg.proj_channels  # 4d
        self.image_net = ViTFeatures(cfg, 3, cfg.image_weights) if cfg.uses_image else None
        depth_chans = 3 if cfg.depth_source == "rgb" else 1
        self.depth_net = ViTFeatures(cfg, depth_chans, cfg.depth_weights, "depth") if cfg.uses_depth else None
        self.visual_names = [n for n, net in (("image", self.image_net), ("depth", self.depth_net)) if net is not None]
        regions = sum(math.prod(getattr(self, f"{n}_net").grid) for n in self.visual_names)

        enc = cfg.unet_channels
        n = len(enc)
        self.decoder = nn.ModuleList()
        self.attention = nn.ModuleList()
        for i in range(n):
            audio_ch = enc[n - 1 - i]  # f_A for i = 0, else the previous decoder layer's output (= enc[n-1-i])
            skip_ch = enc[n - 1 - i] if i > 0 else 0  # paper: skips into every decoder layer except the first
            c_out = enc[n - 2 - i] if i < n - 1 else cfg.mask_channels  # last: 2 per complex mask
            self.decoder.append(DecoderLayer(audio_ch, skip_ch, regions, c_out, outermost=i == n - 1))
            self.attention.append(nn.ModuleDict(
                {m: CrossModalAttention(visual, audio_ch, align=i > 0) for m in self.visual_names}))
        self._init_weights()
        if cfg.mask_head in ("ears", "both"):
            # Ear masks start at 0.5 + 0i (tanh(0.5 · 2 atanh 0.5) = 0.5): Ỹl = Ỹr = A/2, the mono baseline where the
            # difference head starts (M ≈ 0), so every loss kind starts from the same ears.
            with torch.no_grad():
                self.decoder[-1].up.conv.bias[[-4, -2]] = 2 * math.atanh(0.5)

    def _init_weights(self) -> None:
        # 2.5D weights_init, N(0, 0.02) convs and N(1, 0.02) BN scales, for everything but the timm backbones,
        # which keep timm's ViT init (or the loaded weights).
        backbones = {id(p) for net in (self.image_net, self.depth_net) if net is not None
                     for p in net.pretrained_parameters()}
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and id(module.weight) not in backbones:
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def _check_inputs(self, mix_spec: torch.Tensor, image: torch.Tensor | None, depth: torch.Tensor | None) -> None:
        cfg = self.cfg
        stride = 2 ** len(cfg.unet_channels)
        if mix_spec.ndim != 4 or mix_spec.shape[1] != 2 or mix_spec.shape[2] != cfg.freq_bins or mix_spec.shape[3] % stride:
            raise ValueError(f"mix_spec must be [B, 2, {cfg.freq_bins}, T] with T a multiple of {stride}, "
                             f"got {tuple(mix_spec.shape)}")
        for name, x, needed, chans in (("image", image, cfg.needs_image, 3), ("depth", depth, cfg.needs_depth_map, 1)):
            if needed and x is None:
                raise ValueError(f"modalities={cfg.modalities!r}, depth_source={cfg.depth_source!r} needs {name}")
            if not needed and x is not None:
                # Silently ignoring an input would hide a mis-wired ablation (e.g. depth maps that never arrive).
                raise ValueError(f"{name} was given but modalities={cfg.modalities!r}, "
                                 f"depth_source={cfg.depth_source!r} does not use it; pass None")
            if x is not None and tuple(x.shape[1:]) != (chans, *cfg.image_size):
                raise ValueError(f"{name} must be [B, {chans}, {cfg.image_size[0]}, {cfg.image_size[1]}], "
                                 f"got {tuple(x.shape)}")

    def forward(self, mix_spec: torch.Tensor, image: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                return_attention: bool = False) -> dict[str, torch.Tensor | dict[str, list[torch.Tensor]]]:
        """mix_spec: [B, 2, F, T] spectrogram of the mix L + R; image: [B, 3, H, W] (ImageNet-normalised);
        depth: [B, 1, H, W] (depth_source=map only).

        Returns, by cfg.mask_head (heads.py turns any of them into ears):
        - diff and both: "diff_spec": Õ = M ⊙ A [B, 2, F-1, T], "mask": M [B, 2, F-1, T] in [-1, 1];
        - ears and both: "left_spec": Ỹl = M_l ⊙ A, "right_spec": Ỹr = M_r ⊙ A [B, 2, F-1, T], "ear_masks":
          [B, 2 (left, right), 2 (real, imag), F-1, T] in [-1, 1];
        and, with return_attention, "attention": {"image"/"depth": one [B, R, f_i, t_i] map per decoder layer}. The
        Nyquist bin is dropped as in 2.5D (the U-Net maps 257 bins to 128 and back to 256).
        """
        self._check_inputs(mix_spec, image, depth)
        feats = self.encoder(mix_spec)  # n × [B, C_k, f_k, t_k]
        visual = {}
        if self.image_net is not None:
            visual["image"] = self.image_net(image)  # [B, 4d, h, w]
        if self.depth_net is not None:
            visual["depth"] = self.depth_net(image if self.cfg.depth_source == "rgb" else depth)  # [B, 4d, h, w]

        maps: dict[str, list[torch.Tensor]] = {m: [] for m in self.visual_names}
        x = feats[-1]  # f_A: [B, 4d, f_1, t_1]
        n = len(feats)
        for i, (layer, attn) in enumerate(zip(self.decoder, self.attention)):
            att = [attn[m](visual[m], x) for m in self.visual_names]  # each [B, R, f_i, t_i]
            for m, a in zip(self.visual_names, att):
                maps[m].append(a)
            x = layer(x, feats[n - 1 - i] if i > 0 else None, att)  # [B, C_out, 2f_i, 2t_i]
        # tanh(x/2) is exactly 2.5D's 2·sigmoid(x) - 1: masks in [-1, 1]. Channels: the difference mask first (diff,
        # both), then left and right (ears, both).
        masks = torch.tanh(0.5 * x)  # [B, cfg.mask_channels, F-1, T]
        mix = mix_spec[:, :, :-1]  # A without the Nyquist bin: [B, 2, F-1, T]
        out: dict = {}
        if self.cfg.mask_head in ("diff", "both"):
            out["mask"] = masks[:, :2]
            out["diff_spec"] = complex_mul(out["mask"], mix)  # Õ
        if self.cfg.mask_head in ("ears", "both"):
            out["ear_masks"] = masks[:, -4:].unflatten(1, (2, 2))  # [B, 2 (left, right), 2, F-1, T]
            out["left_spec"] = complex_mul(out["ear_masks"][:, 0], mix)  # Ỹl
            out["right_spec"] = complex_mul(out["ear_masks"][:, 1], mix)  # Ỹr
        if return_attention:
            out["attention"] = maps
        return out


class BinauralModel(BinauralNet):
    """The BinauralNet the platform builds, trains, logs and loads: it also takes its inputs as one dict (what an
    MLflow signature and example input hold)."""

    def forward(self, mix_spec, image=None, depth=None, return_attention: bool = False):
        if isinstance(mix_spec, dict):
            return super().forward(**mix_spec)
        return super().forward(mix_spec, image, depth, return_attention)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
