"""What trainables' own CLI commands print with (they never import the platform): one console and the progress bar
of dataset builds and imports."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console()


def progress_bar(description: str) -> Progress:
    """A bar for `build(..., progress=...)`: open it, add a task, pass `lambda done, total: bar.update(...)`."""
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def print_manifest(manifest, details: str = "") -> None:
    """One line for a built dataset: its folder, clips per split, `details` and its fingerprint."""
    counts = manifest.data["counts"]
    parts = ", ".join(f"{s} {counts[s]['total']}" for s in ("train", "val", "test") if s in counts)
    console.print(f"{manifest.root}: {parts} clips; {details + '; ' if details else ''}fingerprint "
                  f"{manifest.fingerprint[:16]}", highlight=False)
