"""Shared by the sweep-file tests (test_sweep_file, test_sweep_checks, test_optuna_space): a valid sweep to break
one key at a time, the shipped files, and a writer."""

from pathlib import Path

import pytest

from sweep_platform.configfile import ConfigError
from sweep_platform.sweep_file import load_sweep

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
SHIPPED = ["bast_smoke.yaml", "bast_demo.yaml", "bast_paper_grid.yaml", "bast_tpe.yaml"]

# A valid sweep that the bad cases break one key at a time.
GOOD = """\
name: t
trainable: bast
dataset: data/loc_smoke
trials: 4
scheduler: {type: asha, grace_epochs: 1, max_epochs: 4}
base:
  model: {preset: bast_tiny}
  train: {epochs: 4, batch_size: 16, lr: 1e-3}
space:
  model.sharing: {choice: [SP, NSP]}
  loss.name: {choice: [mse, ad, hybrid]}
  loss.alpha: {float: [0.1, 0.9], when: {loss.name: hybrid}}
  model.layers_left: {int: [1, 3]}
  model.layers_right: {int: [1, 3], when: {model.sharing: NSP}, else: {same_as: model.layers_left}}
  train.lr: {float: [1.0e-5, 1.0e-3], log: true}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_refused(tmp_path: Path, case: str, change, expected: list[str]) -> None:
    """GOOD broken by `change` is refused with one message naming the file and holding every `expected` part."""
    path = write(tmp_path, f"bad_{case}.yaml", change(GOOD))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
