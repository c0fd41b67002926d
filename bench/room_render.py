"""Rendering cost of randomised rooms against BAST's training step rate (issue 15).

    OMP_NUM_THREADS=1 .venv/bin/python bench/room_render.py --rooms 8

Prints, single-threaded: seconds per room bank (36 azimuths, early image sources + diffuse tail, measured T30) for
the training and held-out families (cold cache), the clips/s of a dataset build whose banks are cached (convolution,
noise, jitter, int16, Parquet), and bast_tiny's training samples/s (bench/bast_step.py's step, batch 32). Wall and
CPU seconds are both printed: on a shared machine the CPU figure is the one that compares. Asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainables.acoustics import random_rooms as rr
from trainables.acoustics.hrtf import load_hrtf
from trainables.localization.builder import LocalizationBuildConfig, build


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rooms", type=int, default=8, help="rooms per family to render")
    ap.add_argument("--sounds", type=int, default=40, help="generated sounds of the build")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hrirs = load_hrtf(None, 16000)
    azimuths = list(range(0, 360, 10))
    print("| family | rooms | RT60 target s (range) | T30 measured s (range) | s per bank, wall | s per bank, CPU |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for family, prefix in ((rr.TRAIN_FAMILY, "room"), (rr.HELDOUT_FAMILY, "heldout")):
            rooms = rr.draw_rooms(family, args.rooms, prefix, prefix, seed=0)
            t30, wall, cpu = [], 0.0, 0.0
            for room in rooms:
                (_, t), w, c = _timed(lambda: rr.room_bank(hrirs, room, azimuths, 8000, cache_dir=cache))
                t30.append(t)
                wall, cpu = wall + w, cpu + c
            targets = [r.rt60_target_s for r in rooms]
            print(f"| {prefix} | {len(rooms)} | {min(targets):.2f}–{max(targets):.2f} | {min(t30):.2f}–{max(t30):.2f} "
                  f"| {wall / len(rooms):.2f} | {cpu / len(rooms):.2f} |")
            err = np.abs(np.array(t30) / np.array(targets) - 1)
            print(f"|   | T30 vs target: median {100 * np.median(err):.0f} %, max {100 * err.max():.0f} % | | | | |")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = LocalizationBuildConfig(generated_sounds=args.sounds, environments=(), rooms=args.rooms,
                                      heldout_rooms=2, snr_db=(0.0, 30.0), level_jitter_db=10.0, seed=0)
        build(cfg, Path(tmp) / "warm")  # renders and caches the banks
        m, wall, cpu = _timed(lambda: build(cfg, Path(tmp) / "timed"))
        rows = sum(m.count(s) for s in ("train", "val", "test", "heldout"))
        print(f"\ndataset build, banks cached: {rows} clips in {wall:.1f} s wall / {cpu:.1f} s CPU = "
              f"{rows / wall:.0f} clips/s wall, {rows / cpu:.0f} clips/s per CPU second")

    import bast_step  # bench/bast_step.py: the script's folder is first on sys.path

    # bast_step times wall clock; its CPU seconds (minus warmup and the FLOP count, measured apart) compare here
    bast_step.measure_step("bast_tiny", batch=32, steps=1, warmup=1)  # one-time costs (lazy inits) out of the way
    _, _, cpu_warm = _timed(lambda: bast_step.measure_step("bast_tiny", batch=32, steps=1, warmup=2))
    fig, _, cpu = _timed(lambda: bast_step.measure_step("bast_tiny", batch=32, steps=11, warmup=2))
    print(f"bast_tiny training step, batch 32, 1 thread: {fig['samples_per_s']:.0f} samples/s wall, "
          f"{32 * 10 / (cpu - cpu_warm):.0f} samples per CPU second")


if __name__ == "__main__":
    main()
