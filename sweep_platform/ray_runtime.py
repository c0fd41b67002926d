"""Connecting to Ray: the cluster in RAY_ADDRESS, or an embedded local one (dashboard on, token auth) by default.

The dashboard is not optional: Train V2 cleans up placement groups of stopped trials through the State API, and
sweeps hang without it (reference/platform.md §1.5). Ray 2.60 turns on token authentication for local clusters;
`ray.init` creates the token itself, and clients such as `ray job submit` need RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import logging
import os

from sweep_platform import paths


def local_cpus() -> int:
    """Logical CPUs of the embedded cluster: at least 4, so a 2-worker trial plus its driver fits on a 2-core laptop.

    Ray's CPU counts are for scheduling only; torch threads are set per worker from OMP_NUM_THREADS.
    """
    return int(os.environ.get("BINSWEEP_RAY_CPUS", max(4, os.cpu_count() or 1)))


def ensure_ray(quiet: bool = True) -> dict:
    """Initialise Ray once per process; returns the cluster's resources."""
    import ray

    if not ray.is_initialized():
        # Tune/Train V2 in one process; the driver-function pattern needs no V1 shims.
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        kwargs = dict(log_to_driver=not quiet, logging_level=logging.WARNING if quiet else logging.INFO)
        address = os.environ.get("RAY_ADDRESS")
        if address:
            # a submitted job already carries its runtime environment (working dir, env vars)
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=local_cpus(), include_dashboard=True, dashboard_host="127.0.0.1",
                     # workers see the driver's BINSWEEP_HOME, so relative paths mean the same everywhere
                     runtime_env={"env_vars": {"BINSWEEP_HOME": str(paths.home())}}, **kwargs)
    return ray.cluster_resources()


def storage_path() -> str:
    """Where Ray keeps runs and checkpoints: BINSWEEP_RAY_STORAGE (shared storage on a cluster) or runs/ray."""
    return os.environ.get("BINSWEEP_RAY_STORAGE") or str(paths.runs_dir() / "ray")
