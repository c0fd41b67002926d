"""Ray Train scaling and overhead for BAST: samples/s with 1 and 2 CPU workers (gloo DDP), and the per-epoch cost
of Ray Train against the same recipe in a plain PyTorch loop.

    python bench/train_scaling.py                       # bast_tiny, 2 epochs, generated KEMAR anechoic data
    python bench/train_scaling.py --sounds 96 --epochs 3 --preset bast_small

Figures only; nothing asserts a speed. On a GPU machine use bench/bast_step.py for the paper-size step rate,
bf16 vs fp32 and the model FLOP utilisation.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path



def plain_loop(config, epochs: int) -> dict:
    """The recipe driven by hand on one process: no Ray, no DDP, no checkpoints."""
    import torch

    from trainables.bast.recipe import BASTRecipe

    recipe = BASTRecipe(config)
    torch.manual_seed(0)
    model = recipe.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    dev = torch.device("cpu")
    seen, t0 = 0, time.perf_counter()
    epoch_s, train_s = [], 0.0
    for epoch in range(1, epochs + 1):
        e0 = time.perf_counter()
        model.train()
        for batch in recipe.batches("train", epoch, 0, 1):
            loss, n = recipe.loss(model, batch, dev)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += n
        train_s += time.perf_counter() - e0
        model.eval()
        with torch.no_grad():
            for batch in recipe.batches("val", epoch, 0, 1):
                recipe.validation_sums(model, batch, dev)
        epoch_s.append(time.perf_counter() - e0)
    return {"wall_s": time.perf_counter() - t0, "epoch_s": epoch_s, "samples": seen, "train_rate": seen / train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sounds", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--preset", default="bast_tiny")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="binsweep-bench-"))
    os.environ["BINSWEEP_HOME"] = str(home)
    import torch

    from sweep_platform.training import Resources, run_training
    from trainables.bast import BASTConfig
    from trainables.localization.builder import LocalizationBuildConfig, build

    root = home / "data" / "loc"
    build(LocalizationBuildConfig(generated_sounds=args.sounds, azimuths=tuple(range(0, 360, 30)),
                                  environments=("anechoic",), test_fraction=0.2, shard_rows=256, seed=0), root)
    config = BASTConfig.model_validate({"model": {"preset": args.preset}, "data": {"root": str(root)},
                                        "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": 1e-3}})
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; preset {args.preset}, {args.sounds} sounds, batch {args.batch}")

    torch.set_num_threads(1)  # what one Ray worker with 1 CPU gets (OMP_NUM_THREADS=1)
    plain = plain_loop(config, args.epochs)
    per_epoch_plain = plain["epoch_s"][-1]
    print(f"plain PyTorch, 1 thread : {plain['train_rate']:7.1f} samples/s (train steps), "
          f"{per_epoch_plain:6.2f} s/epoch (last epoch)")

    for workers in (1, 2):
        t0 = time.perf_counter()
        out = run_training("bast", config, name=f"bench-{workers}w-{int(t0)}", resources=Resources(workers=workers),
                           evaluate=False)
        wall = time.perf_counter() - t0
        last = out.history[-1]
        print(f"Ray Train, {workers} worker(s): {last['samples_per_s']:7.1f} samples/s (last epoch, train steps), "
              f"run wall {wall:6.1f} s for {args.epochs} epochs")
        if workers == 1:
            # fit() wall minus the epochs' own work: worker-group start, checkpoint upload, reporting
            fixed = out.wall_s - args.epochs * per_epoch_plain
            print(f"  Ray Train overhead vs plain loop: {fixed:6.1f} s per run "
                  f"({fixed / args.epochs:5.1f} s per epoch over {args.epochs} epochs); "
                  f"train-step rate Ray/plain {last['samples_per_s'] / plain['train_rate']:4.2f}")


if __name__ == "__main__":
    main()
