"""How fast does a FAIR-Play import feed training? Import time, bytes per recording and training samples/s of the
reader (fresh 0.63 s crops of whole 10 s recordings, frame crop 224×448 + 2.5D colour jitter), per frame format.

    OMP_NUM_THREADS=1 python bench/fairplay_reader.py --recordings 8

The FAIR-Play tree is synthetic but full-sized: 10 s stereo WAVs at 48 kHz and 100 frames per recording at 10 fps,
each a shifted 256×512 crop of matplotlib's sample photo (grace_hopper.jpg), so JPEG sizes are those of a photo.
Prints figures only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import soundfile as sf
from PIL import Image

from trainables.binaural.data import BinauralReader
from trainables.binaural.fairplay import FairPlayImportConfig, import_fairplay


def fake_fairplay(root: Path, n: int) -> None:
    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    photo = np.asarray(photo.resize((640, 320)))
    rng = np.random.default_rng(0)
    ids = [f"{i:06d}" for i in range(1, n + 1)]
    (root / "binaural_audios").mkdir(parents=True)
    for i in ids:
        sf.write(str(root / "binaural_audios" / f"{i}.wav"), 0.1 * rng.standard_normal((480000, 2)), 48000)
        d = root / "frames" / f"{i}.mp4"
        d.mkdir(parents=True)
        for k in range(1, 101):
            Image.fromarray(photo[k % 64:k % 64 + 256, k:k + 512]).save(d / f"{k:06d}.png")
    (root / "splits" / "split1").mkdir(parents=True)
    lists = {"train": ids[:-2], "val": ids[-2:-1], "test": ids[-1:]}
    for split, names in lists.items():
        with h5py.File(root / "splits" / "split1" / f"{split}.h5", "w") as f:
            f.create_dataset("audio", data=np.array([f"/x/{i}.wav".encode() for i in names]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recordings", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fairplay-bench-") as d:
        root = Path(d) / "FAIR-Play"
        t = time.perf_counter()
        fake_fairplay(root, args.recordings)
        print(f"fake tree: {args.recordings} recordings in {time.perf_counter() - t:.1f} s")
        for fmt in ("jpeg", "raw"):
            out = Path(d) / f"import-{fmt}"
            t = time.perf_counter()
            import_fairplay(FairPlayImportConfig(root=root, frame_format=fmt), out)
            took = time.perf_counter() - t
            size = sum(p.stat().st_size for p in (out / "shards").iterdir())
            reader = BinauralReader(out / "split1", "train", args.batch, window=10080, random_crop=True)
            t, cpu, samples = time.perf_counter(), time.process_time(), 0
            for epoch in range(args.epochs):
                reader.set_epoch(epoch)
                for batch in reader:
                    samples += len(batch["wave"])
            rate, cpu_rate = samples / (time.perf_counter() - t), samples / (time.process_time() - cpu)
            print(f"{fmt:>5}: import {took / args.recordings:.2f} s/recording, {size / args.recordings / 1e6:.1f} MB/"
                  f"recording on disk; training reader {rate:.1f} samples/s wall, {cpu_rate:.1f} per CPU-second "
                  f"(batch {args.batch}, image {tuple(batch['image'].shape[-2:])})")


if __name__ == "__main__":
    main()
