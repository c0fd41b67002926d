"""Does training on randomised rooms generalise to rooms never seen? (issue 15; Francl & McDermott 2022)

One dataset holds the lecture hall (`reverberant`), N randomised training rooms (room-*) and a held-out family of
larger rooms (split heldout), all with the same diffuse noise and level jitter. The same small BAST (NSP, sub,
hybrid loss; same epochs, batch, lr and seed) is trained
    (a) on the hall only:      data.train_environments = [reverberant]
    (b) on the random rooms:   data.train_environments = [room-*]
with the shared training loop (trainables.loop.train_loop, in this process), and scored by mean angular error (AD)
on the test sounds in the hall, in the training rooms, and in the held-out rooms.

    OMP_NUM_THREADS=1 .venv/bin/python bench/room_generalisation.py --out /tmp/roomgen
    # or the two trainings in parallel processes (after the dataset is built), then the table:
    ... --conditions a & ... --conditions b; ... --report

Target: (b)'s held-out AD <= 1.3 x its in-domain AD (test sounds in the training rooms), and (b) clearly better than
(a) on the held-out rooms. Prints a table and writes results.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from trainables.localization import inprocess
from trainables.localization.builder import LocalizationBuildConfig, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="dataset and results.json go here")
    ap.add_argument("--sounds", type=int, default=160, help="generated sounds (10%% are test sounds)")
    ap.add_argument("--rooms", type=int, default=24)
    ap.add_argument("--heldout-rooms", type=int, default=6)
    ap.add_argument("--azimuth-step", type=int, default=10)
    ap.add_argument("--snr-db", type=float, nargs=2, default=(0.0, 30.0))
    ap.add_argument("--jitter-db", type=float, default=10.0)
    ap.add_argument("--embed-dim", type=int, default=64, help="bast_tiny is 64 (1/1/1 layers)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    ap.add_argument("--data", type=Path, help="dataset folder (default: --out/data); built there if missing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conditions", default="ab", help="which trainings to run: a, b or ab")
    ap.add_argument("--report", action="store_true", help="only print the table of the results in --out")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not args.report:
        run(args)
    report(args.out)


def run(args) -> None:

    root = args.data or args.out / "data"
    t0 = time.perf_counter()
    manifest = build(LocalizationBuildConfig(
        generated_sounds=args.sounds, azimuths=tuple(range(0, 360, args.azimuth_step)), environments=("reverberant",),
        rooms=args.rooms, heldout_rooms=args.heldout_rooms, snr_db=tuple(args.snr_db), level_jitter_db=args.jitter_db,
        test_fraction=0.1, seed=args.seed), root)
    build_s = time.perf_counter() - t0
    rows = sum(manifest.count(s) for s in ("train", "val", "test", "heldout"))
    print(f"dataset: {rows} rows in {build_s:.0f} s ({rows / build_s:.0f} clips/s with room rendering); "
          f"counts {({s: manifest.count(s) for s in ('train', 'val', 'test', 'heldout')})}", flush=True)

    model = {"preset": "bast_tiny", "embed_dim": args.embed_dim, "sharing": "NSP", "integration": "sub"}
    for label, envs in (("a", ["reverberant"]), ("b", ["room-*"])):
        if label not in args.conditions:
            continue
        config = {"model": model, "loss": {"name": "hybrid"},
                  "data": {"root": str(root), "train_environments": envs},
                  "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "seed": args.seed,
                            "schedule": args.schedule, "warmup_epochs": 0.5 if args.schedule == "cosine" else 0.0}}
        t = time.perf_counter()
        net, history = inprocess.train("bast", config)
        train_s = time.perf_counter() - t
        test = inprocess.ad_by_environment(net, root, "test", ["reverberant"])
        rooms = inprocess.ad_by_environment(net, root, "test", ["room-*"])
        held = inprocess.ad_by_environment(net, root, "heldout")
        result = {"settings": vars(args) | {"out": str(args.out)}, "build_s": build_s, "rows": rows,
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
                  "train_s": train_s, "val_ad_deg": [h["val_ad_deg"] for h in history],
                  "samples_per_s": history[-1]["samples_per_s"], "hall_test": test["all"],
                  "rooms_test": rooms["all"], "heldout": held["all"],
                  "heldout_per_room": {k: v for k, v in held.items() if k != "all"}}
        print(f"{label}: trained {train_s:.0f} s, val AD per epoch {[round(v, 1) for v in result['val_ad_deg']]}"
              f"; hall {test['all'][0]:.1f}, rooms {rooms['all'][0]:.1f}, held-out {held['all'][0]:.1f}", flush=True)
        (args.out / f"condition-{label}.json").write_text(json.dumps(result, indent=2, default=str))


def report(out: Path) -> None:
    missing = [c for c in "ab" if not (out / f"condition-{c}.json").is_file()]
    if missing:
        print(f"no table yet: condition {', '.join(missing)} has not finished in {out}")
        return
    a, b = (json.loads((out / f"condition-{c}.json").read_text()) for c in "ab")
    print("\n| trained on | hall test AD | training-rooms test AD | held-out rooms AD | held-out / in-domain |")
    print("|---|---|---|---|---|")
    for label, r, own in (("(a) lecture hall", a, a["hall_test"]), ("(b) random rooms", b, b["rooms_test"])):
        print(f"| {label} | {r['hall_test'][0]:.1f}° | {r['rooms_test'][0]:.1f}° | {r['heldout'][0]:.1f}° | "
              f"{r['heldout'][0] / own[0]:.2f} |")
    ratio = b["heldout"][0] / b["rooms_test"][0]
    print(f"\nrows: hall test {a['hall_test'][1]}, rooms test {a['rooms_test'][1]}, held-out {a['heldout'][1]}")
    print(f"target 1: (b) held-out / in-domain = {ratio:.2f} (<= 1.3: {'met' if ratio <= 1.3 else 'MISSED'})")
    print(f"target 2: held-out AD (b) {b['heldout'][0]:.1f}° vs (a) {a['heldout'][0]:.1f}°")
    print(f"training: (a) {a['train_s']:.0f} s, (b) {b['train_s']:.0f} s wall; {a['machine']}")


if __name__ == "__main__":
    main()
