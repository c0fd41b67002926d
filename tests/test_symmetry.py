"""Symmetry facts of BAST and of the data: what SP does under an ear swap, that the position embedding reaches the
tokens, and which datasets are mirror-symmetric (trainables.localization.symmetry)."""

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from trainables.bast.config import preset
from trainables.bast.model import BAST
from trainables.localization import shards, symmetry
from trainables.localization.builder import LocalizationBuildConfig, build
from trainables.localization.symmetry import add_floor_deg, check, mirror_symmetry, sp_notes, sub_floor_deg


def tiny_model(seed=0, **kw) -> BAST:
    torch.manual_seed(seed)
    # small but not trivial: 2 layers per encoder, learned position embedding so its rows differ at random
    return BAST(preset("bast_tiny", embed_dim=32, heads=2, dim_head=16, mlp_dim=64, layers_left=2, layers_right=2,
                       layers_center=2, **kw)).eval()


def spectrograms(n=3, seed=1) -> torch.Tensor:
    return torch.randn(n, 2, 129, 61, generator=torch.Generator().manual_seed(seed))  # [B, 2, F, T]


def swap(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1)  # (L, R) -> (R, L)


def integrated(model: BAST, x: torch.Tensor) -> torch.Tensor:
    """TE-C's input, the output of the interaural integration: [B, N, D or 2D]."""
    seen = []
    handle = model.integrate.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


# --------------------------------------------------------------------------------------------- position embedding


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_permuting_the_position_embedding_changes_the_output(kind):
    # Without `+ pos` the model would be blind to token order (attention and the mean pool are permutation
    # invariant), so a permuted table would give the same output to the last bit.
    model = tiny_model(pos_embedding=kind)
    x = spectrograms()
    with torch.no_grad():
        before = model(x)
        pos = model.token_embed.pos
        perm = torch.randperm(pos.shape[1], generator=torch.Generator().manual_seed(0))
        pos.copy_(pos[:, perm].clone())
        after = model(x)
    assert (before - after).abs().max() > 1e-3


def test_without_position_embedding_token_order_does_not_matter():
    # The control for the test above: with a zero table, shuffling the patch order leaves the output unchanged.
    model = tiny_model(pos_embedding="learned")
    x = spectrograms()
    with torch.no_grad():
        model.token_embed.pos.zero_()
        tokens = model.patch_embed(x[:, 0])
        perm = torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(0))
        enc = lambda t: model.encoder_left(model.token_embed(t))[0].mean(dim=1)  # noqa: E731
        torch.testing.assert_close(enc(tokens), enc(tokens[:, perm]), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- ear swap


def test_sp_add_is_exactly_ear_swap_invariant():
    model = tiny_model(sharing="SP", integration="add")
    x = spectrograms()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(swap(x)), atol=1e-6, rtol=0)
        assert (model(x) - model(x[[1, 2, 0]])).abs().max() > 1e-3  # and not constant: it does see the input


@pytest.mark.parametrize("integration", ["add", "sub", "concat"])
def test_nsp_breaks_the_ear_swap(integration):
    model = tiny_model(sharing="NSP", integration=integration)
    x = spectrograms()
    with torch.no_grad():
        assert (model(x) - model(swap(x))).abs().max() > 1e-3


def test_sp_sub_negates_under_a_swap_and_is_blind_when_the_ears_agree():
    model = tiny_model(sharing="SP", integration="sub")
    x = spectrograms()
    torch.testing.assert_close(integrated(model, swap(x)), -integrated(model, x), atol=1e-6, rtol=0)
    with torch.no_grad():
        assert (model(x) - model(swap(x))).abs().max() > 1e-3  # TE-C is not odd: the swap is seen
        # L = R (on mirror-symmetric data: 0° and 180°): TE-C gets all zeros, whatever the sound
        same = torch.stack([x[:, 0], x[:, 0]], dim=1)
        other = torch.stack([x[:, 1], x[:, 1]], dim=1) * 3.0
        assert integrated(model, same).abs().max() == 0
        torch.testing.assert_close(model(same), model(other), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(same)[0], model(same)[1], atol=1e-6, rtol=0)


def test_sp_concat_swaps_the_halves_and_is_not_invariant():
    model = tiny_model(sharing="SP", integration="concat")
    x = spectrograms()
    a, b = integrated(model, x), integrated(model, swap(x))
    D = a.shape[-1] // 2
    torch.testing.assert_close(b, torch.cat([a[..., D:], a[..., :D]], dim=-1), atol=1e-6, rtol=0)
    with torch.no_grad():
        assert (model(x) - model(swap(x))).abs().max() > 1e-3


def test_subtraction_sign_is_absorbed_by_the_weights():
    # The paper says right − left, the reference code (and binsweep) left − right. TE-C and the head with every
    # LayerNorm gain negated and every residual output projection negated compute on z exactly what the original
    # computes on −z, so both signs span the same models (and Adam, sign-equivariant per weight, trains them alike).
    model = tiny_model(sharing="NSP", integration="sub")
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        for block in flipped.encoder_center.blocks:
            for p in (block.norm1.weight, block.norm2.weight, block.attn.proj.weight, block.attn.proj.bias,
                      block.mlp.fc2.weight, block.mlp.fc2.bias):
                p.neg_()
        flipped.head[0].weight.neg_()
        z = torch.randn(2, 180, 32, generator=torch.Generator().manual_seed(3))
        original = model.head(model.encoder_center(-z)[0].mean(dim=1))
        absorbed = flipped.head(flipped.encoder_center(z)[0].mean(dim=1))
    torch.testing.assert_close(absorbed, original, atol=1e-5, rtol=1e-5)
    assert (original - model.head(model.encoder_center(z)[0].mean(dim=1))).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------- floors


