"""README's "Bring your own model" example, run as written: its Python block becomes a package, its TOML block the
package's entry point (an installed distribution's dist-info, which is what `pip install` writes), and binsweep
finds, lists and trains it like its own trainables, with no change to the platform."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweep_platform import paths, tracking
from test_sweep import DATASET_BUILD
from trainables import registry

REPO = Path(__file__).resolve().parents[1]
BINSWEEP = str(Path(sys.executable).with_name("binsweep"))


def _block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- byo-model:{marker} -->\s*```\w+\n(.*?)```", text, re.S)
    assert found, f"README.md has no block after <!-- byo-model:{marker} -->"
    return found.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example as an installed distribution on a path of its own."""
    site = tmp_path_factory.mktemp("site")
    (site / "my_localizer").mkdir()
    (site / "my_localizer" / "__init__.py").write_text(_block("py"))
    group, entry = re.search(r'\[project\.entry-points\."([^"]+)"\]\s*\n(\S+ = "[^"]+")', _block("toml")).groups()
    dist = site / "my_localizer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my_localizer\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry.replace(chr(34), '')}\n")
    return site


@pytest.fixture
def on_path(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.setattr(registry, "_ENTRY_POINTS", None)  # discover again, with the example installed
    yield installed
    registry.unregister_trainable("my_localizer")
    registry._ENTRY_POINTS = None


def test_the_example_is_found_through_its_entry_point(on_path):
    spec = registry.get_trainable("my_localizer")
    assert registry.trainable_source("my_localizer") == "my_localizer 0.1"
    assert "my_localizer" in registry.known_trainables() and {"bast", "cnn_loc"} <= set(registry.known_trainables())
    config = spec.config_type()
    model = spec.build_model(config)
    assert tuple(model(spec.example_input(config)).shape) == (1, 2)


@pytest.mark.slow
def test_the_example_trains_on_ray_and_is_listed_by_the_cli(installed, tmp_path):
    from trainables.localization.builder import LocalizationBuildConfig, build

    root = paths.home() / "data" / "sweep_loc"
    if not (root / "manifest.json").is_file():
        build(LocalizationBuildConfig.model_validate(DATASET_BUILD), root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([BINSWEEP, "trainables", "--format", "json"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "my_localizer" in {t["name"] for t in json.loads(listed.stdout)}

    config = tmp_path / "my.yaml"
    config.write_text("model: {hidden: 32}\ntrain: {epochs: 2, batch_size: 16, lr: 3.0e-3, precision: fp32}\n"
                      f"data: {{root: {root}}}\n")
    run = subprocess.run([BINSWEEP, "train", "my_localizer", "--config", str(config), "--name", "byo-run"],
                         env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    c = tracking.client()
    found = c.search_runs([c.get_experiment_by_name("binsweep-my_localizer").experiment_id],
                          filter_string="attributes.run_name = 'byo-run'")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert 0 <= found[0].data.metrics["test_ad_deg"] <= 180  # evaluated through the spec, as BAST is
