"""Randomised rooms (issue 15, data side): drawing, rendering, dataset rows and splits, patterns, a learning check."""

import json
import math

import numpy as np
import pyroomacoustics as pra
import pytest
import scipy.signal
import torch
from pydantic import ValidationError
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from sweep_platform.cli import app
from trainables.acoustics import random_rooms as rr
from trainables.acoustics.hrtf import load_hrtf
from trainables.acoustics.rooms import measure_rt60
from trainables.localization import inprocess, splits
from trainables.localization.builder import LocalizationBuildConfig, build, read_split
from trainables.localization.reader import ShardReader, match_environments

AZ = tuple(range(0, 360, 30))


@pytest.fixture(scope="module")
def hrirs():
    return load_hrtf(None, 16000)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cfg = LocalizationBuildConfig(generated_sounds=16, azimuths=AZ, environments=("anechoic",), rooms=3,
                                  heldout_rooms=2, snr_db=(10.0, 20.0), level_jitter_db=6.0, test_fraction=0.25,
                                  shard_rows=64, seed=2)
    return build(cfg, tmp_path_factory.mktemp("rooms") / "ds")


# ------------------------------------------------------------------------------------------------- acoustics


def test_image_sources_match_pyroomacoustics():
    size, src, mic = (4.0, 5.0, 3.0), np.array([1.0, 2.0, 1.5]), np.array([2.5, 3.0, 1.2])
    vec, order = rr.image_sources(size, src, mic, max_distance=12.0)
    room = pra.ShoeBox(list(size), fs=16000, materials=pra.Material(0.3), max_order=8, air_absorption=False)
    room.add_source(src)
    room.add_microphone(mic)
    room.image_source_model()
    ref = room.sources[0].images.T - mic
    ref_order = room.sources[0].orders
    near = np.linalg.norm(ref, axis=1) <= 12.0  # order 8 holds every image within 12 m of this small room
    ours = sorted(map(tuple, np.round(np.c_[vec, order], 6)))
    theirs = sorted(map(tuple, np.round(np.c_[ref[near], ref_order[near]], 6)))
    assert ours == theirs and len(ours) > 100


def test_eyring_by_hand():
    # 5 x 4 x 3 m: V = 60, S = 94; RT60 0.5 s -> alpha = 1 - exp(-0.161 * 60 / (94 * 0.5)) (0.161 ~ 24 ln10 / 343)
    alpha = rr.eyring_absorption((5, 4, 3), 0.5)
    assert alpha == pytest.approx(1 - math.exp(-24 * math.log(10) / 343 * 60 / (94 * 0.5)))
    assert alpha == pytest.approx(1 - math.exp(-0.161 * 60 / 47), rel=2e-3)


def test_drawn_rooms_respect_their_family_and_are_seeded():
    rooms = rr.draw_rooms(rr.TRAIN_FAMILY, 20, "room", "train", seed=4)
    assert [r.name for r in rooms[:3]] == ["room-000", "room-001", "room-002"]
    assert rooms == rr.draw_rooms(rr.TRAIN_FAMILY, 20, "room", "train", seed=4)
    assert rooms != rr.draw_rooms(rr.TRAIN_FAMILY, 20, "room", "train", seed=5)
    fam, m = rr.TRAIN_FAMILY, 0.3
    for r in rooms:
        for v, (lo, hi) in zip(r.size_m, (fam.length_m, fam.width_m, fam.height_m)):
            assert lo - 1e-3 <= v <= hi + 1e-3
        x, y, z = r.listener_m
        ring = min(x, r.size_m[0] - x, y, r.size_m[1] - y) - m
        assert 0.5 <= r.source_distance_m <= min(3.0, ring) + 1e-3  # the source circle stays inside the walls
        assert 1.0 <= z <= 1.8 and 0.2 <= r.rt60_target_s <= 1.5
    held = rr.draw_rooms(rr.HELDOUT_FAMILY, 20, "heldout", "heldout", seed=4)
    # disjoint families: every held-out room is larger in every dimension than any training room can be
    assert min(min(r.size_m[k] for r in held) - rr.TRAIN_FAMILY.model_dump()[n][1]
               for k, n in enumerate(("length_m", "width_m", "height_m"))) > 0


