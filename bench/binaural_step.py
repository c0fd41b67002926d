"""Training-step throughput and peak memory of the binauralizer.

    python bench/binaural_step.py                      # binaural_tiny on CPU (and binaural_paper on a GPU, if any)
    python bench/binaural_step.py --preset binaural_paper --device cuda --batch-size 32
    python bench/binaural_step.py --backbone test_vit --modalities audio+image

One step is what the shared loop does per batch (`trainables.loop.train_worker`):
- the recipe's device-side preprocessing: RMS normalisation, STFTs of mix and diff, frame normalisation;
- forward (bf16 autocast on CUDA, fp32 on CPU), the loss, backward and an Adam step.
Random waveforms and frames stand in for a dataset, so data loading is not measured (see bench/data_throughput.py).

Printed per configuration: parameters, median step time, samples/s and peak memory. Peak memory is
torch.cuda.max_memory_allocated on a GPU, and on the CPU the process's peak RSS (resource.getrusage ru_maxrss), which
includes the Python runtime and every earlier configuration.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from trainables.binaural.config import BinauralConfig
from trainables.binaural.losses import BinauralLoss
from trainables.binaural.model import BinauralModel, count_parameters
from trainables.binaural.recipe import model_inputs
from trainables.loop import autocast


def bench(preset: str, device: str, batch_size: int, steps: int, warmup: int, modalities: str,
          backbone: str | None, depth_source: str) -> dict:
    model_cfg = {"preset": preset, "modalities": modalities, "depth_source": depth_source}
    if backbone:
        model_cfg["backbone"] = backbone
    cfg = BinauralConfig.model_validate({"model": model_cfg})
    m = cfg.model
    dev = torch.device(device)
    torch.manual_seed(0)
    model = BinauralModel(m).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    criterion = BinauralLoss(cfg.loss)
    batch = {"wave": 0.1 * torch.randn(batch_size, 2, m.clip_samples),
             "image": torch.randint(0, 256, (batch_size, 3, *m.image_size), dtype=torch.uint8),
             "depth": 1 + 4 * torch.rand(batch_size, 1, *m.image_size)}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x = model_inputs(m, batch, dev)
        with autocast(dev, "auto"):
            pred = model(x["mix_spec"], x["image"], x["depth"])["diff_spec"].float()
        loss = criterion(pred, x["mix_spec"], x["diff_spec"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        peak_kind = "GPU max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        peak_kind = "process peak RSS"
    return {"preset": preset, "backbone": m.backbone, "modalities": modalities, "device": str(dev),
            "batch": batch_size, "params_m": count_parameters(model) / 1e6, "step_s": step,
            "samples_per_s": batch_size / step, "peak_mib": peak, "peak_kind": peak_kind}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="binaural_tiny or binaural_paper (default: tiny on CPU, "
                   "plus paper on a GPU when one is present)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: as --preset's default)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 32 on a GPU")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--modalities", default="audio+image+depth")
    p.add_argument("--depth-source", default="rgb", choices=["rgb", "map"])
    p.add_argument("--backbone", default=None, help="timm ViT name, overriding the preset's")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.preset:
        runs = [(a.preset, a.device or ("cuda" if torch.cuda.is_available() else "cpu"))]
    else:
        runs = [("binaural_tiny", a.device or "cpu")]
        if torch.cuda.is_available() and a.device in (None, "cuda"):
            runs.append(("binaural_paper", "cuda"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    for preset, device in runs:
        bs = a.batch_size or (32 if device.startswith("cuda") else 16)
        r = bench(preset, device, bs, a.steps, a.warmup, a.modalities, a.backbone, a.depth_source)
        print(f"{r['preset']:<15} {r['backbone']:<24} {r['modalities']:<18} {r['device']:<5} batch {r['batch']:>3}  "
              f"{r['params_m']:7.2f} M params  step {r['step_s'] * 1000:8.1f} ms  {r['samples_per_s']:8.1f} samples/s  "
              f"peak {r['peak_mib']:8.0f} MiB ({r['peak_kind']})", flush=True)


if __name__ == "__main__":
    main()
