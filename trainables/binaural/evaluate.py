"""Evaluate a binauralizer on a split: the 2.5D / PseudoBinaural metrics on whole clips, next to the mono baseline.

Each clip of the split is binauralized whole, with demo.py's sliding windows (`inference.predict_clip`: 0.63 s
windows, hop 0.05 s by default). Each window's gain is set from the true stereo window, as demo.py does, and each
window sees the frame nearest its centre. The clip is then scored by `metrics.evaluate_clip` with
`normalization=True`: each array is divided by its own max |x|, the setting the 2.5D README, SepStereo and
PseudoBinaural evaluate with. The "Mono-Mono" baseline, (L + R) / 2 on both ears (= predicting a zero difference),
is scored on the same clips.

Metrics, the mean over clips, prefixed with the split:
- model: `{split}_stft_dist`, `{split}_env_dist`, `{split}_mag_dist`, `{split}_phase_dist`, `{split}_snr_db`,
  `{split}_wav_dist`, each with a `_stderr`;
- mono baseline: the same under `{split}_mono_*`.
Lower is better for every distance; higher is better for SNR.

Files, with `out_dir`:
- for the first `n_examples` clips:
  - `examples/<clip>_pred.wav` and `_true.wav` (2 channels, channel 0 = left);
  - `<clip>_diff_spec.png`: the true and predicted |STFT(L − R)| in dB (the predicted ears' difference, whatever
    the model's head: `inference.predict_clip` forms the ears by `recipe.ears_from_output`);
  - `<clip>_attention.png`: each decoder layer's cross-modal attention over the frame, averaged over its
    time-frequency positions, one row per visual modality;
- `per_clip.csv`;
- `metrics.json`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # workers and CI have no display; before pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainables.binaural import metrics  # noqa: E402
from trainables.binaural.data import Clip, iter_clips, load_manifest  # noqa: E402
from trainables.binaural.inference import model_config, predict_clip  # noqa: E402
from trainables.loop import unwrap  # noqa: E402

NAMES = {"stft": "stft_dist", "env": "env_dist", "mag": "mag_dist", "phase": "phase_dist", "snr": "snr_db",
         "wav": "wav_dist"}
DPI = 110


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_clip: list[dict]  # clip_id, environment, n_sources, model metrics, mono_* metrics
    split: str
    normalization: bool
    hop_seconds: float
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def stft_per_clip(self) -> np.ndarray:
        return np.array([c["stft"] for c in self.per_clip], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"split": self.split, "n_clips": len(self.per_clip), "normalization": self.normalization,
                "hop_seconds": self.hop_seconds, "metrics": self.metrics}

    def table(self) -> str:
        s = self.split
        lines = [f"{s} split: {len(self.per_clip)} whole clips, sliding windows (hop {self.hop_seconds:g} s), "
                 f"normalization={'on' if self.normalization else 'off'}",
                 f"{'metric':<12} {'model':>10} {'± stderr':>9} {'mono':>10} {'change':>8}"]
        for key, name in NAMES.items():
            m, e, b = (self.metrics[f"{s}_{name}"], self.metrics[f"{s}_{name}_stderr"],
                       self.metrics[f"{s}_mono_{name}"])
            change = (m - b) / abs(b) * 100 if b else float("nan")
            lines.append(f"{name:<12} {m:>10.4f} {e:>9.4f} {b:>10.4f} {change:>+7.1f}%")
        lines.append("lower is better except snr_db; mono = (L+R)/2 on both ears (a zero difference)")
        return "\n".join(lines)


def _summaries(per_clip: list[dict], split: str) -> dict[str, float]:
    out = {}
    for key, name in NAMES.items():
        for head, col in ((f"{split}_{name}", key), (f"{split}_mono_{name}", f"mono_{key}")):
            v = np.array([c[col] for c in per_clip], dtype=np.float64)
            out[head] = float(v.mean())
            out[f"{head}_stderr"] = float(v.std() / np.sqrt(len(v)))
    return out


def evaluate(model: torch.nn.Module, root, split: str = "test", *, out_dir=None, device="cpu",
             hop_seconds: float = 0.05, normalization: bool = True, n_examples: int = 3,
             limit: int | None = None, batch_size: int = 64) -> Evaluation:
    """Score `model` (already on `device`) on every clip of `split` (or the first `limit`); see the module docstring."""
    cfg = model_config(model)
    manifest = load_manifest(root)
    if manifest.sample_rate != cfg.sample_rate:
        raise ValueError(f"{manifest.root} is at {manifest.sample_rate} Hz; the model works at {cfg.sample_rate} Hz")
    if cfg.needs_depth_map and not manifest.has_depth:
        raise ValueError(f"{manifest.root} has no depth maps and the model reads them (depth_source=map)")
    out_dir = None if out_dir is None else Path(out_dir)
    was_training = model.training
    model.eval()
    per_clip, files = [], {}
    try:
        for k, clip in enumerate(iter_clips(root, split, limit)):
            gt = clip.wave.astype(np.float64)  # [2, S]
            pred = predict_clip(model, gt[0] + gt[1], clip.frames, clip.frame_times, clip.depth,
                                sample_rate=clip.sample_rate, hop_seconds=hop_seconds, rms_reference=gt,
                                device=device, batch_size=batch_size)
            if not np.isfinite(pred).all():
                raise ValueError(f"the model's prediction for {split} clip {clip.clip_id} is not finite")
            row = {"clip_id": clip.clip_id, "environment": clip.environment, "n_sources": len(clip.classes),
                   **metrics.evaluate_clip(pred, gt, normalization=normalization)}
            row.update({f"mono_{k2}": v for k2, v in
                        metrics.evaluate_clip(metrics.mono_baseline(gt), gt, normalization=normalization).items()})
            per_clip.append(row)
            if out_dir is not None and k < n_examples:
                files.update(_write_example(model, clip, pred, out_dir, device))
    finally:
        model.train(was_training)
    if not per_clip:
        raise ValueError(f"{manifest.root}: no {split} clips to evaluate")
    result = Evaluation(_summaries(per_clip, split), per_clip, split, normalization, hop_seconds)
    if out_dir is not None:
        files["per_clip"] = _write_csv(per_clip, out_dir / "per_clip.csv")
        path = out_dir / "metrics.json"
        path.write_text(json.dumps({**result.to_dict(), "dataset_fingerprint": manifest.fingerprint}, indent=2))
        files["metrics"] = path
        result.files = files
    return result


def _write_csv(per_clip: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_clip[0]))
        writer.writeheader()
        for row in per_clip:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _write_example(model, clip: Clip, pred: np.ndarray, out_dir: Path, device) -> dict[str, Path]:
    import soundfile as sf

    name = _safe(clip.clip_id)
    ex = out_dir / "examples"
    ex.mkdir(parents=True, exist_ok=True)
    files = {}
    scale = max(1.0, float(np.abs(pred).max()), float(np.abs(clip.wave).max())) / 0.99
    for tag, wave in (("pred", pred), ("true", clip.wave)):
        path = ex / f"{name}_{tag}.wav"
        sf.write(str(path), (np.asarray(wave) / scale).T.astype(np.float32), clip.sample_rate, subtype="PCM_16")
        files[f"{name}_{tag}_wav"] = path
    files[f"{name}_diff_spec"] = plot_diff_spec(clip.wave, pred, model_config(model), ex / f"{name}_diff_spec.png",
                                                title=clip.clip_id)
    att = plot_attention(model, clip, ex / f"{name}_attention.png", device)
    if att is not None:
        files[f"{name}_attention"] = att
    return files


def plot_diff_spec(true: np.ndarray, pred: np.ndarray, cfg, path: Path, title: str = "") -> Path:
    """True vs predicted |STFT(L − R)| in dB (whole clip)."""
    args = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length)
    specs = [np.abs(metrics.stft(np.asarray(w[0], np.float64) - np.asarray(w[1], np.float64), **args))
             for w in (true, pred)]
    db = [20 * np.log10(s + 1e-6) for s in specs]
    vmax = max(d.max() for d in db)
    sr = cfg.sample_rate
    extent = [0, specs[0].shape[1] * cfg.hop_length / sr, 0, sr / 2000]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True, layout="constrained")
    try:
        for ax, d, label in zip(axes, db, ("true L − R", "predicted L − R")):
            im = ax.imshow(d, origin="lower", aspect="auto", extent=extent, vmin=vmax - 80, vmax=vmax, cmap="magma")
            ax.set_title(label)
            ax.set_xlabel("time (s)")
        axes[0].set_ylabel("frequency (kHz)")
        fig.colorbar(im, ax=axes, label="dB")
        fig.suptitle(title)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


@torch.no_grad()
def attention_maps(model, clip: Clip, device="cpu") -> dict[str, list[np.ndarray]] | None:
    """Per visual modality, each decoder layer's attention over the ViT grid, averaged over the layer's
    time-frequency positions: [h, w] maps for the clip's first window. None for an audio-only model."""
    from trainables.binaural.recipe import model_inputs

    net = unwrap(model)
    cfg = model_config(model)
    if not getattr(net, "visual_names", None):
        return None
    L = cfg.clip_samples
    wave = np.zeros((2, L), np.float32)
    n = min(L, clip.wave.shape[-1])
    wave[:, :n] = clip.wave[:, :n]
    frame = clip.frames[clip.frame_at(L / 2 / clip.sample_rate)]
    batch = {"wave": torch.from_numpy(wave)[None], "image": torch.from_numpy(np.ascontiguousarray(frame))[None]}
    if cfg.needs_depth_map:
        if clip.depth is None:
            raise ValueError(f"clip {clip.clip_id} has no depth map and the model reads one")
        batch["depth"] = torch.from_numpy(clip.depth)[None]
    x = model_inputs(cfg, batch, torch.device(device))
    out = net(x["mix_spec"], x["image"], x["depth"], return_attention=True)
    maps = {}
    for m, layers in out["attention"].items():
        h, w = getattr(net, f"{m}_net").grid
        maps[m] = [a[0].float().mean(dim=(1, 2)).reshape(h, w).cpu().numpy() for a in layers]
    return maps


