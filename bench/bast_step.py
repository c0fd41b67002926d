"""BAST training-step benchmark: forward+backward samples/s, peak memory and FLOPs per sample.

    python bench/bast_step.py                                  # paper size, CPU, fp32, batch 8
    python bench/bast_step.py --device cuda --dtype bf16 --batch 48
    python bench/bast_step.py --preset bast_small --batch 64

FLOPs are counted by torch.utils.flop_counter on one forward pass (matmuls and convolutions, 2 FLOPs per MAC);
a training step is counted as 3x forward. MFU is printed for GPUs whose dense peak is in PEAK_TFLOPS.
Prints figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from trainables.bast.config import preset  # noqa: E402
from trainables.bast.losses import hybrid_loss  # noqa: E402
from trainables.bast.model import BAST, count_parameters  # noqa: E402

# Dense peak TFLOP/s by (device-name substring, dtype), from the vendors' data sheets (SXM parts).
PEAK_TFLOPS = {("H100", "bf16"): 989.0, ("H200", "bf16"): 989.0, ("A100", "bf16"): 312.0,
               ("H100", "fp32"): 67.0, ("H200", "fp32"): 67.0, ("A100", "fp32"): 19.5}


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bast_paper")
    ap.add_argument("--sharing", default="NSP", choices=["SP", "NSP"])
    ap.add_argument("--integration", default="sub", choices=["add", "sub", "concat"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model first")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = preset(args.preset, sharing=args.sharing, integration=args.integration)
    model = BAST(cfg).to(device)
    n_params = count_parameters(model)
    x = torch.randn(args.batch, 2, cfg.freq_bins, cfg.frames, device=device)
    target = torch.nn.functional.normalize(torch.randn(args.batch, 2, device=device), dim=1)
    fwd_flops = forward_flops(model, x[:1])
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext())

    def step() -> None:
        with autocast:
            loss = hybrid_loss(step_model(x).float(), target, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start

    samples_per_s = args.batch * args.steps / elapsed
    achieved = 3 * fwd_flops * samples_per_s / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    threads = torch.get_num_threads()
    print(f"device            {name} ({device.type}, {threads} CPU threads)")
    print(f"model             {args.preset} BAST-{args.sharing} {args.integration}: {n_params / 1e6:.2f}M parameters")
    print(f"batch / dtype     {args.batch} / {args.dtype}{' / compiled' if args.compile else ''}")
    print(f"forward FLOPs     {fwd_flops / 1e9:.2f} GFLOP per sample (training step ~ {3 * fwd_flops / 1e9:.2f})")
    print(f"step time         {elapsed / args.steps * 1000:.1f} ms")
    print(f"throughput        {samples_per_s:.2f} samples/s (forward+backward+Adam)")
    print(f"achieved          {achieved:.3f} TFLOP/s")
    peak = next((v for (k, dt), v in PEAK_TFLOPS.items() if k in name and dt == args.dtype), None)
    if peak:
        print(f"MFU               {100 * achieved / peak:.1f}% of {peak:g} TFLOP/s dense {args.dtype}")
    print(f"peak memory       {peak_memory_mb(device):.0f} MiB ({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")


if __name__ == "__main__":
    main()
