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
    for command in ("version", "demo"):
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


def test_unknown_preset_is_a_clear_usage_error():
    res = runner.invoke(app, ["demo", "--preset", "huge", "--epochs", "1", "--sounds", "4"])
    assert res.exit_code == 2
    assert "unknown BAST preset 'huge'" in res.output and "bast_tiny" in res.output


def test_bad_choice_is_rejected_by_the_parser():
    res = runner.invoke(app, ["demo", "--integration", "multiply"])
    assert res.exit_code == 2
    assert "multiply" in res.output
