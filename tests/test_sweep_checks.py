"""The sweep-file checks that need the trainable: key paths, values per field, metrics, references, grid, scheduler,
resources; every problem reported at once."""

import pytest
from sweep_cases import GOOD, assert_refused, write

from sweep_platform.configfile import ConfigError
from sweep_platform.sweep_file import load_sweep
from sweep_platform.sweep_spec import trial_config
from trainables.bast.config import BASTConfig


def test_grid_trials_default_to_and_must_equal_the_grid_size(tmp_path):
    grid_text = """\
trainable: bast
sampler: {type: grid}
scheduler: {type: none}
space:
  model.sharing: {choice: [SP, NSP]}
  loss.name: {choice: [mse, ad, hybrid]}
"""
    assert load_sweep(write(tmp_path, "g.yaml", grid_text)).trials == 6
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, "g7.yaml", grid_text + "trials: 7\n"))
    assert "g7.yaml: trials: 7 does not match the grid of 6 points (allowed: 6" in str(err.value)


def test_choice_values_are_typed_by_the_config(tmp_path):
    # PyYAML 1.1 reads 1e-4 as a string; the loaded space holds the float the config would.
    text = GOOD.replace("train.lr: {float: [1.0e-5, 1.0e-3], log: true}", "train.lr: {choice: [1e-4, 1e-3]}")
    spec = load_sweep(write(tmp_path, "typed.yaml", text))
    assert spec.space["train.lr"].choice == [1e-4, 1e-3]


# (case, change to GOOD, substrings the message must hold besides the file name)
BAD = [
    ("space_key_path", lambda t: t.replace("model.sharing: {choice", "model.shareing: {choice"),
     ["space.model.shareing", "no field 'shareing'", "allowed:", "model.sharing", "model.layers_left"]),
    ("choice_value", lambda t: t.replace("[SP, NSP]", "[SP, XP]"),
     ["space.model.sharing.choice", "'XP'", "'SP' or 'NSP'"]),
    ("when_later_key", lambda t: t.replace("when: {loss.name: hybrid}", "when: {model.layers_left: 2}"),
     ["space.loss.alpha.when.model.layers_left", "defined after", "allowed:", "model.sharing, loss.name"]),
    ("when_unknown_key", lambda t: t.replace("when: {loss.name: hybrid}", "when: {loss.nam: hybrid}"),
     ["space.loss.alpha.when.loss.nam", "not a param", "model.sharing, loss.name"]),
    ("when_value", lambda t: t.replace("when: {loss.name: hybrid}", "when: {loss.name: hybird}"),
     ["space.loss.alpha.when.loss.name", "'hybird'", "mse, ad, hybrid"]),
    ("same_as_later", lambda t: t.replace("same_as: model.layers_left", "same_as: train.lr"),
     ["space.model.layers_right.else.same_as", "train.lr is defined after", "model.layers_left"]),
    ("unknown_metric", lambda t: t + "metric: val_acc\n", ["metric", "'val_acc'", "val_ad_deg", "val_mse"]),
    ("first_objective", lambda t: t + "objectives: [{metric: params_m}, {metric: val_ad_deg}]\n",
     ["objectives[0].metric", "'params_m'", "ASHA", "val_ad_deg"]),
    ("grace_over_max", lambda t: t.replace("grace_epochs: 1", "grace_epochs: 5"),
     ["scheduler.grace_epochs", "5 exceeds scheduler.max_epochs 4", "allowed: 1..4"]),
    ("grid_float_range", lambda t: t.replace("trials: 4", "sampler: {type: grid}"),
     ["space.train.lr", "float range", "allowed with grid: choice, fixed, same_as"]),
    ("grid_conditional_choice", lambda t: t.replace("trials: 4", "sampler: {type: grid}").replace(
        "loss.alpha: {float: [0.1, 0.9]", "loss.alpha: {choice: [0.3, 0.7]"),
     ["space.loss.alpha.when", "repeat grid points", "allowed with grid"]),
    ("base_field", lambda t: t.replace("batch_size: 16", "batch_sise: 16"),
     ["base.train.batch_sise", "unknown key", "batch_size"]),
    ("base_value", lambda t: t.replace("bast_tiny", "bast_huge"), ["base", "bast_huge", "bast_tiny"]),
    ("section_not_value", lambda t: t + "  model: {fixed: 1}\n", ["space.model", "section", "model.sharing"]),
    ("float_on_int", lambda t: t + "  model.heads: {float: [1, 4]}\n",
     ["space.model.heads.float", "integer field", "allowed: int"]),
    ("range_out_of_field", lambda t: t + "  model.dropout: {float: [0.0, 1.0]}\n",
     ["space.model.dropout.float", "1.0", "less than 1"]),
    ("max_over_epochs", lambda t: t.replace("max_epochs: 4", "max_epochs: 8"),
     ["scheduler.max_epochs", "exceeds train.epochs 4", "allowed: 1..4"]),
    ("trials_missing", lambda t: t.replace("trials: 4\n", ""), ["trials", "required", "positive integer"]),
    ("batch_vs_workers", lambda t: t + "resources: {workers: 3}\n",
     ["base.train.batch_size", "not divisible by resources.workers 3", "multiple of 3"]),
]


@pytest.mark.parametrize("case, change, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_files_name_the_file_the_key_and_what_is_allowed(tmp_path, case, change, expected):
    assert_refused(tmp_path, case, change, expected)


def test_all_problems_are_reported_at_once(tmp_path):
    text = (GOOD.replace("[SP, NSP]", "[SP, XP]").replace("grace_epochs: 1", "grace_epochs: 5")
            + "metric: val_acc\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, "many.yaml", text))
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(str(tmp_path / "many.yaml")) for line in lines)


def test_cross_field_rules_are_left_to_sampling_time(tmp_path):
    # SP with a free layers_right loads (each value is valid on its own) ...
    text = GOOD.replace(", when: {model.sharing: NSP}, else: {same_as: model.layers_left}", "")
    spec = load_sweep(write(tmp_path, "free.yaml", text))
    # ... and the trainable's config type rejects the mismatched trial.
    with pytest.raises(ValueError, match="layers_left"):
        BASTConfig.model_validate(trial_config(spec, {"model.sharing": "SP", "model.layers_left": 1,
                                                      "model.layers_right": 2}))


def test_dataset_build_is_checked_against_the_trainables_own_builder(tmp_path):
    """Each trainable brings its DatasetBuilder: a localization option in a binaural sweep is caught at load time."""
    text = """\
trainable: binaural
dataset: data/b
dataset_build: {scenes: 12, generated_sounds: 24}
trials: 2
"""
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, "b.yaml", text))
    assert "b.yaml: dataset_build.generated_sounds: unknown key" in str(err.value) and "scenes" in str(err.value)
    assert load_sweep(write(tmp_path, "ok.yaml", text.replace(", generated_sounds: 24", ""))).dataset_build == \
        {"scenes": 12}
