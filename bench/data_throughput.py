"""Can the data keep up with training? Samples/s of the two input paths beside the BAST step rate.

    python bench/data_throughput.py                     # builds a small dataset under a temp dir, CPU
    python bench/data_throughput.py --data data/loc --device cuda

1. shards -> spectrogram batches: ShardReader (Parquet, int16) + BinauralFrontEnd on the device.
2. on-the-fly rendering -> spectrogram batches: OnTheFlyRenderer (FFT convolution on the device) + BinauralFrontEnd.
3. the BAST training step (bench/bast_step.py) at paper size and at bast_small, same device and batch.
Prints figures only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bast_step import measure_step  # bench/ is on sys.path when run as a script
from trainables.audio import BinauralFrontEnd
from trainables.localization.builder import LocalizationBuildConfig, build
from trainables.localization.onthefly import OnTheFlyRenderer
from trainables.localization.reader import ShardReader


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shard_rate(root: Path, batch: int, device: torch.device, front: BinauralFrontEnd) -> tuple[float, int]:
    reader = ShardReader(root, "train", batch_size=batch, seed=0)
    n = 0
    start = time.perf_counter()
    for b in reader:
        spec = front(b["wave"].to(device, non_blocking=True))
        n += len(spec)
    sync(device)
    return n / (time.perf_counter() - start), n


def onthefly_rate(root: Path, batch: int, device: torch.device, front: BinauralFrontEnd, batches: int) -> float:
    renderer = OnTheFlyRenderer(root, device=device, snr_db=(10.0, 30.0))
    g = torch.Generator().manual_seed(0)
    front(renderer.batch(batch, g)["wave"])  # warm-up: FFT plans, allocator
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        front(renderer.batch(batch, g)["wave"])
    sync(device)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="an existing dataset; default: build a small one in a temp dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--batches", type=int, default=20, help="on-the-fly batches to time")
    ap.add_argument("--environments", default="anechoic,reverberant")
    args = ap.parse_args()
    device = torch.device(args.device)
    front = BinauralFrontEnd().to(device)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "loc"
            t = time.perf_counter()
            build(LocalizationBuildConfig(generated_sounds=40, environments=tuple(args.environments.split(","))),
                  root)
            print(f"built {root} (40 generated sounds x 36 azimuths) in {time.perf_counter() - t:.1f} s")
        rate, n = shard_rate(root, args.batch, device, front)
        print(f"shards -> spectrograms      {rate:8.1f} samples/s  ({n} train rows, batch {args.batch}, {device})")
        print(f"on-the-fly -> spectrograms  {onthefly_rate(root, args.batch, device, front, args.batches):8.1f} "
              f"samples/s  (render + noise + front end)")
    for name, batch in (("bast_small", args.batch), ("bast_paper", min(args.batch, 8 if device.type == "cpu" else 48))):
        r = measure_step(name, batch=batch, device=args.device, steps=3, warmup=1,
                         dtype="bf16" if device.type == "cuda" else "fp32")
        print(f"BAST step {name:<10}       {r['samples_per_s']:8.1f} samples/s  (batch {batch}, training)")


if __name__ == "__main__":
    main()
