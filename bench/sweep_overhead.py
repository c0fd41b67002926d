"""What a sweep costs on top of the training it runs: the same N small BAST trainings through `binsweep sweep`
(Ray Tune + Optuna + each single-worker trial in its own, reused, Tune actor + MLflow parent/child runs + test
evaluation and model logging in each trial) and in a plain sequential PyTorch loop in this process.

    python bench/sweep_overhead.py                     # 4 trials x 2 epochs, bast_tiny, one trial at a time
    python bench/sweep_overhead.py --trials 6 --concurrency 2

The trials differ only in their seed (a grid over train.seed), so both sides do the same work. Prints the wall
times, their ratio, and the per-trial start-up seconds (trial start to the first epoch's start: Tune actor start or
reuse, imports, model and data set-up; the `startup_s` metric of each MLflow child run), the
per-trial evaluation (`eval_s`) and what the sweep spends outside its trials. Figures only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from train_scaling import plain_loop  # bench/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sounds", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="bast_tiny")
    ap.add_argument("--concurrency", type=int, default=1, help="trials at once in the sweep (1: same as the loop)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="binsweep-bench-sweep-"))
    os.environ["BINSWEEP_HOME"] = str(home)
    import torch
    import yaml

    from sweep_platform import tracking
    from sweep_platform.sweep import start_sweep
    from trainables.bast import BASTConfig
    from trainables.localization.builder import LocalizationBuildConfig, build

    root = home / "data" / "loc"
    build(LocalizationBuildConfig(generated_sounds=args.sounds, azimuths=tuple(range(0, 360, 30)),
                                  environments=("anechoic",), test_fraction=0.2, shard_rows=256, seed=0), root)
    base = {"model": {"preset": args.preset}, "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": 1e-3}}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; preset {args.preset}, "
          f"{args.sounds} sounds, {args.trials} trials x {args.epochs} epochs, sweep concurrency {args.concurrency}")

    # the plain loop: one thread, as a Ray worker with 1 CPU gets
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for seed in range(args.trials):
        cfg = BASTConfig.model_validate({**base, "data": {"root": str(root)},
                                         "train": {**base["train"], "seed": seed}})
        plain_loop(cfg, args.epochs)
    plain_s = time.perf_counter() - t0

    sweep_file = home / "overhead.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "overhead", "trainable": "bast", "dataset": str(root), "metric": "val_ad_deg",
        "scheduler": {"type": "none"}, "sampler": {"type": "grid"}, "concurrency": args.concurrency,
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "base": base,
        "space": {"train.seed": {"choice": list(range(args.trials))}}}, sort_keys=False))
    t0 = time.perf_counter()
    outcome = start_sweep(sweep_file, "overhead", progress=False)
    sweep_s = time.perf_counter() - t0

    c = tracking.client()
    exp_id = c.get_run(outcome.parent_run_id).info.experiment_id
    runs = c.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    startup = [r.data.metrics["startup_s"] for r in runs if "startup_s" in r.data.metrics]
    walls = [r.data.metrics["wall_s"] for r in runs if "wall_s" in r.data.metrics]
    evals = [r.data.metrics["eval_s"] for r in runs if "eval_s" in r.data.metrics]
    print(f"plain sequential loop : {plain_s:7.1f} s  ({plain_s / args.trials:5.1f} s per training)")
    print(f"binsweep sweep        : {sweep_s:7.1f} s  ({outcome.succeeded}/{args.trials} trials succeeded; "
          f"includes test evaluation + model logging per trial)")
    print(f"ratio sweep / plain   : {sweep_s / plain_s:7.2f}")
    if walls:
        print(f"per-trial wall in the sweep: mean {statistics.mean(walls):5.1f} s (plain "
              f"{plain_s / args.trials:5.1f} s)")
        if args.concurrency == 1:
            print(f"outside the trials    : {sweep_s - sum(walls):5.1f} s (Ray start, MLflow store and parent run, "
                  "Tune set-up and teardown, leaderboard)")
    if evals:
        print(f"per-trial evaluation  : mean {statistics.mean(evals):5.1f} s (test split, plots, model logging; "
              "in the trial)")
    if startup:
        print(f"per-trial start-up    : mean {statistics.mean(startup):5.1f} s, min {min(startup):5.1f} s, "
              f"max {max(startup):5.1f} s (trial start to first epoch start)")


if __name__ == "__main__":
    main()
