"""MLflow system metrics (CPU, memory, disk, network, and GPU where there is one) on a trial's own run, sampled in
the process that trains it, on whichever node that is.

MLflow samples with its SystemMetricsMonitor (psutil; the GPU through nvidia-ml-py) and logs `system/...` metrics
every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (default 10 here), and once more when the trial ends. Not through `mlflow.start_run(...,
log_system_metrics=True)`: that makes the run the process's active run, and the trial's own evaluation starts it
again to log the model. The trial's run is created by the sweep driver's callback when Tune starts the trial, so
the monitor waits for it on a thread instead of delaying the first epoch; a restarted trial goes on from the last
step it logged.
"""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger(__name__)
SAMPLING_INTERVAL_S = 10
JOIN_S = 10  # how long a trial's end waits for a monitor still looking for the trial's run


class TrialSystemMetrics:
    """Started beside a trial's training, stopped when it ends (`with TrialSystemMetrics(...):`)."""

    def __init__(self, parent_run_id: str, experiment_id: str, trial_id: str):
        self._args = (parent_run_id, experiment_id, trial_id)
        self._stop = threading.Event()
        self._monitor = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._start, name="binsweep-system-metrics", daemon=True)

    def __enter__(self) -> TrialSystemMetrics:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        # a trial shorter than the run lookup still gets its sample: wait (briefly) for the monitor to start
        self._thread.join(timeout=JOIN_S)
        with self._lock:
            monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()  # stops its thread and flushes what it logged
                # the samples since its last logging (all of them in a trial shorter than the interval)
                tail = monitor.aggregate_metrics()
                if not tail:  # stopped before its thread took a sample
                    monitor.collect_metrics()
                    tail = monitor.aggregate_metrics()
                if tail:
                    monitor.publish_metrics(tail)
                    monitor.mlflow_logger.flush()
            except Exception as e:  # noqa: BLE001 - metrics about the machine never fail a trial
                log.warning("system metrics: %s", e)

    def _start(self) -> None:
        from sweep_platform import tracking
        from sweep_platform.trial_eval import find_trial_run

        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            run = find_trial_run(*self._args, wait_s=JOIN_S)
            if run is None:
                return
            monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=SAMPLING_INTERVAL_S,
                                           resume_logging=True, node_id=socket.gethostname(),
                                           tracking_uri=tracking.tracking_uri())
            with self._lock:
                monitor.start()  # its first sample is taken at once, so even a short trial logs one
                self._monitor = monitor
        except Exception as e:  # noqa: BLE001 - e.g. psutil missing, MLflow unreachable: training goes on
            log.warning("system metrics off for trial %s: %s", self._args[2], e)
