import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from sweep_platform.cli import app

BINSWEEP = Path(sys.executable).parent / "binsweep"
runner = CliRunner()


def test_console_script_help_lists_commands():
    res = subprocess.run([str(BINSWEEP), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for command in ("version", "demo", "data", "train", "sweep", "resume", "submit", "leaderboard", "report",
                    "promote", "models", "predict", "binauralize"):
        assert command in res.stdout


def test_version_prints_the_stack():
    res = subprocess.run([str(BINSWEEP), "version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    assert set(lines) == {"binsweep", "torch", "ray", "mlflow", "optuna"}
    assert lines["torch"].startswith("2.11") and lines["ray"] == "2.60.0" and lines["mlflow"] == "3.17.2"
    assert lines["optuna"].startswith("5.0")


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "sweep_platform", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "demo" in res.stdout


def test_demo_with_a_missing_sweep_file_is_a_clear_usage_error(tmp_path):
    res = runner.invoke(app, ["demo", "--sweep", str(tmp_path / "nowhere.yaml")])
    assert res.exit_code == 2, res.output
    assert "nowhere.yaml" in res.output.replace("\n", "")


def test_demo_with_a_bad_sweep_file_names_the_key_and_starts_nothing(tmp_path):
    bad = tmp_path / "bad_demo.yaml"
    bad.write_text("name: bad_demo\ntrainable: bast\ntrials: 2\nscheduler: {type: sometimes}\n")
    res = runner.invoke(app, ["demo", "--sweep", str(bad)])
    assert res.exit_code == 2, res.output
    assert "bad_demo.yaml" in res.output and "scheduler" in res.output
    assert "1/4 sweep" not in res.output  # refused before the sweep began
