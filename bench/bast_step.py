"""Localizer training-step benchmark (BAST, cnn_loc): parameters, forward+backward samples/s, FLOPs per sample, memory.

    python bench/bast_step.py                                  # BAST paper size, CPU, fp32, batch 8
    python bench/bast_step.py --device cuda --dtype bf16 --batch 48
    python bench/bast_step.py --preset bast_tiny bast_small --batch 16
    python bench/bast_step.py --trainable cnn_loc --preset cnn_loc_tiny cnn_loc_small --batch 16 --threads 2

The model comes from the trainable's TrainableSpec (config preset -> build_model, example_input), so every localizer
is measured by the same step: the hybrid loss on a random [B, 2, F, T] batch, backward, Adam.
FLOPs are counted by torch.utils.flop_counter on one forward pass (matmuls and convolutions, 2 FLOPs per MAC);
a training step is counted as 3x forward. MFU is printed for GPUs whose dense peak is in PEAK_TFLOPS.
Prints figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainables.bast.losses import hybrid_loss
from trainables.bast.model import count_parameters
from trainables.registry import get_trainable

LOCALIZERS = ("bast", "cnn_loc")  # trainables with a sharing / integration model and a [B, 2, F, T] input
DEFAULT_PRESET = {"bast": "bast_paper", "cnn_loc": "cnn_loc_base"}

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


def measure_step(preset_name: str = "bast_paper", sharing: str = "NSP", integration: str = "sub", batch: int = 8,
                 device: str = "cpu", dtype: str = "fp32", steps: int = 5, warmup: int = 2,
                 compile: bool = False, trainable: str = "bast") -> dict:
    """Time `steps` Adam training steps after `warmup`; returns the figures printed by main()."""
    dev = torch.device(device)
    torch.manual_seed(0)
    spec = get_trainable(trainable)
    cfg = spec.config_type.model_validate({"model": {"preset": preset_name, "sharing": sharing,
                                                     "integration": integration}})
    model = spec.build_model(cfg).to(dev)
    x = torch.randn(batch, *spec.example_input(cfg).shape[1:], device=dev)
    target = torch.nn.functional.normalize(torch.randn(batch, 2, device=dev), dim=1)
    fwd_flops = forward_flops(model, x[:1])
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    def step() -> None:
        with autocast:
            loss = hybrid_loss(step_model(x).float(), target, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    samples_per_s = batch * steps / elapsed
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    achieved = 3 * fwd_flops * samples_per_s / 1e12
    peak = next((v for (k, dt), v in PEAK_TFLOPS.items() if k in name and dt == dtype), None)
    return {"device": name, "device_type": dev.type, "params": count_parameters(model), "fwd_flops": fwd_flops,
            "step_s": elapsed / steps, "samples_per_s": samples_per_s, "tflops": achieved,
            "mfu": achieved / peak if peak else None, "peak_tflops": peak, "peak_mem_mb": peak_memory_mb(dev)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trainable", default="bast", choices=LOCALIZERS)
    ap.add_argument("--preset", nargs="+", help="one or more of the trainable's presets, each measured in turn "
                    f"(default: {', '.join(f'{k} {v}' for k, v in DEFAULT_PRESET.items())})")
    ap.add_argument("--sharing", default="NSP", choices=["SP", "NSP"])
    ap.add_argument("--integration", default="sub", choices=["add", "sub", "concat"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model first")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    for i, name in enumerate(args.preset or [DEFAULT_PRESET[args.trainable]]):
        r = measure_step(name, args.sharing, args.integration, args.batch, args.device, args.dtype, args.steps,
                         args.warmup, args.compile, args.trainable)
        if i:
            print()
        print(f"device            {r['device']} ({r['device_type']}, {torch.get_num_threads()} CPU threads)")
        print(f"model             {name} {args.trainable} {args.sharing} {args.integration}: "
              f"{r['params'] / 1e6:.3f}M parameters")
        print(f"batch / dtype     {args.batch} / {args.dtype}{' / compiled' if args.compile else ''}")
        print(f"forward FLOPs     {r['fwd_flops'] / 1e9:.3f} GFLOP per sample (training step ~ "
              f"{3 * r['fwd_flops'] / 1e9:.3f})")
        print(f"step time         {r['step_s'] * 1000:.1f} ms")
        print(f"throughput        {r['samples_per_s']:.2f} samples/s (forward+backward+Adam)")
        print(f"achieved          {r['tflops']:.3f} TFLOP/s")
        if r["mfu"] is not None:
            print(f"MFU               {100 * r['mfu']:.1f}% of {r['peak_tflops']:g} TFLOP/s dense {args.dtype}")
        where = "GPU allocated" if r["device_type"] == "cuda" else "process RSS, peak so far"
        print(f"peak memory       {r['peak_mem_mb']:.0f} MiB ({where})")


if __name__ == "__main__":
    main()
