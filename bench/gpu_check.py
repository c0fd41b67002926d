"""Every GPU figure of the project in one run (at most 8 minutes on one H100/H200), as one markdown table.

    bench/gpu_check.sh                       # on a GPU machine: writes bench/gpu_check.md and prints it
    bench/gpu_check.sh --out /tmp/gpu.md
    bench/gpu_check.sh --dry-run             # the same pipeline on CPU at tiny sizes (about 2 minutes on 2 cores)

Rows, each measured in its own subprocess (a crash, an out-of-memory or a hang costs that row only):

1. `bast_step` at paper size (bast_paper, NSP, sub): bf16, fp32, bf16 + torch.compile -- samples/s, TFLOP/s, MFU,
   peak GPU memory (bench/bast_step.py's measure_step).
2. `binaural_step` at binaural_paper: samples/s, peak GPU memory (bench/binaural_step.py's bench).
3. A one-GPU Ray Train run (`run_training`, one worker, one GPU) on a small generated localization dataset: wall
   seconds and the last epoch's training samples/s.
4. A 4-trial sweep (`start_sweep`), 2 trials at once sharing the GPU (0.5 GPU each): wall seconds, trials succeeded.

A part that fails, or runs past its time budget, gives a row "failed: <reason>"; the others still run and the
script then exits 1. Budgets carry over: a part may use what the parts before it left unused, but never the time
reserved for the parts after it, so the whole run stays under TOTAL_BUDGET_S.

Everything is written to a scratch BINSWEEP_HOME (--work-dir, default a fresh temp folder, removed at the end unless
a part failed or --keep is given): dataset, Ray storage, and the embedded MLflow store unless MLFLOW_TRACKING_URI is
set. Ray is always a local cluster on this machine (RAY_ADDRESS is ignored): the figures are this GPU's. The HRTF
cache of the caller's BINSWEEP_HOME (data/cache/hrtf) is copied in, so a machine without internet can build the
dataset when that cache exists (fill it once with any `binsweep data localization` run).

Dry-run: bast_tiny / binaural_tiny, a few steps, a 72-sample dataset, one epoch, CPU resources (gpus_per_worker 0);
bf16 stays (cheap at tiny size), torch.compile uses the aot_eager backend (inductor's C++ build takes ~35 s on a
2-core CPU). Figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/ is on sys.path when a bench script runs as a script; the same holds for this file's subprocesses, and the
# repository root makes `trainables` / `sweep_platform` importable even without the editable install.
for _p in (str(HERE), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

TOTAL_BUDGET_S = 470  # 8 minutes less a margin for the orchestrator and the header probe
DRY_TOTAL_BUDGET_S = 300  # a hang in the dry-run (i.e. in the test) ends within 5 minutes
COLUMNS = ("what", "settings", "samples/s", "TFLOP/s", "MFU", "peak memory (MiB)", "wall s", "notes")
RESULT_KEYS = ("samples_per_s", "tflops", "mfu", "peak_mem_mib", "wall_s")


@dataclass(frozen=True)
class Sizes:
    """What one mode (GPU or dry-run) measures."""

    device: str
    bast_preset: str
    bast_batch: int
    bast_steps: int
    bast_warmup: int
    compile_backend: str  # torch.compile's backend: inductor on a GPU, aot_eager in the dry-run
    binaural_preset: str
    binaural_batch: int
    binaural_steps: int
    binaural_warmup: int
    train_preset: str
    train_batch: int
    train_epochs: int
    sweep_epochs: int
    sounds: int
    azimuth_step: int
    cpus_per_worker: float  # the Train run's worker
    gpus_per_worker: float  # the Train run's worker
    sweep_cpus_per_worker: float
    sweep_gpus_per_worker: float  # 0.5: two trials share the GPU
    sweep_trials: int = 4
    sweep_concurrency: int = 2


GPU = Sizes(device="cuda", bast_preset="bast_paper", bast_batch=48, bast_steps=30, bast_warmup=5,
            compile_backend="inductor", binaural_preset="binaural_paper", binaural_batch=32, binaural_steps=10,
            binaural_warmup=3, train_preset="bast_paper", train_batch=48, train_epochs=3, sweep_epochs=1,
            sounds=128, azimuth_step=10, cpus_per_worker=4, gpus_per_worker=1, sweep_cpus_per_worker=2,
            sweep_gpus_per_worker=0.5)
DRY = Sizes(device="cpu", bast_preset="bast_tiny", bast_batch=16, bast_steps=3, bast_warmup=1,
            compile_backend="aot_eager", binaural_preset="binaural_tiny", binaural_batch=4, binaural_steps=2,
            binaural_warmup=1, train_preset="bast_tiny", train_batch=8, train_epochs=1, sweep_epochs=1,
            sounds=12, azimuth_step=60, cpus_per_worker=1, gpus_per_worker=0, sweep_cpus_per_worker=1,
            sweep_gpus_per_worker=0)


@dataclass(frozen=True)
class Part:
    key: str  # --part KEY runs it in a subprocess
    what: str  # the row's first cell
    budget_s: float  # guaranteed seconds on a GPU
    dry_budget_s: float  # the same in the dry-run (2 CPU cores)


# Order: the cheap step figures first, the Ray parts (start-up heavy, most variable) last, so that unused budget of
# the early parts carries over to them.
PARTS = (
    Part("bast_bf16", "bast_step bf16", 45, 30),
    Part("bast_fp32", "bast_step fp32", 45, 30),
    Part("bast_compile", "bast_step bf16 + torch.compile", 100, 40),
    Part("binaural", "binaural_step", 60, 40),
    Part("train", "Ray Train run, 1 worker", 110, 80),
    Part("sweep", "sweep, 4 trials, 2 at once", 110, 80),
)


# ------------------------------------------------------------------------------------------------ the parts (child)

def _step_device_setup(sizes: Sizes) -> None:
    import torch

    if sizes.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))  # as tests/conftest.py: 2-core CI, no oversubscription


def part_bast(sizes: Sizes, dtype: str, compile: bool) -> dict:
    import functools

    import torch

    from bast_step import measure_step

    _step_device_setup(sizes)
    if compile and sizes.compile_backend != "inductor":
        # measure_step calls torch.compile(model); pick the backend without editing bast_step.py
        torch.compile = functools.partial(torch.compile, backend=sizes.compile_backend)
    r = measure_step(sizes.bast_preset, "NSP", "sub", batch=sizes.bast_batch, device=sizes.device, dtype=dtype,
                     steps=sizes.bast_steps, warmup=sizes.bast_warmup, compile=compile)
    settings = (f"{sizes.bast_preset} NSP sub, batch {sizes.bast_batch}, {dtype}, {r['device_type']}"
                + (f", compiled ({sizes.compile_backend})" if compile else ""))
    notes = [f"{r['params'] / 1e6:.2f} M params, {r['fwd_flops'] / 1e9:.3f} GFLOP/sample fwd, "
             f"step {r['step_s'] * 1000:.1f} ms"]
    if r["peak_tflops"]:
        notes.append(f"MFU vs {r['peak_tflops']:g} TFLOP/s dense {dtype}")
    if dtype == "fp32" and r["device_type"] == "cuda":
        notes.append("TF32 off (PyTorch's default; the trainer turns it on)")
    if compile and sizes.compile_backend != "inductor":
        notes.append("dry-run: aot_eager backend, inductor's C++ build is too slow on CPU")
    return {"settings": settings, "samples_per_s": r["samples_per_s"], "tflops": r["tflops"], "mfu": r["mfu"],
            "peak_mem_mib": r["peak_mem_mb"], "notes": "; ".join(notes)}


def part_binaural(sizes: Sizes) -> dict:
    import gc

    import torch

    from binaural_step import bench

    _step_device_setup(sizes)
    # Two ViT-Large at 224x448 have never been measured on an 80 GB card: halve the batch on an out-of-memory
    # rather than lose the row, and say so.
    batch, too_big = sizes.binaural_batch, []
    while True:
        try:
            r = bench(sizes.binaural_preset, sizes.device, batch, sizes.binaural_steps, sizes.binaural_warmup,
                      "audio+image+depth", None, "rgb")
            break
        except torch.OutOfMemoryError:
            if batch <= 4:
                raise
        too_big.append(batch)  # outside the except block, so the failed step's tensors can be freed
        batch //= 2
        gc.collect()
        torch.cuda.empty_cache()
    precision = "bf16 autocast" if sizes.device == "cuda" else "fp32"
    notes = [f"{r['params_m']:.2f} M params, median step {r['step_s'] * 1000:.1f} ms"]
    if too_big:
        notes.append(f"out of GPU memory at batch {', '.join(map(str, too_big))}")
    return {"settings": f"{r['preset']} ({r['backbone']}), audio+image+depth, batch {r['batch']}, {precision}, "
                        f"{sizes.device}",
            "samples_per_s": r["samples_per_s"], "peak_mem_mib": r["peak_mib"], "notes": "; ".join(notes)}


def dataset_root(sizes: Sizes) -> Path:
    """The small generated localization dataset both Ray parts train on (built by the first that needs it)."""
    from trainables.home import home
    from trainables.localization.builder import LocalizationBuildConfig, build

    root = home() / "data" / "loc_gpu_check"
    if not (root / "manifest.json").is_file():
        build(LocalizationBuildConfig(generated_sounds=sizes.sounds, azimuths=tuple(range(0, 360, sizes.azimuth_step)),
                                      environments=("anechoic",), test_fraction=0.25, shard_rows=256, seed=0), root)
    return root


def _train_base(sizes: Sizes, epochs: int) -> dict:
    # precision auto: bf16 autocast on CUDA, fp32 on CPU (the loop's own choice, as a user's run gets it)
    return {"model": {"preset": sizes.train_preset},
            "train": {"epochs": epochs, "batch_size": sizes.train_batch, "lr": 1e-4, "precision": "auto"}}


def _unique(name: str) -> str:
    # a shared MLFLOW_TRACKING_URI may hold earlier checks: never resume or collide with one of them
    return f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"


def part_train(sizes: Sizes) -> dict:
    from sweep_platform.training import Resources, run_training
    from trainables.bast import BASTConfig

    t0 = time.perf_counter()
    root = dataset_root(sizes)
    build_s = time.perf_counter() - t0
    cfg = BASTConfig.model_validate({**_train_base(sizes, sizes.train_epochs), "data": {"root": str(root)}})
    res = Resources(workers=1, gpus_per_worker=sizes.gpus_per_worker, cpus_per_worker=sizes.cpus_per_worker)
    t0 = time.perf_counter()
    outcome = run_training("bast", cfg, name=_unique("gpu-check-train"), resources=res, evaluate=True)
    wall = time.perf_counter() - t0
    rates = [h["samples_per_s"] for h in outcome.history if "samples_per_s" in h]
    if len(outcome.history) != sizes.train_epochs or not rates:
        raise RuntimeError(f"expected {sizes.train_epochs} epochs with samples_per_s, got {outcome.history}")
    return {"settings": f"{sizes.train_preset}, batch {sizes.train_batch}, {sizes.train_epochs} epoch(s), "
                        f"{_resources_text(res.workers, res.cpus_per_worker, res.gpus_per_worker)}, test evaluation",
            "samples_per_s": rates[-1], "wall_s": wall,
            "notes": f"samples/s: training steps of the last epoch; wall: run_training (Ray start, fit "
                     f"{outcome.wall_s:.1f} s, evaluation, MLflow); dataset built in {build_s:.1f} s"}


def part_sweep(sizes: Sizes) -> dict:
    import yaml

    from sweep_platform import tracking
    from sweep_platform.sweep import start_sweep
    from trainables.home import home

    root = dataset_root(sizes)
    name = _unique("gpu-check-sweep")
    path = home() / f"{name}.yaml"
    # a grid over the seed: every trial does the same work, so the wall time is about sharing, not the search
    path.write_text(yaml.safe_dump({
        "name": name, "trainable": "bast", "dataset": str(root), "metric": "val_ad_deg",
        "scheduler": {"type": "none"}, "sampler": {"type": "grid"}, "concurrency": sizes.sweep_concurrency,
        "resources": {"workers": 1, "cpus_per_worker": sizes.sweep_cpus_per_worker,
                      "gpus_per_worker": sizes.sweep_gpus_per_worker},
        "base": _train_base(sizes, sizes.sweep_epochs),
        "space": {"train.seed": {"choice": list(range(sizes.sweep_trials))}}}, sort_keys=False))
    t0 = time.perf_counter()
    outcome = start_sweep(path, name, progress=False)
    wall = time.perf_counter() - t0
    rates = _trial_rates(tracking, outcome.parent_run_id)
    result = {"settings": f"{sizes.train_preset}, batch {sizes.train_batch}, {sizes.sweep_epochs} epoch(s), "
                          f"{sizes.sweep_trials} trials, {sizes.sweep_concurrency} at once, each "
                          f"{_resources_text(1, sizes.sweep_cpus_per_worker, sizes.sweep_gpus_per_worker)}",
              "samples_per_s": sum(rates) / len(rates) if rates else None, "wall_s": wall,
              "notes": f"{outcome.succeeded}/{sizes.sweep_trials} trials succeeded; samples/s: mean over trials "
                       f"of the last epoch's training rate; wall: start_sweep (Tune {outcome.wall_s:.1f} s)"}
    if outcome.succeeded != sizes.sweep_trials:
        errors = [t["error"] for t in outcome.trials if t.get("error")]
        raise RuntimeError(f"{outcome.succeeded}/{sizes.sweep_trials} trials succeeded"
                           + (f"; first error: {errors[0]}" if errors else ""))
    return result


def _trial_rates(tracking, parent_run_id: str) -> list[float]:
    """Each child run's last samples_per_s (MLflow keeps the latest value of a metric on the run)."""
    c = tracking.client()
    exp_id = c.get_run(parent_run_id).info.experiment_id
    runs = c.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return [r.data.metrics["samples_per_s"] for r in runs if "samples_per_s" in r.data.metrics]