def test_family_errors_name_the_field():
    with pytest.raises(ValidationError, match="rt60_s=.*low end"):
        rr.RoomFamily(length_m=(3, 5), width_m=(3, 5), height_m=(2.5, 3), rt60_s=(1.0, 0.5))
    with pytest.raises(ValidationError, match="length_m and width_m must start at 1.6 m"):
        rr.RoomFamily(length_m=(1, 5), width_m=(3, 5), height_m=(2.5, 3))


def test_rendered_room_decays_at_its_rt60_and_keeps_direct_sound(hrirs, tmp_path):
    room = rr.draw_rooms(rr.TRAIN_FAMILY, 1, "room", "train", seed=11)[0]
    bank, t30 = rr.room_bank(hrirs, room, [0, 90, 270], keep_samples=8000, cache_dir=tmp_path)
    assert bank.shape == (3, 2, 8000) and bank.dtype == np.float32
    assert t30 == pytest.approx(room.rt60_target_s, rel=0.15)  # the tail sets the decay
    plane = hrirs.horizontal()
    direct = plane.ir[plane.nearest(90, 0)]  # the direct path is the measured HRIR at gain 1, delay 0
    assert np.allclose(bank[1, :, :40], direct[:, :40], atol=1e-6)
    # source on the left: the left ear gets more energy, over the whole reverberant response too
    assert (bank[1, 0] ** 2).sum() > (bank[1, 1] ** 2).sum()
    # the late tail is diffuse: interaural correlation far below the direct sound's (~1 for a frontal source)
    late = bank[0, :, 4000:8000].astype(np.float64)
    assert abs(np.corrcoef(late[0], late[1])[0, 1]) < 0.5
    again, t30_again = rr.room_bank(hrirs, room, [0, 90, 270], keep_samples=8000, cache_dir=tmp_path)
    assert np.array_equal(bank, again) and t30 == t30_again and len(list(tmp_path.iterdir())) == 1


def test_diffuse_noise_is_unit_energy_and_binaural(hrirs):
    noise = rr.diffuse_noise(hrirs, 16000, np.random.default_rng(0))
    assert noise.shape == (2, 16000)
    assert np.square(noise).sum(axis=0).mean() == pytest.approx(1.0)
    ild = 10 * np.log10(np.square(noise[0]).sum() / np.square(noise[1]).sum())
    assert abs(ild) < 2.0  # no side preferred
    # coherent at low frequencies, decorrelated above ~1 kHz: the diffuse-field signature at two ears
    f, coh = scipy.signal.coherence(noise[0], noise[1], fs=16000, nperseg=512)
    assert coh[(f > 50) & (f < 300)].mean() > 0.5 > coh[(f > 2000) & (f < 6000)].mean()


def test_measure_rt60_on_a_synthetic_decay():
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    ir = rng.standard_normal((2, t.size)) * 10 ** (-3 * t / 0.6)
    assert measure_rt60(ir, 16000) == pytest.approx(0.6, rel=0.03)


# ------------------------------------------------------------------------------------------------- the dataset


def test_manifest_records_rooms_and_noise(dataset):
    info = dataset.data
    rooms = info["rooms"]
    assert [r["name"] for r in rooms] == ["room-000", "room-001", "room-002", "heldout-000", "heldout-001"]
    assert [r["family"] for r in rooms] == ["train"] * 3 + ["heldout"] * 2
    for r in rooms:
        assert set(r) >= {"name", "family", "size_m", "listener_m", "source_distance_m", "absorption", "rt60_s"}
        assert r["rt60_s"] == pytest.approx(r["rt60_target_s"], rel=0.35)
    assert info["noise"]["snr_db"] == [10.0, 20.0] and info["noise"]["level_jitter_db"] == 6.0
    assert info["environments"] == ["anechoic"] + [r["name"] for r in rooms]
    assert info["build"]["val_split"] == "sound"


