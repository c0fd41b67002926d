"""Which sounds can the demo's small BAST localize? Test AD per family of the generated corpus (issue 12).

The demo model (search_spaces/bast_demo.yaml's base: D=48, one layer per encoder, NSP) is trained once with the
shared loop in this process (trainables.localization.inprocess) on a generated anechoic corpus, then scored on the
test sounds, overall and per family (noise, harmonic, chirp, clicks, vowel, am_mix):

    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_corpus.py --kinds all --out /tmp/demo_corpus
    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_corpus.py --kinds noise,chirp,am_mix --out /tmp/demo_corpus
    ... --patch-stride 6      # the paper's stride (180 tokens per ear instead of 60)

BAST reads magnitude spectrograms, so it has level differences and the pinna's spectral shape but no ITD; a family
with energy only at low frequencies (vowels) or at sparse frequencies or instants (harmonic complexes, click trains)
shows the pinna less. Prints one table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="all", help="comma-separated families, or all")
    ap.add_argument("--sounds", type=int, default=240)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--patch-stride", type=int, default=10)
    ap.add_argument("--integration", default="concat")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=2.5e-3)
    ap.add_argument("--out", default="/tmp/demo_corpus")
    args = ap.parse_args()

    from trainables import sounds
    from trainables.bast.evaluate import predict
    from trainables.localization import inprocess
    from trainables.localization.builder import LocalizationBuildConfig, build

    kinds = sounds.KINDS if args.kinds == "all" else sounds.check_kinds(k.strip() for k in args.kinds.split(","))
    root = Path(args.out) / f"{'-'.join(kinds)}-{args.sounds}"
    build(LocalizationBuildConfig(generated_sounds=args.sounds, generated_kinds=kinds,
                                  azimuths=tuple(range(0, 360, 30)), environments=("anechoic",)), root)
    demo = yaml.safe_load((REPO / "search_spaces" / "bast_demo.yaml").read_text())["base"]
    config = {"loss": {**demo["loss"], "alpha": args.alpha},
              "model": {**demo["model"], "patch_stride": args.patch_stride, "integration": args.integration},
              "train": {**demo["train"], "epochs": args.epochs, "lr": args.lr, "seed": 0},
              "data": {"root": str(root)}}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; {args.sounds} sounds of {', '.join(kinds)}; patch stride {args.patch_stride}, "
          f"{args.integration}, alpha {args.alpha}, lr {args.lr}, {args.epochs} epochs")
    t0 = time.perf_counter()
    model, _ = inprocess.train("bast", config)
    train_s = time.perf_counter() - t0

    preds = predict(model, root, "test")
    ids = _sound_ids(root)
    if len(ids) != len(preds):
        raise SystemExit(f"{root}: {len(ids)} test sound ids for {len(preds)} predictions")
    family = np.array([kinds[int(s.split("-")[1]) % len(kinds)] for s in ids])
    err = preds.error_deg
    print(f"training {train_s:.0f} s; test AD {err.mean():.2f} deg (median {np.median(err):.2f}, "
          f"errors > 90 deg: {(err > 90).mean():.3f}, n = {len(err)})")
    print("| family | test rows | AD (deg) | median (deg) | errors > 90 deg |")
    print("|---|---|---|---|---|")
    for k in kinds:
        m = family == k
        print(f"| {k} | {m.sum()} | {err[m].mean():.1f} | {np.median(err[m]):.1f} | {(err[m] > 90).mean():.3f} |")


def _sound_ids(root: Path) -> list[str]:
    """The test split's sound ids in the order the (unshuffled) reader gives its rows."""
    import pyarrow.parquet as pq

    from trainables.localization import shards

    return [s for f in shards.load_manifest(root).shards("test")
            for s in pq.read_table(f, columns=["sound_id"]).column("sound_id").to_pylist()]


if __name__ == "__main__":
    main()
