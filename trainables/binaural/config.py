"""Typed, validated configuration of the depth-infused binauralization trainable: model, loss, training, data.

Architecture defaults are the paper's (Parida et al. 2021, arXiv 2108.04906, §2) on top of the 2.5D Visual Sound
audio pipeline it says it follows (Gao & Grauman 2019; `binauralization.md` §2): 16 kHz, 0.63 s crops, STFT n_fft 512 /
hop 160 / win 400 (2×257×64 input), U-Net 2→64→128→256→512→512, d = 128 so that 4d equals the 512 audio channels.
One exception: the ViT backbone defaults to `vit_tiny_patch16_224` so that a bare `BinauralModelConfig()` builds on a
CPU; the `binaural_paper` preset pins ViT-Large (DPT's `vit_large_patch16_384`, 24 blocks, taps 6/12/18/24).
Validation happens once, here; modules receive these objects and trust them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables.presets import expand_model_preset

Modalities = Literal["audio", "audio+image", "audio+depth", "audio+image+depth"]
LossKind = Literal["diff", "2ch", "both"]
MaskHead = Literal["diff", "ears", "both"]
# The masks each loss trains (losses.py): the difference mask, the left and right ear masks, or all three.
HEAD_FOR_LOSS: dict[str, str] = {"diff": "diff", "2ch": "ears", "both": "both"}
_MASK_CHANNELS = {"diff": 2, "ears": 4, "both": 6}  # (real, imag) per complex mask


class _Strict(BaseModel):
    # A misspelt key must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BinauralModelConfig(_Strict):
    """Architecture of the binauralizer (paper §2, Fig. 1)."""

    # Audio front end (2.5D `audioVisual_dataset.py`, `binauralization.md` §2).
    sample_rate: int = Field(16000, gt=0, description="Hz; FAIR-Play is used at 16 kHz")
    clip_seconds: float = Field(0.63, gt=0.0, description="training crop length; 0.63 s = 10,080 samples")
    n_fft: int = Field(512, gt=0)
    hop_length: int = Field(160, gt=0)
    win_length: int = Field(400, gt=0, description="Hann window, zero-padded to n_fft (librosa/torch.stft)")

    # Audio U-Net (2.5D AudioNet, ngf 64): one entry per strided conv; the decoder mirrors it.
    unet_channels: tuple[int, ...] = Field(
        (64, 128, 256, 512, 512), min_length=1, description="encoder output channels, first to last (bottleneck)"
    )
    # Output head (heads.py): which complex masks the last decoder layer predicts. It is what loss.kind trains, so a
    # BinauralConfig sets it from loss.kind and a saved config carries it: a checkpoint rebuilds the same head.
    masks: MaskHead | None = Field(
        None, description="diff: one difference mask (2.5D); ears: a left and a right mask (APNet's '2 Ch.'); both: "
        "all three. null = follow loss.kind (diff -> diff, 2ch -> ears, both -> both); a bare model config: diff"
    )

    # Visual side (paper §2.1).
    modalities: Modalities = Field("audio+image+depth", description="which inputs the decoder attends to (Table 1)")
    backbone: str = Field(
        "vit_tiny_patch16_224",
        description="timm ViT name for the image and the depth network (both the same architecture, §3); "
        "paper: ViT-Large, i.e. vit_large_patch16_384 as in DPT",
    )
    image_size: tuple[int, int] = Field(
        (224, 448), description="(H, W) fed to the ViTs; multiples of the patch size. 2.5D crops frames to 224×448"
    )
    tap_blocks: tuple[int, ...] | None = Field(
        None, description="0-based ViT blocks whose outputs are tapped; null = evenly spaced "
        "(ViT-L: 5, 11, 17, 23 = the paper's layers 6/12/18/24; ViT-B/S/Ti: 2, 5, 8, 11)"
    )
    proj_channels: int = Field(128, gt=0, description="d: channels of each tap after its 1×1 conv (4d = 512)")
    readout: Literal["ignore", "project"] = Field(
        "ignore", description="CLS token handling per tap: drop it (what the paper text describes) or DPT's "
        "'project' (concat CLS to every token, Linear 2D→D + GELU)"
    )
    depth_source: Literal["rgb", "map"] = Field(
        "rgb", description="rgb: the depth ViT reads the RGB frame, as in the paper (DPT-style, MIX6 weights); "
        "map: it reads a precomputed 1-channel depth map [B, 1, H, W]"
    )
    # Pretrained weights from local files, never downloaded; the format is detected (weights.py). Unset: random init,
    # which `binsweep train` and the run's binsweep.init.* tags say.
    image_weights: str | None = Field(
        None, description="local ImageNet weights for the image ViT (paper: ImageNet): timm state_dict .pth/.bin, "
        ".safetensors or Google's .npz; null = random init"
    )
    depth_weights: str | None = Field(
        None, description="local weights for the depth ViT (paper: DPT's MIX6 weights): a DPT / MiDaS v3 ViT "
        "checkpoint (dpt_large*.pt), or any format image_weights takes; null = random init"
    )
    depth_rgb_norm: Literal["auto", "dpt", "imagenet"] = Field(
        "auto", description="what the depth ViT sees when it reads the RGB frame: dpt = mean 0.5, std 0.5 (what DPT "
        "and MiDaS were trained on), imagenet = the image branch's normalisation. auto = dpt with depth_weights, "
        "imagenet without (random init does not care, and models saved before this field keep their input); a "
        "BinauralConfig pins the resolved value, so a trained model rebuilds without its weights file"
    )

    @model_validator(mode="after")
    def _check(self) -> BinauralModelConfig:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} is longer than n_fft {self.n_fft}")
        if self.clip_samples <= self.n_fft // 2:
            raise ValueError(f"clip_seconds {self.clip_seconds} is too short for reflect padding by n_fft/2")
        stride = 2 ** len(self.unet_channels)
        # Every strided conv halves (F - 1) and T exactly, so skips line up and the mask has F - 1 bins (2.5D drops
        # the Nyquist bin the same way).
        if (self.freq_bins - 1) % stride or self.frames % stride:
            raise ValueError(
                f"the {len(self.unet_channels)}-level U-Net needs (F - 1) and T divisible by {stride}; got F = "
                f"{self.freq_bins}, T = {self.frames} (from n_fft, hop_length, clip_seconds)"
            )
        if self.tap_blocks is not None:
            taps = self.tap_blocks
            if not taps or any(b < 0 for b in taps) or len(set(taps)) != len(taps):
                raise ValueError(f"tap_blocks must be distinct non-negative block indices, got {self.tap_blocks}")
            if list(self.tap_blocks) != sorted(self.tap_blocks):
                raise ValueError(f"tap_blocks must be increasing (shallow to deep), got {self.tap_blocks}")
        if self.n_taps * self.proj_channels != self.unet_channels[-1]:
            # Paper §2.3: "dI = dD = dA = 4d", which is what lets the first decoder layer skip the alignment network.
            raise ValueError(
                f"{self.n_taps} taps × proj_channels {self.proj_channels} = {self.n_taps * self.proj_channels} must equal "
                f"the audio bottleneck channels unet_channels[-1] = {self.unet_channels[-1]} (paper: 4 × 128 = 512)"
            )
        if self.image_weights is not None and not self.uses_image:
            raise ValueError(f"image_weights is set but modalities={self.modalities!r} builds no image network")
        if self.depth_weights is not None and not self.uses_depth:
            raise ValueError(f"depth_weights is set but modalities={self.modalities!r} builds no depth network")
        if self.depth_rgb_norm == "dpt" and not (self.uses_depth and self.depth_source == "rgb"):
            raise ValueError(f"depth_rgb_norm=dpt applies to a depth network reading RGB, and modalities="
                             f"{self.modalities!r}, depth_source={self.depth_source!r} has none; allowed: auto, imagenet")
        return self

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def freq_bins(self) -> int:
        """F = n_fft / 2 + 1 (257)."""
        return self.n_fft // 2 + 1

    @property
    def frames(self) -> int:
        """T = 1 + S // hop with center=True (64 for 0.63 s)."""
        return 1 + self.clip_samples // self.hop_length

    @property
    def n_taps(self) -> int:
        return 4 if self.tap_blocks is None else len(self.tap_blocks)

    @property
    def uses_image(self) -> bool:
        return "image" in self.modalities

    @property
    def uses_depth(self) -> bool:
        return "depth" in self.modalities

    @property
    def needs_image(self) -> bool:
        """Whether forward needs the RGB frame (the image net, or the depth net reading RGB)."""
        return self.uses_image or (self.uses_depth and self.depth_source == "rgb")

    @property
    def needs_depth_map(self) -> bool:
        return self.uses_depth and self.depth_source == "map"

    @property
    def depth_norm(self) -> Literal["dpt", "imagenet"]:
        """depth_rgb_norm resolved: auto is dpt when a depth network reading RGB gets depth_weights."""
        if self.depth_rgb_norm != "auto":
            return self.depth_rgb_norm
        return "dpt" if self.uses_depth and self.depth_source == "rgb" and self.depth_weights else "imagenet"

    @property
    def mask_head(self) -> str:
        """The head BinauralNet builds: `masks`, or the difference mask when nothing set it."""
        return self.masks or "diff"

    @property
    def mask_channels(self) -> int:
        """Output channels of the last decoder layer: 2 (real, imag) per complex mask."""
        return _MASK_CHANNELS[self.mask_head]