def test_rows_and_splits(dataset):
    c = dataset.data["counts"]
    # 16 sounds: 4 test, 12 trainval of which round(0.25 * 12) = 3 val sounds; each sound x azimuth is in the
    # anechoic environment and in one training room
    assert c["train"]["total"] == 9 * 12 * 2 and c["val"]["total"] == 3 * 12 * 2
    assert c["test"]["total"] == 4 * 12 * 2
    assert c["heldout"]["total"] == 4 * 12 * 2 and set(c["heldout"]["by_environment"]) == {"heldout-000", "heldout-001"}
    assert set(c["train"]["by_environment"]) == {"anechoic", "room-000", "room-001", "room-002"}
    ids = {s: set(read_split(dataset.root, s).column("sound_id").to_pylist()) for s in
           ("train", "val", "test", "heldout")}
    assert not ids["val"] & ids["train"] and not ids["test"] & (ids["train"] | ids["val"])
    assert ids["heldout"] == ids["test"]  # held-out rooms use the test sounds


def test_noise_and_jitter_keep_ild_and_stay_in_range(dataset):
    table = read_split(dataset.root, "train")
    from trainables.localization import shards

    waves = shards.read_waves(table)
    peaks = np.abs(waves).max(axis=(1, 2))
    # jitter 0..6 dB below the 0.9 peak: peaks spread over 0.45..0.9
    assert peaks.max() <= 0.9 + 1e-3 and peaks.min() >= 0.9 * 10 ** (-6 / 20) - 1e-3 and peaks.std() > 0.05
    az = table.column("azimuth_deg").to_numpy()
    ild = 10 * np.log10((waves[:, 0] ** 2).sum(-1) / (waves[:, 1] ** 2).sum(-1))
    assert np.median(ild[(az == 60) | (az == 90) | (az == 120)]) > 3 > -3 > np.median(ild[(az == 240) | (az == 270)])


def test_environment_patterns(dataset):
    r = ShardReader(dataset.root, "train", 8, environments=["room-*"])
    envs = {e for b in r for e in np.array(r.environments)[b["environment"].numpy()]}
    assert envs == {"room-000", "room-001", "room-002"}
    assert match_environments(["anechoic", "room-00[12]"], r.environments, "x") == {"anechoic", "room-001",
                                                                                     "room-002"}
    with pytest.raises(ValueError, match="'hall-\\*' matches no environment in the dataset; it has anechoic"):
        ShardReader(dataset.root, "train", 8, environments=["room-*", "hall-*"])
    heldout = ShardReader(dataset.root, "heldout", 8, shuffle=False)
    assert sum(len(b["azimuth"]) for b in heldout) == 96


def test_legacy_configs_keep_their_digest_and_clip_split():
    old = LocalizationBuildConfig(generated_sounds=12, val_split="clip")
    # the newer fields at their legacy values are left out of the recorded config, so the digest is the one of
    # the same config before they existed
    assert "rooms" not in old.record() and "val_split" not in old.record()
    assert LocalizationBuildConfig(generated_sounds=12).record() != old.record()
    assert '"val_split":"sound"' in LocalizationBuildConfig(generated_sounds=12).record()


def test_val_sounds_by_hand():
    ids = [f"s{i}" for i in range(8)]
    val = splits.val_sounds(ids, 0.25, seed=0)
    assert len(val) == 2 and val <= set(ids) and val == splits.val_sounds(ids, 0.25, seed=0)
    assert len(splits.val_sounds(ids[:2], 0.1, seed=0)) == 1  # at least one when the fraction is positive
    assert splits.val_sounds(ids, 0.0, seed=0) == set()


