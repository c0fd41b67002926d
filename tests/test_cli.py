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


# ---------------------------------------------------------------------------------------------- the error boundary


def test_a_bug_keeps_its_traceback_and_exits_1(monkeypatch):
    from sweep_platform import trainables_cli

    def broken(name):
        return {}["no such key"]  # a plain KeyError: a bug, not a user's mistake

    monkeypatch.setattr(trainables_cli, "describe", broken)
    res = runner.invoke(app, ["trainables"])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)
    assert "error:" not in res.output  # no one-line message hiding it


def test_a_bug_prints_its_traceback_from_the_console_script():
    code = ("import sys\nfrom sweep_platform import cli, trainables_cli\n"
            "trainables_cli.describe = lambda name: {}['no such key']\n"
            "sys.argv = ['binsweep', 'trainables']\ncli.main()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "KeyError: 'no such key'" in res.stderr


def test_a_domain_error_is_its_message_the_next_step_and_its_exit_code(monkeypatch):
    from sweep_platform import trainables_cli
    from sweep_platform.errors import BinsweepError

    class Broken(BinsweepError, RuntimeError):
        exit_code = 1

    def refuse(name):
        raise Broken("the store is read-only", hint="set MLFLOW_TRACKING_URI to a writable store")

    monkeypatch.setattr(trainables_cli, "describe", refuse)
    res = runner.invoke(app, ["trainables"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "error: the store is read-only" in res.output
    assert "next: set MLFLOW_TRACKING_URI to a writable store" in res.output and "BINSWEEP_DEBUG=1" in res.output
    # BINSWEEP_DEBUG=1: the traceback of a domain error too
    res = runner.invoke(app, ["trainables"], env={"BINSWEEP_DEBUG": "1"})
    assert res.exit_code == 1 and isinstance(res.exception, Broken)


def test_an_unknown_trainable_says_where_to_look(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    res = runner.invoke(app, ["train", "no_such_model", "--config", str(config)])
    assert res.exit_code == 2, res.output
    assert "unknown trainable 'no_such_model'" in res.output and "binsweep trainables" in res.output


def test_ctrl_c_exits_130(monkeypatch):
    from sweep_platform import trainables_cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainables_cli, "describe", interrupted)
    res = runner.invoke(app, ["trainables"])
    assert res.exit_code == 130 and "interrupted" in res.output


def test_usage_errors_are_still_clicks():
    res = runner.invoke(app, ["leaderboard", "--top", "0"])
    assert res.exit_code == 2 and "--top" in res.output
    res = runner.invoke(app, ["leaderboard", "--format", "xml"])
    assert res.exit_code == 2 and "xml" in res.output
    res = runner.invoke(app, ["no-such-command"])
    assert res.exit_code == 2 and "No such command" in res.output


def test_a_value_error_is_a_users_mistake_only_when_a_trainable_raised_it():
    from sweep_platform.errors import USAGE_ERROR, explain
    from trainables.localization import nicnn

    try:
        nicnn.parse_name("not-a-nicnn-name.wav")
    except ValueError as exc:
        failure = explain(exc)
    assert failure is not None and failure.exit_code == USAGE_ERROR
    try:
        int("twelve")  # raised by Python itself, as the platform's own bugs are
    except ValueError as exc:
        assert explain(exc) is None


def test_a_trainable_command_reports_its_own_value_error_as_one_line(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a dataset")
    res = runner.invoke(app, ["data", "localization", "--out", str(tmp_path / "mine"), "--generated-sounds", "4"])
    assert res.exit_code == 2, res.output
    assert "is not a binsweep build folder" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------------------------- trainables' commands


def test_core_commands_never_load_a_trainable():
    code = ("import sys\nfrom sweep_platform.cli import app\n"
            "try:\n    app(['leaderboard', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('loaded:', sorted(m for m in sys.modules if m == 'torch' or m.startswith('trainables.bast')))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "loaded: []" in res.stdout


def test_a_command_two_trainables_share_is_mounted_once_and_a_clash_names_both(monkeypatch):
    from types import SimpleNamespace

    from sweep_platform import trainable_commands
    from trainables.registry import Command

    def shared():
        """Shared."""

    def mine():
        """Mine."""

    def theirs():
        """Theirs."""

    specs = {
        "one": [Command("shared", shared, group="data"), Command("solo", mine)],
        "two": [Command("shared", shared, group="data"), Command("solo", theirs)],
        "three": [Command("odd", mine, group="nowhere")],
    }

    def get_trainable(name):
        if name == "broken":
            raise ImportError("No module named 'broken_pkg'")
        return SimpleNamespace(commands=lambda services: specs[name])

    monkeypatch.setattr(trainable_commands, "known_trainables", lambda: ["one", "two", "three", "broken"])
    monkeypatch.setattr(trainable_commands, "get_trainable", get_trainable)
    contributed, problems = trainable_commands.collect()
    assert [(c.where, c.owners) for c in contributed] == [("binsweep data shared", ["one", "two"])]
    assert any("binsweep solo: trainables one and two define different commands" in p for p in problems)
    assert any("unknown group 'nowhere'" in p for p in problems)
    assert any("trainable broken does not load (ImportError" in p for p in problems)


def test_trainables_lists_every_installed_one_and_its_config():
    import json

    res = runner.invoke(app, ["trainables", "--format", "json"])
    assert res.exit_code == 0, res.output
    found = {t["name"]: t for t in json.loads(res.stdout)}
    assert {"bast", "binaural", "cnn_loc"} <= set(found)
    bast = found["bast"]
    assert bast["source"].startswith("binsweep ") and bast["primary_metric"] == "val_ad_deg" and bast["mode"] == "min"
    assert bast["fields"]["train.lr"] > 0 and "model.sharing" in bast["fields"]
    assert all("fields" in t or "error" in t for t in found.values())
    table = runner.invoke(app, ["trainables", "--fields"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "val_stft_dist (min)" in table.stdout and "model.sharing" in table.stdout


def test_a_trainable_that_does_not_load_is_listed_with_its_error(monkeypatch):
    import json

    import trainables.registry as registry

    real = registry.get_trainable

    def get_trainable(name):
        if name == "binaural":
            raise ImportError("No module named 'torchvision'")
        return real(name)

    monkeypatch.setattr(registry, "get_trainable", get_trainable)
    res = runner.invoke(app, ["trainables", "--format", "json"])
    assert res.exit_code == 0, res.output
    found = {t["name"]: t for t in json.loads(res.stdout)}
    assert found["binaural"]["error"] == "ImportError: No module named 'torchvision'"
    assert found["binaural"]["source"].startswith("binsweep ") and "fields" in found["bast"]
    table = runner.invoke(app, ["trainables"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "does not load: ImportError" in table.stdout