class LossConfig(_Strict):
    """Training loss on spectrograms (paper §2.4, Table 2).

    diff: MSE on the difference spectrogram predicted by the difference mask (2.5D, "Ours (Diff.)"); 2ch: MSE on
    left plus MSE on right, predicted by two ear masks (APNet's "2 Ch."); both: their sum, with all three masks.
    The kind picks the model's head (`model.masks`, see HEAD_FOR_LOSS and losses.py).
    """

    kind: LossKind = "diff"


class TrainConfig(_Strict):
    """Optimisation settings. The paper gives none; defaults follow 2.5D (`binauralization.md` §2) where they fit.

    2.5D: Adam, weight decay 5e-4, batch 256, 1000 epochs, lr 1e-3 for the audio net and 1e-4 for the visual net,
    ×0.94 every 10 epochs. One lr is kept here (1e-4, the safe rate for the ViTs) and the schedule choices are the
    shared loop's (constant or cosine), so the step decay is not reproduced.
    """

    epochs: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=1, description="global batch: split evenly over the Train workers")
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["constant", "cosine"] = Field("constant", description="learning-rate schedule after warmup")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warmup from 0, in epochs (fractions allowed)")
    grad_clip: float | None = Field(None, gt=0.0, description="clip the global gradient norm; null = no clipping (2.5D)")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = 0