def test_config_errors():
    with pytest.raises(ValidationError, match="unless rooms > 0"):
        LocalizationBuildConfig(environments=())
    with pytest.raises(ValidationError, match="rooms_per_sound=3 exceeds rooms=2"):
        LocalizationBuildConfig(rooms=2, rooms_per_sound=3)
    with pytest.raises(ValidationError, match="heldout_rooms needs rooms > 0"):
        LocalizationBuildConfig(heldout_rooms=2)
    with pytest.raises(ValidationError, match="snr_db"):
        LocalizationBuildConfig(rooms=2, snr_db=(20, 10))


def test_sounds_folder_mixed_with_generated(tmp_path):
    import soundfile as sf

    folder = tmp_path / "rec"
    folder.mkdir()
    t = np.arange(16000) / 16000
    sf.write(folder / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 16000)
    cfg = LocalizationBuildConfig(sounds=folder, mix_generated=True, generated_sounds=4, azimuths=(0, 90),
                                  environments=("anechoic",), test_fraction=0.25, val_fraction=0.0)
    m = build(cfg, tmp_path / "ds")
    rows = [read_split(m.root, s) for s in ("train", "test")]
    sources = {s for t in rows for s in t.column("source").to_pylist()}
    assert {"tone.wav"} < sources and sum(s.startswith("generated/") for s in sources) == 4


def test_cli_rooms(tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["data", "localization", "--out", str(out), "--generated-sounds", "8",
                                   "--azimuth-step", "90", "--environments", "", "--rooms", "2",
                                   "--snr-db", "5:15", "--test-fraction", "0.25"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "manifest.json").read_text())
    assert info["build"]["heldout_rooms"] == 2 and info["noise"]["snr_db"] == [5.0, 15.0]
    assert info["noise"]["level_jitter_db"] == 10.0 and info["counts"]["heldout"]["total"] == 2 * 4 * 2
    bad = CliRunner().invoke(app, ["data", "localization", "--out", str(tmp_path / "bad"), "--rooms", "2",
                                   "--snr-db", "loud"])
    assert bad.exit_code != 0 and "LOW:HIGH" in bad.output


# ------------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_learns_to_localise_in_rooms_it_never_saw(tmp_path):
    torch.set_num_threads(1)
    root = tmp_path / "ds"
    build(LocalizationBuildConfig(generated_sounds=36, azimuths=AZ, environments=(), rooms=4, heldout_rooms=2,
                                  snr_db=(10.0, 30.0), level_jitter_db=10.0, test_fraction=0.25, shard_rows=64,
                                  seed=1), root)
    config = {"model": {"preset": "bast_tiny", "embed_dim": 32, "heads": 2, "dim_head": 16, "mlp_dim": 64},
              "data": {"root": str(root), "train_environments": ["room-*"]},
              "train": {"epochs": 8, "batch_size": 16, "lr": 1e-3}}
    from trainables.registry import get_trainable

    spec = get_trainable("bast")
    torch.manual_seed(0)
    untrained = spec.build_model(spec.config_type.model_validate(config))
    before = inprocess.ad_by_environment(untrained, root, "heldout")["all"][0]
    model, history = inprocess.train("bast", config)
    after = inprocess.ad_by_environment(model, root, "heldout")
    assert len(history) == 8 and after["all"][1] == 9 * 12 * 2  # 9 test sounds x 12 azimuths x 2 held-out rooms
    assert after["all"][0] < 65.0 and after["all"][0] < before - 20.0, (before, after)


def test_on_the_fly_rendering_leaves_the_heldout_rooms_out(dataset):
    from trainables.localization.onthefly import OnTheFlyRenderer

    r = OnTheFlyRenderer(dataset.root)
    assert r.environments == ["anechoic", "room-000", "room-001", "room-002"]
    rooms = OnTheFlyRenderer(dataset.root, environments=["room-*"])
    batch = rooms.batch(8, torch.Generator().manual_seed(0))
    assert rooms.environments == ["room-000", "room-001", "room-002"] and batch["wave"].shape == (8, 2, 8000)
    with pytest.raises(ValueError, match="'hall' matches no environment"):
        OnTheFlyRenderer(dataset.root, environments=["hall"])
