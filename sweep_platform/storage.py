"""Where a sweep's state lives: the Ray storage path (local folder or s3://...), the Optuna study store, and the names
of the folders in them.

Layout, all under ray_runtime.storage_path() (runs/ray by default):
    <sweep>/                    the Tune experiment (experiment state, trials, searcher and callback state)
    <sweep>/binsweep-sweep.json what `resume` needs: the sweep file's text, the MLflow parent run
    <sweep>-trial-<trial id>/   one trial's checkpoints, checkpoint_<epoch>/ (a single-worker trial writes them
                                itself; a multi-worker trial's Train run of that name writes Train's own)
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from sweep_platform import paths, ray_runtime

CONTEXT_FILE = "binsweep-sweep.json"


def optuna_storage() -> str:
    """The Optuna study storage: BINSWEEP_OPTUNA_STORAGE, else sqlite:///<home>/runs/optuna.db (design.md)."""
    return os.environ.get("BINSWEEP_OPTUNA_STORAGE") or f"sqlite:///{paths.runs_dir() / 'optuna.db'}"


def optuna_rdb():
    """The study store as an Optuna RDBStorage (its SQLite folder created on first use)."""
    import optuna

    url = optuna_storage()
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}
                                      if url.startswith("sqlite") else {})


def study_exists(name: str) -> bool:
    """A study of that name would be continued by OptunaSearch (load_if_exists), mixing two sweeps' trials."""
    import optuna

    return name in optuna.study.get_all_study_names(optuna_rdb())


def sweep_dir(name: str) -> str:
    """The sweep's Tune experiment directory (a path, or a URI with BINSWEEP_RAY_STORAGE=s3://...)."""
    return f"{ray_runtime.storage_path().rstrip('/')}/{name}"


def train_run_name(sweep_name: str, trial_id: str) -> str:
    """The Train run of one trial: stable across restores (never a timestamp), so Train resumes it."""
    return f"{sweep_name}-trial-{trial_id}"


def filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def existing_sweeps() -> list[str]:
    """Names of the sweeps that `binsweep resume` can continue (experiment directories with Tune's tuner.pkl)."""
    import pyarrow.fs

    fs, root = filesystem(ray_runtime.storage_path())
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    names = [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]
    return sorted(n for n in names if exists(f"{sweep_dir(n)}/tuner.pkl"))


def write_text(directory: str, filename: str, text: str) -> None:
    fs, p = filesystem(directory)
    fs.create_dir(p, recursive=True)
    with fs.open_output_stream(f"{p}/{filename}") as f:
        f.write(text.encode())


def read_text(directory: str, filename: str) -> str:
    fs, p = filesystem(directory)
    with fs.open_input_stream(f"{p}/{filename}") as f:
        return f.read().decode()


def trial_checkpoints(sweep_name: str, trial_id: str) -> list[tuple[int, str, dict]]:
    """(epoch, path, metrics) of the checkpoints a trial's Train run still keeps, oldest first (the loop writes each
    checkpoint's epoch and metrics into its config file)."""
    return [(epoch, path, meta.get("metrics", {})) for epoch, path, meta in _checkpoint_configs(sweep_name, trial_id)]


def trial_history(sweep_name: str, trial_id: str) -> dict[int, tuple[dict, str | None]]:
    """Every epoch's metrics of a trial, by epoch, with the path of its checkpoint when Train still keeps it (None
    when num_to_keep deleted it): the loop keeps the whole history in each checkpoint, so the newest one knows every
    epoch; a kept checkpoint from an older binsweep (no history) still gives its own."""
    out: dict[int, tuple[dict, str | None]] = {}
    kept = _checkpoint_configs(sweep_name, trial_id)
    for _, _, meta in kept:
        for h in meta.get("history", []):
            if "epoch" in h:
                out[int(h["epoch"])] = (dict(h), None)
    for epoch, path, meta in kept:
        out[epoch] = (dict(meta.get("metrics", {})), path)
    return out


def run_dir(sweep_name: str, trial_id: str) -> str:
    """The folder (or URI) of a trial's checkpoints."""
    return f"{ray_runtime.storage_path().rstrip('/')}/{train_run_name(sweep_name, trial_id)}"


def checkpoint_path(sweep_name: str, trial_id: str, epoch: int) -> str:
    """Where a single-worker trial's checkpoint of `epoch` goes (a path, or a URI on object storage)."""
    return f"{run_dir(sweep_name, trial_id)}/checkpoint_{epoch:06d}"


def write_checkpoint(checkpoint, sweep_name: str, trial_id: str) -> str:
    """Persist a `trainables.loop.CheckpointData` as <run dir>/checkpoint_<epoch>; returns its path.

    Written to a local folder first, then moved (local storage) or uploaded file by file with config.json last
    (object storage), so a reader never takes a half-written folder for a checkpoint: it needs config.json. A
    replayed epoch replaces its own folder."""
    import shutil
    import tempfile

    import pyarrow.fs

    fs, path = filesystem(checkpoint_path(sweep_name, trial_id, checkpoint.epoch))
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=Path(path).parent))
        checkpoint.write(staging)
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
        return path
    from trainables.loop import CONFIG_FILE

    with tempfile.TemporaryDirectory(prefix="binsweep-ckpt-") as d:
        checkpoint.write(Path(d))
        fs.create_dir(path, recursive=True)
        files = sorted(Path(d).iterdir(), key=lambda f: f.name == CONFIG_FILE)  # config.json last
        for f in files:
            pyarrow.fs.copy_files(str(f), f"{path}/{f.name}", destination_filesystem=fs)
    return path


def delete_checkpoint(path: str) -> None:
    """Remove a checkpoint folder given as `trial_checkpoints` names it (a path inside the storage filesystem)."""
    fs, _ = filesystem(ray_runtime.storage_path())
    try:
        fs.delete_dir(path)
    except OSError:
        pass  # already gone


def _checkpoint_configs(sweep_name: str, trial_id: str) -> list[tuple[int, str, dict]]:
    import pyarrow.fs

    from trainables.loop import CONFIG_FILE

    fs, folder = filesystem(run_dir(sweep_name, trial_id))
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []
    out = []
    for info in infos:
        if info.type != pyarrow.fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{CONFIG_FILE}") as f:
                meta = json.loads(f.read().decode())
            out.append((int(meta["epoch"]), info.path, meta))
        except (OSError, ValueError, KeyError):
            continue  # being written, or deleted by Train's num_to_keep meanwhile
    return sorted(out, key=lambda x: x[0])


@contextlib.contextmanager
def checkpoint_dir(path: str):
    """A checkpoint as a local directory: itself on local storage, a download from shared storage otherwise."""
    if Path(path).is_dir():
        yield path
        return
    import ray.train

    fs, _ = filesystem(ray_runtime.storage_path())
    with ray.train.Checkpoint(path, filesystem=fs).as_directory() as d:
        yield d