def _resources_text(workers: int, cpus: float, gpus: float) -> str:
    return f"{workers} worker x {cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else " (no GPU)")


def run_part(key: str, sizes: Sizes) -> dict:
    if key == "bast_bf16":
        return part_bast(sizes, "bf16", compile=False)
    if key == "bast_fp32":
        return part_bast(sizes, "fp32", compile=False)
    if key == "bast_compile":
        return part_bast(sizes, "bf16", compile=True)
    if key == "binaural":
        return part_binaural(sizes)
    if key == "train":
        return part_train(sizes)
    if key == "sweep":
        return part_sweep(sizes)
    raise ValueError(f"unknown part {key!r}")


def child_main(key: str, sizes: Sizes, result_file: Path) -> int:
    """Run one part; write its figures (or its error) as JSON to result_file."""
    try:
        result = run_part(key, sizes)
    except BaseException as exc:  # noqa: BLE001 - the row reports it; the traceback goes to the part's log
        import traceback

        traceback.print_exc()
        result_file.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    result_file.write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------- orchestrator

def probe(dry_run: bool) -> dict:
    """Device name and versions, from a subprocess: this process never holds a CUDA context of its own."""
    code = ("import json, platform, torch; cuda = torch.cuda.is_available(); "
            "print(json.dumps({'cuda': cuda, 'device': torch.cuda.get_device_name(0) if cuda else None, "
            "'torch': torch.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"cuda": False,
                                                                                         "torch": "?"}
    if not info.get("device"):
        info["device"] = cpu_name()
    info["ray"] = importlib.metadata.version("ray")
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


