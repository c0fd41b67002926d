"""Where each process of a sweep runs, and how many trials the cluster holds at once.

Three kinds of process, three places (cluster/README.md, "Placement"):
    sweep driver     Tune + Optuna + the MLflow callback, one per sweep: the Ray job's entrypoint, pinned to the head
                     with the custom resource `sweep_driver` (jobs.py asks for it)
    trial            a single-worker trial trains in its own Tune actor, which holds its worker's CPUs and GPUs; a
                     multi-worker trial's actor only drives a Train run and holds one `trial_driver` slot and no CPU,
                     so it runs on the head, which alone offers those slots, and never takes a CPU that a GPU node's
                     worker needs (on a 4-vCPU, 1-GPU node one CPU taken by a driver strands the GPU)
    evaluation       in the trial's own actor; for multi-worker (or ASHA-stopped) trials a Ray task with one worker's
                     resources, so it runs where such a worker fits

`trials_at_once` sizes `concurrency: auto` from the largest the cluster can become, not only from the nodes that are
up: the cloud recipes start with no GPU node at all and the autoscaler adds them when trials ask.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from sweep_platform.errors import BinsweepError
from sweep_platform.sweep_spec import SweepSpec

SWEEP_DRIVER = "sweep_driver"
TRIAL_DRIVER = "trial_driver"
# Slots the head offers: trial drivers are idle between their workers' reports, so their count is not a CPU budget.
TRIAL_DRIVER_SLOTS = 1000
# What an autoscaling cluster can grow to, when neither Ray's GCS nor a `ray up` bootstrap config tells (KubeRay's
# autoscaler v1, the rehearsal cluster): JSON, e.g. {"CPU": 36, "GPU": 8}.
MAX_RESOURCES_ENV = "BINSWEEP_MAX_RESOURCES"
# Where `ray up` leaves the autoscaler's config on the head (cluster/aws-gpu.yaml passes it to `ray start --head`).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


class ClusterTooSmallError(BinsweepError, ValueError):
    """One trial needs more than the Ray cluster has."""


def head_resources() -> dict[str, float]:
    """The custom resources of the node that runs sweep drivers (the embedded cluster's only node)."""
    return {SWEEP_DRIVER: 1, TRIAL_DRIVER: TRIAL_DRIVER_SLOTS}


def trial_resources(spec: SweepSpec, driver_slots: bool = True) -> dict[str, float]:
    """What one trial's Tune actor holds: a single-worker trial trains in it (its worker's CPUs and GPUs); a
    multi-worker trial's actor only drives a Train run whose workers hold their own. `driver_slots`: the cluster
    offers `trial_driver` (else the driver takes a CPU wherever one is free, as on clusters set up by hand)."""
    r = spec.resources
    if r.workers == 1:
        return {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}
    return {"CPU": 0, TRIAL_DRIVER: 1} if driver_slots else {"CPU": 1}


def trial_footprint(spec: SweepSpec, driver_slots: bool = True) -> dict[str, float]:
    """Everything one trial takes from the cluster: its actor plus, with several workers, the worker group."""
    r = spec.resources
    if r.workers == 1:
        return trial_resources(spec)
    driver = trial_resources(spec, driver_slots)
    out = {"CPU": r.workers * r.cpus_per_worker + driver["CPU"],
           **({"GPU": r.workers * r.gpus_per_worker} if r.gpus_per_worker else {})}
    if TRIAL_DRIVER in driver:
        out[TRIAL_DRIVER] = driver[TRIAL_DRIVER]
    return out


def offers_driver_slots(cluster: dict[str, float], ceiling: dict[str, float] | None = None) -> bool:
    return cluster.get(TRIAL_DRIVER, 0) > 0 or (ceiling or {}).get(TRIAL_DRIVER, 0) > 0


def max_cluster_resources() -> dict[str, float] | None:
    """What the cluster can grow to; None when nothing says (a fixed cluster is what is up). In order: Ray's GCS
    cluster config (autoscaler v2), the `ray up` bootstrap config on the head, BINSWEEP_MAX_RESOURCES."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
        if found:
            return dict(found)
    except Exception:  # noqa: BLE001 - no GCS config (autoscaler v1, KubeRay v1, a fixed cluster)
        pass
    path = Path(os.path.expanduser(os.environ.get("BINSWEEP_AUTOSCALING_CONFIG", BOOTSTRAP_CONFIG)))
    if path.is_file():
        import yaml

        try:
            return bootstrap_ceiling(yaml.safe_load(path.read_text()))
        except (ValueError, TypeError, AttributeError, yaml.YAMLError):
            pass  # not an autoscaler config we understand: fall through
    return env_ceiling()


def env_ceiling() -> dict[str, float] | None:
    text = os.environ.get(MAX_RESOURCES_ENV)
    if not text:
        return None
    try:
        value = json.loads(text)
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
            raise ValueError
    except ValueError:
        raise ClusterTooSmallError(f"{MAX_RESOURCES_ENV}={text!r}: expected a JSON object of resource amounts, e.g. "
                                   '{"CPU": 36, "GPU": 8}') from None
    return {str(k): float(v) for k, v in value.items()}


def bootstrap_ceiling(config: dict) -> dict[str, float] | None:
    """The resources of a `ray up` cluster at its largest: the head plus, per resource, the worker types richest in
    it filled up to their own and the cluster's max_workers."""
    types = config.get("available_node_types") or {}
    head = types.get(config.get("head_node_type"), {})
    workers = [t for name, t in types.items() if name != config.get("head_node_type")]
    if not types:
        return None
    total_max = int(config.get("max_workers", sum(int(t.get("max_workers", 0)) for t in workers)))
    keys = {k for t in types.values() for k in (t.get("resources") or {})}
    out = {}
    for key in keys:
        amount = float((head.get("resources") or {}).get(key, 0))
        left = total_max
        for t in sorted(workers, key=lambda t: -float((t.get("resources") or {}).get(key, 0))):
            n = min(left, int(t.get("max_workers", 0)))
            amount += n * float((t.get("resources") or {}).get(key, 0))
            left -= n
        out[key] = amount
    return out


def trials_at_once(spec: SweepSpec, cluster: dict[str, float], ceiling: dict[str, float] | None = None) -> int:
    """Trials at once: the file's number, or as many as the cluster holds, counting what an autoscaling cluster can
    grow to (`ceiling`, per resource the larger of it and what is up now)."""
    if spec.concurrency != "auto":
        return int(spec.concurrency)
    need = trial_footprint(spec, offers_driver_slots(cluster, ceiling))
    have = {k: max(cluster.get(k, 0), (ceiling or {}).get(k, 0)) for k in need}
    n = min(math.floor(have[k] / v + 1e-9) for k, v in need.items() if v > 0)
    if n < 1:
        r = spec.resources
        want = " and ".join(f"{v:g} {k}s" for k, v in need.items() if v > 0)
        got = " and ".join(f"{have[k]:g} {k}s" for k, v in need.items() if v > 0)
        scope = "at its largest (autoscaler)" if ceiling else "now"
        driver = f" ({r.workers} workers + its driver)" if r.workers > 1 else ""
        raise ClusterTooSmallError(
            f"{spec.source}: resources: one trial needs {want}{driver} but the Ray cluster has {got} {scope}; lower "
            f"resources, or set concurrency explicitly if nodes will join that Ray cannot know of (or declare them: "
            f"{MAX_RESOURCES_ENV})")
    return min(n, spec.trials)
