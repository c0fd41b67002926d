"""cnn_loc, the CNN localization baseline: shapes, weight sharing, interaural integration, config validation, its
TrainableSpec, the shared localization recipe and BAST's evaluation on a tiny generated dataset. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainables.bast.config import preset as bast_preset
from trainables.bast.evaluate import evaluate_spec, has_attention_maps
from trainables.bast.model import BAST, count_parameters
from trainables.bast.recipe import BASTRecipe
from trainables.cnn_loc import CNNLocConfig, preset
from trainables.cnn_loc.model import CNNLoc
from trainables.localization.builder import LocalizationBuildConfig, build
from trainables.localization.dataset import BUILDER
from trainables.localization.predict import PREDICTOR
from trainables.localization.recipe import LocalizationRecipe
from trainables.registry import get_trainable

# Stubs and untrained models predict nearly one direction: hemifield differences with zero spread make scipy warn.
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")

SHARINGS = ("SP", "NSP")
INTEGRATIONS = ("add", "sub", "concat")


def tiny(**over) -> CNNLoc:
    torch.manual_seed(0)
    return CNNLoc(preset("cnn_loc_tiny", **over))


def spectrograms(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 2, 129, 61, generator=torch.Generator().manual_seed(1))


def swap_ears(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1)


@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_output_and_feature_shapes(sharing, integration):
    model = tiny(sharing=sharing, integration=integration).eval()
    x = spectrograms()
    cfg = model.cfg
    channels = cfg.ear_channels[-1] * (2 if integration == "concat" else 1)
    assert model.integrated(x).shape == (3, channels, 129 // 4, 61 // 4)  # two ear blocks, each pooling by 2
    out = model(x)
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def test_wrong_input_shape_is_clear():
    with pytest.raises(ValueError, match=r"expects \[B, 2, F, T\].*\(3, 1, 129, 61\)"):
        tiny()(torch.zeros(3, 1, 129, 61))


def test_sp_shares_the_ear_stream_and_nsp_does_not():
    sp, nsp = tiny(sharing="SP"), tiny(sharing="NSP")
    assert sp.stream_right is sp.stream_left
    assert nsp.stream_right is not nsp.stream_left
    stream = count_parameters(nsp.stream_left)
    assert count_parameters(nsp) - count_parameters(sp) == stream > 0
    left = {p.data_ptr() for p in nsp.stream_left.parameters()}
    assert not left & {p.data_ptr() for p in nsp.stream_right.parameters()}
    # a gradient step through SP moves the one stream both ears use
    sp(spectrograms()).sum().backward()
    assert all(p.grad is not None for p in sp.stream_right.parameters())


def test_interaural_integration_under_swapped_ears():
    """With one ear stream (SP) swapping the ears swaps the stream outputs, so in eval mode (fixed BatchNorm
    statistics) sub is exactly antisymmetric and add symmetric. Only the integration: the center stack's ReLUs make
    the output neither. NSP has two different streams, so no such relation holds."""
    x = spectrograms()
    sub = tiny(sharing="SP", integration="sub").eval()
    with torch.no_grad():
        torch.testing.assert_close(sub.integrated(swap_ears(x)), -sub.integrated(x))
    add = tiny(sharing="SP", integration="add").eval()
    with torch.no_grad():
        torch.testing.assert_close(add.integrated(swap_ears(x)), add.integrated(x))
    concat = tiny(sharing="SP", integration="concat").eval()
    with torch.no_grad():
        z, z_swapped = concat.integrated(x), concat.integrated(swap_ears(x))
    c = concat.cfg.ear_channels[-1]
    torch.testing.assert_close(z_swapped, torch.cat([z[:, c:], z[:, :c]], dim=1))
    nsp = tiny(sharing="NSP", integration="sub").eval()
    with torch.no_grad():
        assert not torch.allclose(nsp.integrated(swap_ears(x)), -nsp.integrated(x))


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError, match="ear_chanels"):
        CNNLocConfig.model_validate({"model": {"ear_chanels": [8]}})
    with pytest.raises(ValidationError, match="epoch"):
        CNNLocConfig.model_validate({"train": {"epoch": 3}})
    with pytest.raises(ValidationError, match="sharing"):
        CNNLocConfig.model_validate({"model": {"sharing": "shared"}})
    with pytest.raises(ValidationError, match="kernel_size must be odd"):
        CNNLocConfig.model_validate({"model": {"kernel_size": 4}})
    with pytest.raises(ValidationError, match="use fewer blocks"):
        CNNLocConfig.model_validate({"model": {"ear_channels": [4, 4, 4], "center_channels": [4, 4, 4]}})
    with pytest.raises(ValidationError, match="greater than 0"):
        CNNLocConfig.model_validate({"model": {"center_channels": [8, 0]}})
    with pytest.raises(ValidationError, match="model.preset 'cnn_loc_huge' is unknown"):
        CNNLocConfig.model_validate({"model": {"preset": "cnn_loc_huge"}})


def test_preset_with_overrides():
    cfg = CNNLocConfig.model_validate({"model": {"preset": "cnn_loc_tiny", "sharing": "SP", "dropout": 0.1}})
    assert cfg.model == preset("cnn_loc_tiny", sharing="SP", dropout=0.1)
    assert cfg.model.ear_channels == (8, 16)


def test_spec_is_registered_with_bast_metrics_and_the_localization_services():
    spec, bast = get_trainable("cnn_loc"), get_trainable("bast")
    assert spec.name == "cnn_loc" and spec.config_type is CNNLocConfig
    assert (spec.primary_metric, spec.mode) == ("val_ad_deg", "min")
    assert spec.epoch_metrics == bast.epoch_metrics and spec.test_metrics == bast.test_metrics
    assert spec.key_params == ("model.sharing", "model.integration", "loss.name")
    assert spec.dataset_builder is BUILDER and spec.predictor is PREDICTOR
    assert {"cnn_loc_tiny", "cnn_loc_small"} <= set(spec.presets)
    cfg = CNNLocConfig.model_validate({"model": {"preset": "cnn_loc_tiny"}})
    assert isinstance(spec.build_model(cfg), CNNLoc)
    assert spec.example_input(cfg).shape == (1, 2, 129, 61)
    # NI-CNN* of the BAST paper's Table 1: by integration and loss, the same for every sharing
    row = {"paper_ad_deg": 1.85, "paper_mse_ref": None}
    assert spec.paper.lookup({"model.sharing": "SP", "model.integration": "sub", "loss.name": "ad"}) == row
    assert spec.paper.lookup({"model.sharing": "NSP", "model.integration": "sub", "loss.name": "ad"}) == row
    assert spec.paper.lookup({"model.integration": "add", "loss.name": "hybrid"}) == {"paper_ad_deg": 3.53,
                                                                                       "paper_mse_ref": 0.033}
    assert spec.paper.lookup({"model.integration": "sub"}) is None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 8 sounds x 6 azimuths, anechoic: 2 test sounds (12 rows), the rest split into train and val per azimuth
    cfg = LocalizationBuildConfig(generated_sounds=8, azimuths=tuple(range(0, 360, 60)), environments=("anechoic",),
                                  test_fraction=0.25, shard_rows=16, seed=1)
    return build(cfg, tmp_path_factory.mktemp("cnn_loc") / "ds").root


def config(root, **model) -> CNNLocConfig:
    return CNNLocConfig.model_validate({"model": {"preset": "cnn_loc_tiny", **model}, "data": {"root": str(root)},
                                        "train": {"batch_size": 8, "lr": 3e-3}, "loss": {"name": "hybrid"}})


def test_recipe_loss_and_validation_sums(dataset):
    recipe = get_trainable("cnn_loc").recipe(config(dataset))
    assert isinstance(recipe, LocalizationRecipe)
    model = recipe.build_model()
    assert isinstance(model, CNNLoc)
    assert recipe.steps_per_epoch(1) == len(list(recipe.batches("train", 0, 0, 1))) > 0
    batch = next(recipe.batches("train", 0, 0, 1))
    loss, n = recipe.loss(model, batch, torch.device("cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss) and n == len(batch["wave"]) == 8

    model.eval()
    sums = {}
    for batch in recipe.batches("val", 0, 0, 1):
        for name, (total, count) in recipe.validation_sums(model, batch, torch.device("cpu")).items():
            sums.setdefault(name, [0.0, 0])
            sums[name][0] += float(total)
            sums[name][1] += count
    assert set(sums) == {"val_loss", "val_ad_deg", "val_mse"}
    n_val = sums["val_ad_deg"][1]
    assert n_val > 0 and all(count == n_val for _, count in sums.values())
    assert 0 <= sums["val_ad_deg"][0] / n_val <= 180


def test_bast_recipe_is_the_shared_recipe_building_bast(dataset):
    from trainables.bast import BASTConfig

    recipe = BASTRecipe(BASTConfig.model_validate({"model": {"preset": "bast_tiny"}, "data": {"root": str(dataset)}}))
    assert isinstance(recipe, LocalizationRecipe) and isinstance(recipe.build_model(), BAST)


def test_a_few_steps_lower_the_loss(dataset):
    recipe = LocalizationRecipe(config(dataset), get_trainable("cnn_loc").build_model)
    torch.manual_seed(0)
    model = recipe.build_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.train.lr)
    batch = next(recipe.batches("train", 0, 0, 1))
    losses = []
    for _ in range(25):
        loss, _ = recipe.loss(model, batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_evaluate_spec_on_the_cnn_writes_no_rollout(dataset, tmp_path):
    cfg = config(dataset)
    model = get_trainable("cnn_loc").build_model(cfg)
    assert not has_attention_maps(model) and has_attention_maps(BAST(bast_preset("bast_tiny")))
    result = get_trainable("cnn_loc").evaluate(model, cfg, "test", out_dir=tmp_path)
    assert {"test_ad_deg", "test_mse", "test_ad_deg.anechoic"} <= set(result.metrics)
    assert 0 <= result.metrics["test_ad_deg"] <= 180
    assert "attention_rollout" not in result.files and not (tmp_path / "attention_rollout.png").exists()
    assert {"ad_per_azimuth", "predictions", "per_azimuth", "metrics"} <= set(result.files)
    assert len(result.per_sample_error) == 12 and "test split: 12 samples" in result.summary
    # the spec's evaluate is BAST's evaluate_spec, nothing of its own
    again = evaluate_spec(model, cfg, "test")
    assert again.metrics == pytest.approx(result.metrics)
