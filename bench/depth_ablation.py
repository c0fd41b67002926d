"""Does depth help? The modality ablation of the depth-infused binauralizer on generated scenes (issue 16).

One generated dataset (anechoic chambers and reverberant rooms, 1-3 sources; picture, depth map and sound from one
room geometry, trainables.binaural.scenes) is built once; then the binaural_tiny model (timm's test_vit backbone,
0.31 s windows) is trained with the same data, epochs and steps in four variants,

    audio | audio+image | audio+depth | audio+image+depth     (depth_source: map = the ground-truth depth map,
                                                               because a random-init ViT on RGB cannot estimate depth)

each over several seeds (model init and batch order), with the shared loop's recipe and the default loss (diff). Every
model is scored on the held-out test scenes with evaluate.py (whole clips, sliding windows; STFT and ENV distance,
with evaluate.py's max normalisation, the paper protocol) next to the mono baseline ((L+R)/2 on both ears). The table
gives mean ± std over seeds, and per environment. The target (issue 16): + depth beats audio only and + image + depth
is best, each by more than the seed spread (the larger std of the two variants compared).

    OMP_NUM_THREADS=1 .venv/bin/python bench/depth_ablation.py --out /tmp/depth_ablation --scenes 320 --epochs 8 \
        --seeds 0 1 2 3 4     # about 26 min on the shared 2-core VM (bench/README.md)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from trainables.binaural.config import BinauralConfig
from trainables.binaural.data import BinauralBuildConfig, build
from trainables.binaural.evaluate import evaluate
from trainables.binaural.recipe import BinauralRecipe
from trainables.binaural.scenes import SceneConfig
from trainables.loop import epoch_seed

VARIANTS = ("audio", "audio+image", "audio+depth", "audio+image+depth")


def model_config(root: Path, modalities: str, seed: int, epochs: int, batch: int, lr: float) -> BinauralConfig:
    model = {"preset": "binaural_tiny", "backbone": "test_vit", "modalities": modalities, "clip_seconds": 0.31}
    if "depth" in modalities:
        model["depth_source"] = "map"
    return BinauralConfig.model_validate({
        "model": model,
        "train": {"epochs": epochs, "batch_size": batch, "lr": lr, "weight_decay": 0.0, "precision": "fp32",
                  "seed": seed},
        "loss": {"kind": "diff"},
        "data": {"root": str(root)},
    })


def train(config: BinauralConfig) -> torch.nn.Module:
    """What trainables/loop.py does per worker, without Ray: Adam over the recipe's batches and loss."""
    recipe = BinauralRecipe(config)
    torch.manual_seed(config.train.seed)
    model = recipe.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    device = torch.device("cpu")
    model.train()
    for epoch in range(1, config.train.epochs + 1):
        torch.manual_seed(epoch_seed(config.train.seed, epoch, 0))
        for batch in recipe.batches("train", epoch, 0, 1):
            loss, _ = recipe.loss(model, batch, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def score(model: torch.nn.Module, root: Path) -> dict[str, float]:
    ev = evaluate(model, root, "test", hop_seconds=0.1)
    out = {k: ev.metrics[f"test_{k}"] for k in ("stft_dist", "env_dist", "mono_stft_dist", "mono_env_dist")}
    for env in sorted({r["environment"] for r in ev.per_clip}):
        rows = [r for r in ev.per_clip if r["environment"] == env]
        out[f"{env}_stft_dist"] = float(np.mean([r["stft"] for r in rows]))
        out[f"{env}_mono_stft_dist"] = float(np.mean([r["mono_stft"] for r in rows]))
    return out


def table(results: dict[str, list[dict]]) -> tuple[str, dict[str, tuple[float, float]]]:
    first = next(iter(results.values()))[0]
    envs = sorted(k[:-len("_stft_dist")] for k in first if k.endswith("_stft_dist")
                  and not k.startswith(("mono", "stft")) and "_mono_" not in k)
    head = "| variant | STFT dist | ENV dist | " + " | ".join(f"STFT {e}" for e in envs) + " |"
    lines = [head, "|" + "---|" * (3 + len(envs))]
    stft = {}
    for v, runs in results.items():
        def ms(key):
            x = np.array([r[key] for r in runs])
            return x.mean(), x.std(ddof=1) if len(x) > 1 else 0.0
        stft[v] = ms("stft_dist")
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in (ms("stft_dist"), ms("env_dist"))]
        cells += [f"{ms(f'{e}_stft_dist')[0]:.4f} ± {ms(f'{e}_stft_dist')[1]:.4f}" for e in envs]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    r0 = first
    lines.append("| mono baseline | " + " | ".join(
        [f"{r0['mono_stft_dist']:.4f}", f"{r0['mono_env_dist']:.4f}"] + [f"{r0[f'{e}_mono_stft_dist']:.4f}"
                                                                          for e in envs]) + " |")
    return "\n".join(lines), stft


