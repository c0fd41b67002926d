"""Batches read ahead in a background thread, so that Parquet decoding overlaps the step on the device.

The readers are synchronous (pyarrow decodes a shard, numpy slices it). On a GPU the step is short and the reader
would leave the device idle between steps; on CUDA the batches are also pinned, so the loop's
`.to(device, non_blocking=True)` copies run asynchronously. The order of the batches is the reader's own: resume and
DDP sharding are unaffected.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

import torch

_END = object()


def _pin(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pin(v) for k, v in batch.items()}
    return batch


class Prefetcher:
    """Iterates `batches` in a daemon thread, at most `depth` batches ahead; the reader's errors surface in the
    consumer, at the batch where they happened."""

    def __init__(self, batches: Iterable[Any], depth: int = 2, pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iter(batches), pin), daemon=True,
                                        name="binsweep-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, it: Iterator[Any], pin: bool) -> None:
        try:
            for batch in it:
                if not self._put(_pin(batch) if pin else batch):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_END)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading ahead (a consumer that leaves early, e.g. on a NaN loss, does not leave a thread behind)."""
        self._stop.set()


def prefetch(batches: Iterable[Any], device: torch.device, depth: int = 2) -> Iterator[Any]:
    """`batches` read `depth` ahead in a background thread; pinned when they go to a CUDA device."""
    return iter(Prefetcher(batches, depth=depth, pin=device.type == "cuda"))
