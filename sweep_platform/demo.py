"""`binsweep demo`, which `make demo` runs: the whole product on the embedded defaults, in minutes on a laptop CPU.

    dataset (built from the sweep file when missing) -> sweep (Optuna TPE + ASHA, every trial an MLflow child run)
    -> leaderboard -> promote the best model to bast@champion through the gate -> predict held-out test clips
    written as WAV files -> how to open the MLflow UI and optuna-dashboard on what was written

Nothing here is demo-only machinery: each step calls what the `sweep`, `leaderboard`, `promote` and `predict`
commands call, so a demo that passes means those commands work on this machine.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sweep_platform import paths, tracking
from sweep_platform.errors import BinsweepError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = REPO / "search_spaces" / "bast_demo.yaml"


class DemoDataError(BinsweepError, ValueError):
    """The demo's dataset cannot give held-out clips to predict."""


@dataclass
class DemoClip:
    path: Path
    azimuth_deg: int
    sound_id: str


def write_test_clips(root: Path, out_dir: Path, n: int) -> list[DemoClip]:
    """n clips of the dataset's test split (sounds no trial trained on) as stereo 16-bit WAVs, at n different
    azimuths spread around the circle."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from trainables.localization import shards

    manifest = shards.load_manifest(root)
    files = manifest.shards("test")
    if not files:
        raise DemoDataError(f"{root}: the dataset has no test split to predict; rebuild it with a test_fraction > 0")
    table = pa.concat_tables(pq.read_table(f, columns=["sound_id", "azimuth_deg", "environment", "left", "right"])
                             for f in files)
    azimuths = np.asarray(table.column("azimuth_deg").to_numpy(), dtype=np.int64)
    wanted = sorted(set(azimuths.tolist()))
    wanted = [wanted[round(i * len(wanted) / n) % len(wanted)] for i in range(min(n, len(wanted)))]
    rows = [int(np.flatnonzero(azimuths == az)[0]) for az in wanted]
    picked = table.take(rows)
    waves = shards.read_waves(picked)  # [n, 2, S], channel 0 = left
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, (az, sound) in enumerate(zip(picked.column("azimuth_deg").to_pylist(),
                                        picked.column("sound_id").to_pylist())):
        path = out_dir / f"test_{i:02d}_az{int(az):03d}.wav"
        sf.write(str(path), waves[i].T, manifest.sample_rate, subtype="PCM_16")
        clips.append(DemoClip(path, int(az), str(sound)))
    return clips


def angular_error(a_deg: float, b_deg: float) -> float:
    d = abs(a_deg - b_deg) % 360.0
    return min(d, 360.0 - d)


def _executable(name: str) -> str:
    """The command beside this Python (e.g. .venv/bin/mlflow), relative to the working directory when inside it."""
    exe = Path(sys.executable).parent / name
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def ui_hints(experiment_id: str | None = None) -> list[str]:
    """How to browse what the demo wrote: the MLflow UI on its store (the experiment's runs, in the model-training
    view), optuna-dashboard on the study storage."""
    from sweep_platform.storage import optuna_storage

    uri = tracking.tracking_uri()
    if uri == tracking.embedded_uri():
        mlflow_line = (f"MLflow UI:        {_executable('mlflow')} ui --backend-store-uri {shlex.quote(uri)} "
                       f"--host 127.0.0.1 --port 5000   then open {tracking.ui_link('http://127.0.0.1:5000', experiment_id)}")
    else:
        mlflow_line = f"MLflow UI:        open {tracking.ui_link(tracking.redact(uri), experiment_id)}"
    storage = optuna_storage()
    return [mlflow_line,
            f"optuna-dashboard: {_executable('optuna-dashboard')} {shlex.quote(tracking.redact(storage))} "
            "--host 127.0.0.1 --port 8080   then open http://127.0.0.1:8080"]


def run_demo(sweep_file: Path, name: str | None, *, clips: int, model_name: str | None,
             say: Callable[[object], None]) -> int:
    """Run the demo; returns the process exit code (0 when every step worked)."""
    from rich.markup import escape

    from sweep_platform import leaderboard as lb
    from sweep_platform.prediction import predict_files
    from sweep_platform.promotion import PromotionRefused, promote
    from sweep_platform.sweep_file import load_sweep
    from sweep_platform.sweep import default_name, ensure_dataset, start_sweep

    spec = load_sweep(sweep_file)
    name = name or default_name(spec)
    say(f"[bold]1/4 sweep[/bold] {sweep_file} as [bold]{name}[/bold]: {spec.trials} trials of {spec.trainable}, "
        f"{spec.metric} ({spec.mode}); Ray {'at ' + _ray_address() if _ray_address() else 'embedded (local)'}, "
        f"MLflow {tracking.redact(tracking.tracking_uri())}")
    try:
        outcome = start_sweep(sweep_file, name, progress=True, say=say)
    except KeyboardInterrupt:
        outcome = None
    if outcome is None or outcome.state == "interrupted":
        say(f"[yellow]sweep {name} interrupted.[/yellow] Continue it with: binsweep resume {name}")
        return 130
    if outcome.succeeded == 0:
        for line in lb.failed_lines(outcome.trials):
            say(f"failed: {escape(line)}")
        say("[red]no trial succeeded; nothing to promote[/red]")
        return 1

    outcome_experiment = tracking.client().get_run(outcome.parent_run_id).info.experiment_id
    say("\n[bold]2/4 leaderboard[/bold] (from MLflow)")
    rows = lb.leaderboard(name)
    say(lb.to_table(rows, title=f"sweep {name}"))
    for line in lb.failed_lines(rows):
        say(f"[red]failed[/red] {escape(line)}")

    say("\n[bold]3/4 promote[/bold] the best trial through the gate")
    registered = model_name or spec.trainable
    try:
        result = promote(name, model_name=registered, say=say)
        say(("promoted: " if result.promoted else "kept: ") + result.message)
    except PromotionRefused as exc:
        if not _has_alias(registered, "champion"):
            say(f"[red]promotion refused:[/red] {escape(exc.reason)}")
            return 2
        # a demo run again: the gate kept the champion of an earlier run, which the demo goes on with
        say(f"kept: {escape(exc.reason)}")
    model_uri = f"models:/{registered}@champion"

    say(f"\n[bold]4/4 predict[/bold] {clips} held-out test clips with {model_uri}")
    root = ensure_dataset(spec)
    written = write_test_clips(root, paths.runs_dir() / "demo" / name, clips)
    predictions = predict_files(model_uri, [c.path for c in written])
    errors = []
    for clip, pred in zip(written, predictions):
        if pred.error is not None:
            say(f"[red]{pred.error}[/red]")
            return 1
        azimuth = pred.values["azimuth_deg"]
        err = angular_error(azimuth, clip.azimuth_deg)
        errors.append(err)
        say(f"  {clip.path}  true {clip.azimuth_deg:3d}°  predicted {azimuth:6.1f}°  error {err:5.1f}°")
    say(f"  mean error {np.mean(errors):.1f}° over {len(errors)} clips (chance is 90°); "
        f"try: binsweep predict {model_uri} {shlex.quote(str(written[0].path))}")

    say("\n[bold]browse it[/bold]")
    for line in ui_hints(outcome_experiment):
        say("  " + line)
    say(f"  leaderboard:      binsweep leaderboard --sweep {name} --compare-paper")
    say(f"  report:           binsweep report {name} -o report.html")
    return 0


def _has_alias(model_name: str, alias: str) -> bool:
    try:
        tracking.client().get_model_version_by_alias(model_name, alias)
        return True
    except Exception:  # noqa: BLE001 - no such model or alias
        return False


def _ray_address() -> str | None:
    import os

    return os.environ.get("RAY_ADDRESS")