def verdict(stft: dict[str, tuple[float, float]]) -> str:
    def beats(a, b):  # a lower than b by more than the larger seed std of the two
        return stft[b][0] - stft[a][0] > max(stft[a][1], stft[b][1])

    depth = beats("audio+depth", "audio")
    best = all(beats("audio+image+depth", v) for v in VARIANTS if v != "audio+image+depth")
    return (f"+depth beats audio only by more than the seed spread: {'yes' if depth else 'no'} "
            f"({stft['audio'][0] - stft['audio+depth'][0]:+.4f}); +image+depth best by more than the spread: "
            f"{'yes' if best else 'no'} (vs audio+image {stft['audio+image'][0] - stft['audio+image+depth'][0]:+.4f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset and results.json go here")
    p.add_argument("--scenes", type=int, default=320)
    p.add_argument("--max-sources", type=int, default=3)
    p.add_argument("--reverberant-fraction", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    root = a.out / "scenes"
    t0 = time.perf_counter()
    build(BinauralBuildConfig(scenes=a.scenes, clip_seconds=0.63, test_clip_seconds=1.0, seed=0,
                              environments=("anechoic", "reverberant"), reverberant_fraction=a.reverberant_fraction,
                              scene=SceneConfig(max_sources=a.max_sources)), root)
    print(f"dataset: {a.scenes} scenes in {time.perf_counter() - t0:.1f} s", flush=True)
    results: dict[str, list[dict]] = {}
    path = a.out / "results.json"
    if path.exists():
        results = json.loads(path.read_text())["results"]  # resume: finished runs are kept
    for seed in a.seeds:  # seeds outermost: a cut-short run still has every variant
        for v in a.variants:
            if any(r["seed"] == seed for r in results.get(v, [])):
                continue
            t1 = time.perf_counter()
            model = train(model_config(root, v, seed, a.epochs, a.batch, a.lr))
            r = {"seed": seed, **score(model, root), "seconds": time.perf_counter() - t1}
            results.setdefault(v, []).append(r)
            print(f"{v:>18} seed {seed}: test STFT {r['stft_dist']:.4f} ENV {r['env_dist']:.4f} "
                  f"(mono {r['mono_stft_dist']:.4f}) in {r['seconds']:.0f} s", flush=True)
            path.write_text(json.dumps({"args": {k: str(x) for k, x in vars(a).items()}, "results": results},
                                       indent=2))
    text, stft = table({v: results[v] for v in a.variants})
    print(text)
    if set(a.variants) == set(VARIANTS):
        print(verdict(stft))
        for better, base in (("audio+depth", "audio"), ("audio+image+depth", "audio+image")):
            for key in ("stft_dist", "reverberant_stft_dist", "anechoic_stft_dist"):
                by_seed = {r["seed"]: r.get(key) for r in results[base]}
                gains = [by_seed[r["seed"]] - r[key] for r in results[better]
                         if r.get(key) is not None and by_seed.get(r["seed"]) is not None]
                print(f"paired by seed, {better} below {base} on {key}: "
                      + ", ".join(f"{g:+.3f}" for g in gains) + f" (better in {sum(g > 0 for g in gains)} of "
                      f"{len(gains)})")


if __name__ == "__main__":
    main()
