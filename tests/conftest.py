import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them when pytest runs beside Ray later.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test writes under its own BINSWEEP_HOME, never into the checkout's runs/."""
    monkeypatch.setenv("BINSWEEP_HOME", str(tmp_path / "home"))