class DataConfig(_Strict):
    """Where the binaural clips (with frames and, for depth_source=map, depth maps) live.

    A FAIR-Play import (`binsweep data fairplay`) holds all its splits; `split: N` reads split N, the view
    `<root>/splitN` the import wrote. Every reader of the data (training, evaluation, serving checks) is given
    data.root alone, so the view's folder is folded into root when the config is validated: {root: data/fairplay,
    split: 3} becomes root data/fairplay/split3, and validating that again changes nothing.
    """

    root: str = Field("data/binaural", description="dataset folder; relative to BINSWEEP_HOME")
    split: int | None = Field(None, ge=1, le=10, description="FAIR-Play split 1..10 (1..5 for new_splits) of a "
                              "`binsweep data fairplay` import at root; null for other datasets")

    @model_validator(mode="before")
    @classmethod
    def _fold_split(cls, data):
        n = data.get("split") if isinstance(data, dict) else None
        if isinstance(n, str) and n.strip().isdigit():  # a command-line override
            n = int(n)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return data  # nothing to fold; the field's own validation reports a bad value
        root = str(data.get("root", cls.model_fields["root"].default)).rstrip("/")
        last = root.rsplit("/", 1)[-1]
        if last == f"split{n}":
            return data
        if last.startswith("split") and last[5:].isdigit():
            raise ValueError(f"data.root {root!r} is already the view of split {last[5:]}, but data.split is {n}; "
                             "give the import folder as data.root")
        return {**data, "root": f"{root}/split{n}"}


class BinauralConfig(_Strict):
    """Everything that defines one binauralization training run."""

    model: BinauralModelConfig = BinauralModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data):
        """`model: {preset: binaural_tiny, modalities: audio}` = the preset with those fields overridden."""
        return expand_model_preset(data, PRESETS)

    @model_validator(mode="after")
    def _pin_depth_norm(self) -> BinauralConfig:
        """model.depth_rgb_norm auto -> its resolved value, so that the saved config keeps the input a trained model
        saw after its weights paths are dropped (inference.trained_config)."""
        if self.model.depth_rgb_norm == "auto":
            object.__setattr__(self, "model", self.model.model_copy(update={"depth_rgb_norm": self.model.depth_norm}))
        return self

    @model_validator(mode="after")
    def _masks_follow_loss(self) -> BinauralConfig:
        """model.masks = the head loss.kind trains; unset, it is filled in, so the saved config names the head."""
        want = HEAD_FOR_LOSS[self.loss.kind]
        if self.model.masks is None:
            # frozen: the validator is the one place the resolved model config is put in
            object.__setattr__(self, "model", self.model.model_copy(update={"masks": want}))
        elif self.model.masks != want:
            raise ValueError(f"model.masks={self.model.masks!r} does not fit loss.kind={self.loss.kind!r}, which "
                             f"trains the {want!r} head; allowed: model.masks {want!r} or unset (it follows loss.kind)")
        return self


def _preset(**model) -> BinauralModelConfig:
    return BinauralModelConfig(**model)


# Named presets only pin numbers; everything else stays at the defaults above.
PRESETS: dict[str, BinauralModelConfig] = {
    "binaural_paper": _preset(backbone="vit_large_patch16_384"),
    # Same topology at 1/4 to 1/8 of the width and a 4×8 ViT grid: builds and runs in well under a second on a CPU.
    "binaural_tiny": _preset(unet_channels=(16, 32, 64, 64, 64), proj_channels=16, image_size=(64, 128)),
}


def preset(name: str, **overrides) -> BinauralModelConfig:
    """A named preset with field overrides, validated again as a whole."""
    if name not in PRESETS:
        raise KeyError(f"unknown binaural preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return BinauralModelConfig(**{**PRESETS[name].model_dump(), **overrides})