def child_env(home: Path) -> dict:
    env = dict(os.environ, BINSWEEP_HOME=str(home))
    for var in ("RAY_ADDRESS", "BINSWEEP_RAY_STORAGE"):  # a local cluster and scratch storage, always
        env.pop(var, None)
    # Train's controller polls its workers every 2 s; half a second only shortens the wait at the end of a run
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def seed_hrtf_cache(home: Path) -> None:
    """Copy the caller's resampled KEMAR HRIRs into the scratch home (no download needed, offline machines work)."""
    src = Path(os.environ.get("BINSWEEP_HOME", ".")).resolve() / "data" / "cache" / "hrtf"
    dst = home / "data" / "cache" / "hrtf"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.npz") if src.is_dir() else ():
        shutil.copy2(f, dst / f.name)


def run_child(part: Part, dry_run: bool, work: Path, timeout_s: float) -> dict:
    """One part in its own process group (Ray's daemons included), killed whole when it runs past timeout_s."""
    result_file = work / f"{part.key}.json"
    log_file = work / f"{part.key}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part.key] + (["--dry-run"] if dry_run else [])
    cmd += ["--result", str(result_file)]
    t0 = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(work / "home"),
                                cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            rc = None
        kill_group(proc.pid)  # also ends whatever a finished part left behind (a Ray daemon that outlived it)
    wall = time.perf_counter() - t0
    if rc is None:
        return {"error": f"timed out after {timeout_s:.0f} s (its budget); log {log_file}", "wall_s": wall,
                "part_s": wall}
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        result = {"error": f"exit code {rc}, no result: {last_line(log_file)}; log {log_file}"}
    if rc != 0 and "error" not in result:
        result["error"] = f"exit code {rc}: {last_line(log_file)}"
    result.setdefault("wall_s", wall)  # a step part's wall: the whole subprocess, model build and compile included
    result["part_s"] = wall
    return result


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def last_line(log_file: Path) -> str:
    lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def fmt(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def row(part: Part, r: dict) -> list[str]:
    if "error" in r:
        reason = " ".join(str(r["error"]).split())[:300].replace("|", "/")  # one line, no cell breaks
        return [part.what, f"failed: {reason}", "", "", "", "", fmt(r.get("wall_s"), 1), ""]
    mfu = None if r.get("mfu") is None else 100 * r["mfu"]
    return [part.what, r["settings"], fmt(r.get("samples_per_s"), 2), fmt(r.get("tflops"), 3),
            "" if mfu is None else f"{mfu:.1f}%", fmt(r.get("peak_mem_mib"), 0), fmt(r.get("wall_s"), 1),
            r.get("notes", "")]


def table(info: dict, dry_run: bool, rows: list[list[str]], total_s: float) -> str:
    mode = "DRY-RUN on CPU at tiny sizes (pipeline check, not GPU figures)" if dry_run else "GPU check"
    lines = [f"{mode}: {info['device']}; torch {info['torch']}, ray {info['ray']}; "
             f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; total {total_s:.0f} s", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["", "Peak memory: torch.cuda.max_memory_allocated on a GPU, the part's process peak RSS on CPU; "
              "TFLOP/s count a training step as 3x the forward FLOPs (torch.utils.flop_counter)."]
    return "\n".join(lines) + "\n"


def orchestrate(args) -> int:
    t_start = time.perf_counter()
    info = probe(args.dry_run)
    if not args.dry_run and not info["cuda"]:
        print("gpu_check: no CUDA GPU visible to torch; use --dry-run for the CPU pipeline check", file=sys.stderr)
        return 2
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="binsweep-gpu-check-"))
    (work / "home").mkdir(parents=True, exist_ok=True)
    seed_hrtf_cache(work / "home")
    parts = [p for p in PARTS if not args.only or p.key in args.only]
    budgets = [p.dry_budget_s if args.dry_run else p.budget_s for p in parts]
    deadline = t_start + (DRY_TOTAL_BUDGET_S if args.dry_run else TOTAL_BUDGET_S)
    rows, failed = [], False
    for i, part in enumerate(parts):
        # this part's own budget plus whatever the earlier parts left, never what the later parts are owed
        timeout = deadline - time.perf_counter() - sum(budgets[i + 1:])
        print(f"gpu_check: {part.key} (up to {timeout:.0f} s) ...", file=sys.stderr, flush=True)
        r = run_child(part, args.dry_run, work, timeout)
        failed |= "error" in r
        rows.append(row(part, r))
        print(f"gpu_check: {part.key} {'FAILED: ' + r['error'] if 'error' in r else 'ok'} "
              f"({r['part_s']:.0f} s)", file=sys.stderr, flush=True)
    text = table(info, args.dry_run, rows, time.perf_counter() - t_start)
    out = Path(args.out) if args.out else HERE / ("gpu_check.dry-run.md" if args.dry_run else "gpu_check.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")
    if failed or args.keep:
        print(f"gpu_check: work folder kept (logs, Ray storage, MLflow): {work}", file=sys.stderr)
    elif not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the pipeline and the table")
    ap.add_argument("--out", help="markdown file (default bench/gpu_check.md; bench/gpu_check.dry-run.md with "
                    "--dry-run, so a dry run never overwrites GPU figures)")
    ap.add_argument("--work-dir", help="scratch BINSWEEP_HOME parent, logs and results (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--only", nargs="+", choices=[p.key for p in PARTS], help="run only these parts")
    ap.add_argument("--part", choices=[p.key for p in PARTS], help=argparse.SUPPRESS)  # the subprocess of one part
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        return child_main(args.part, DRY if args.dry_run else GPU, Path(args.result))
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