def test_floors_by_hand():
    # every 90°: 0 and 180 are their own mirror (free), 90 and 270 share one prediction: 90° each -> mean 45°
    assert add_floor_deg([0, 90, 180, 270]) == 45.0
    # 30 and 330 share one prediction: the best costs 30° each; 0 is free -> (0 + 30 + 30) / 3
    assert add_floor_deg([0, 30, 330]) == 20.0
    assert add_floor_deg([0, 30]) == 0.0  # 330 is not in the grid: nothing to confuse 30 with
    assert add_floor_deg(range(0, 360, 10)) == 45.0 == add_floor_deg(range(360))  # the default grid and a dense one
    assert sub_floor_deg(range(0, 360, 10)) == 5.0  # 0° and 180° at 90° each, over 36 azimuths
    assert sub_floor_deg([0, 90, 270]) == 0.0


def test_add_floor_against_a_brute_force_search():
    az = np.arange(0, 360, 20)
    candidates = np.arange(0, 360, 0.5)
    dist = lambda a, b: np.abs((a - b + 180) % 360 - 180)  # noqa: E731
    # az and its mirror share one prediction p; each sample's share of the best pair cost (0 for 0° and 180°)
    best = [0.0 if a % 180 == 0 else (dist(candidates, a) + dist(candidates, 360 - a)).min() / 2 for a in az]
    assert add_floor_deg(az) == pytest.approx(np.mean(best))


# --------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def kemar(tmp_path_factory):
    """The default KEMAR responses, anechoic and reverberant, at azimuths that pair up with their mirrors."""
    root = tmp_path_factory.mktemp("kemar")
    build(LocalizationBuildConfig(generated_sounds=6, azimuths=(0, 40, 90, 180, 270, 320),
                                  environments=("anechoic", "reverberant"), test_fraction=0.34, shard_rows=64), root)
    return root


def altered_copy(src, dst, environment: str):
    """`src` with the right ear of one environment's rows scaled by 0.9 (a small asymmetry), re-manifested."""
    dst.mkdir()
    entries = []
    for e in shards.load_manifest(src).data["shards"]:
        table = pq.read_table(src / e["file"])
        waves = shards.read_waves(table)
        env = np.array(table.column("environment").to_pylist())
        waves[env == environment, 1] *= 0.9
        rows = shards.Rows()
        for s, so, a, en, sp, w in zip(*(table.column(c).to_pylist() for c in
                                          ("sound_id", "source", "azimuth_deg", "environment", "split")), waves):
            rows.add(s, so, a, en, sp, shards.to_storage(w, "int16"))
        shards.write_shard(rows.table(16000, 8000, "int16"), dst / e["file"])
        entries.append({"file": e["file"], "split": e["split"]})
    return shards.write_manifest(dst, entries, {"sample_rate": 16000, "n_samples": 8000, "dtype": "int16"})


def test_default_kemar_data_is_mirror_symmetric_bit_for_bit(kemar):
    result = check(kemar)
    assert result.environments["anechoic"] is True and result.pairs["anechoic"] >= 3
    assert result.max_difference["anechoic"] == 0.0
    assert set(result.environments) == {"anechoic", "reverberant"}


def test_an_altered_ear_is_found_and_the_verdict_is_cached(kemar, tmp_path, monkeypatch):
    monkeypatch.setenv("BINSWEEP_HOME", str(tmp_path / "home"))
    altered = altered_copy(kemar, tmp_path / "altered", "anechoic")
    result = mirror_symmetry(altered.root)
    assert result.environments["anechoic"] is False and result.max_difference["anechoic"] > 0.01
    assert result.fingerprint == altered.fingerprint
    cached = tmp_path / "home" / "data" / "cache" / "mirror_symmetry" / f"{altered.fingerprint}.json"
    assert json.loads(cached.read_text())["environments"]["anechoic"] is False
    # the cache is keyed by fingerprint: a cached verdict is used without reading the dataset again
    symmetry._MEMO.clear()
    (altered.root / "manifest.json").unlink()
    assert mirror_symmetry("/nonexistent", altered.fingerprint) == result


def test_report_notes_name_the_floor_only_for_sp_on_symmetric_data(kemar, tmp_path, monkeypatch):
    monkeypatch.setenv("BINSWEEP_HOME", str(tmp_path / "home"))
    sp_add = {"model.sharing": "SP", "model.integration": "add"}
    sp_sub = {"model.sharing": "SP", "model.integration": "sub"}
    nsp = {"model.sharing": "NSP", "model.integration": "add"}
    assert sp_notes([nsp, {"model.sharing": "SP", "model.integration": "concat"}], str(kemar)) == []
    notes = sp_notes([nsp, sp_add, sp_sub], str(kemar))
    assert len(notes) == 2 and all("mirror-symmetric in anechoic" in n for n in notes)
    # grid (0, 40, 90, 180, 270, 320): 40/320 cost 40° each, 90/270 90° each -> (40 + 40 + 90 + 90) / 6
    assert f"cannot go below {260 / 6:.1f}°" in notes[0] and "cannot tell left from right" in notes[0]
    assert "one prediction for both" in notes[1] and f"at least {180 / 6:.1f}°" in notes[1]
    altered = altered_copy(kemar, tmp_path / "altered", "anechoic")
    assert all("anechoic" not in n.split("(")[0] for n in sp_notes([sp_add], str(altered.root)))
