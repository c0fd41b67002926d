"""bench/gpu_check.sh --dry-run: the whole GPU check (step benches, a Ray Train run, a 4-trial sweep sharing a
device) on CPU at tiny sizes, and the one markdown table it writes, read back. About 2 minutes on 2 cores.

Speeds are never asserted (tests never time anything); every figure that applies must be there and positive.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["what", "settings", "samples/s", "TFLOP/s", "MFU", "peak memory (MiB)", "wall s", "notes"]
# row -> the columns that must hold a positive number in the dry-run (MFU stays blank on a CPU: no known peak)
EXPECTED = {
    "bast_step bf16": ["samples/s", "TFLOP/s", "peak memory (MiB)", "wall s"],
    "bast_step fp32": ["samples/s", "TFLOP/s", "peak memory (MiB)", "wall s"],
    "bast_step bf16 + torch.compile": ["samples/s", "TFLOP/s", "peak memory (MiB)", "wall s"],
    "binaural_step": ["samples/s", "peak memory (MiB)", "wall s"],
    "Ray Train run, 1 worker": ["samples/s", "wall s"],
    "sweep, 4 trials, 2 at once": ["samples/s", "wall s"],
}


def read_table(text: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    rows = {}
    for ln in lines[2:]:  # past the header and the |---| line
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), ln
        rows[cells[0]] = dict(zip(COLUMNS, cells))
    return rows


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "table.md"
    # the check's own MLflow store and caches under tmp (the script makes its scratch BINSWEEP_HOME below work/)
    env = dict(os.environ, BINSWEEP_HOME=str(tmp / "home"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
               PYTHON=sys.executable)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--work-dir", str(tmp / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    return proc, out, tmp


def test_dry_run_exits_0_and_prints_the_table_it_writes(dry_run):
    proc, out, _ = dry_run
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    text = out.read_text()
    assert text in proc.stdout
    header = text.splitlines()[0]
    assert header.startswith("DRY-RUN on CPU") and "torch " in header and "ray " in header


def test_every_row_is_there_with_positive_figures(dry_run):
    proc, out, _ = dry_run
    assert out.is_file(), proc.stderr[-5000:]
    text = out.read_text()
    assert "failed" not in text.lower(), text
    rows = read_table(text)
    assert list(rows) == list(EXPECTED), text
    for what, numeric in EXPECTED.items():
        for col in numeric:
            cell = rows[what][col]
            try:
                value = float(cell)
            except ValueError:
                pytest.fail(f"{what} / {col}: {cell!r} is not a number\n{text}")
            assert value > 0, (what, col, cell)
        assert rows[what]["MFU"] == ""  # a CPU has no dense peak in PEAK_TFLOPS
    assert "4/4 trials succeeded" in rows["sweep, 4 trials, 2 at once"]["notes"]
    assert "aot_eager" in rows["bast_step bf16 + torch.compile"]["settings"]  # says how the dry-run compiles


def test_runs_went_to_the_given_mlflow_store(dry_run):
    _, _, tmp = dry_run
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    names = [r.info.run_name for r in runs]
    assert any(n.startswith("gpu-check-train") for n in names), names
    assert sum(r.data.tags.get("mlflow.parentRunId") is not None for r in runs) == 4  # the sweep's trials
