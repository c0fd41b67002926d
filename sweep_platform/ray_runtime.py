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


def running_cluster() -> str | None:
    """The cluster this process should join: RAY_ADDRESS, else one that `ray start` started on this machine (a `ray
    up` or KubeRay head, where jobs are not the only way in and RAY_ADDRESS is often unset), else None."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return address
    from ray._private import services

    # what a bare ray.init() would join: the address `ray start --head` left in <RAY_TMPDIR or /tmp>/ray
    return services.canonicalize_bootstrap_address(None)


def ensure_ray(quiet: bool | None = None) -> dict:
    """Initialise Ray once per process; returns the cluster's resources.

    Workers' output reaches the driver (log_to_driver: tracebacks, Tune's warnings), less the lines that
    sweep_platform.quiet drops; `quiet` None means: unless -v / BINSWEEP_DEBUG=1."""
    import ray

    from sweep_platform import quiet as _quiet

    if quiet is None:
        quiet = not _quiet.verbose()
    if not ray.is_initialized():
        # Tune/Train V2 in one process; the driver-function pattern needs no V1 shims.
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        _quiet.install()
        _quiet.install_ray_filter()
        kwargs = dict(log_to_driver=True, logging_level=logging.WARNING if quiet else logging.INFO)
        address = running_cluster()
        if address:
            # a submitted job already carries its runtime environment (working dir, env vars); num_cpus and
            # resources belong to the nodes, and Ray refuses them when joining a cluster
            ray.init(address=address, **kwargs)
        else:
            from sweep_platform.placement import head_resources

            ray.init(num_cpus=local_cpus(), include_dashboard=True, dashboard_host="127.0.0.1",
                     resources=head_resources(),  # the one node is the head: sweep and trial drivers live here
                     # workers see the driver's BINSWEEP_HOME, so relative paths mean the same everywhere
                     runtime_env={"env_vars": {"BINSWEEP_HOME": str(paths.home()), **_quiet.worker_env()}},
                     **kwargs)
    return ray.cluster_resources()


def storage_path() -> str:
    """Where Ray keeps runs and checkpoints: BINSWEEP_RAY_STORAGE (shared storage on a cluster) or runs/ray."""
    return os.environ.get("BINSWEEP_RAY_STORAGE") or str(paths.runs_dir() / "ray")