def plot_attention(model, clip: Clip, path: Path, device="cpu") -> Path | None:
    """The frame, then every decoder layer's attention map (cosine similarity, mean over T-F) over it."""
    maps = attention_maps(model, clip, device)
    if maps is None:
        return None
    frame = clip.frames[clip.frame_at(model_config(model).clip_samples / 2 / clip.sample_rate)].transpose(1, 2, 0)
    H, W = frame.shape[:2]
    rows, cols = len(maps), 1 + max(len(v) for v in maps.values())
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.3 * rows + 0.5), squeeze=False,
                             layout="constrained")
    try:
        for r, (modality, layers) in enumerate(maps.items()):
            axes[r, 0].imshow(frame)
            axes[r, 0].set_title("frame" if r == 0 else "")
            axes[r, 0].set_ylabel(modality)
            for i, a in enumerate(layers):
                ax = axes[r, i + 1]
                ax.imshow(frame.mean(axis=2), cmap="gray", extent=[0, W, H, 0])
                lim = max(1e-6, float(np.abs(a).max()))
                ax.imshow(a, cmap="coolwarm", alpha=0.6, vmin=-lim, vmax=lim, extent=[0, W, H, 0],
                          interpolation="nearest")
                if r == 0:
                    ax.set_title(f"decoder layer {i + 1}")
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"cross-modal attention (mean over T-F): {clip.clip_id}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path
