"""Builder, reader and on-the-fly renderer on real files written and read back."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from sweep_platform.cli import app
from trainables.localization import shards
from trainables.localization.builder import LocalizationBuildConfig, build, read_split
from trainables.localization.onthefly import OnTheFlyRenderer
from trainables.localization.reader import ShardReader

AZ = tuple(range(0, 360, 30))  # 12 azimuths keep the tests fast


def small_cfg(**kw):
    base = dict(generated_sounds=12, azimuths=AZ, environments=("anechoic",), test_fraction=0.25,
                shard_rows=40, seed=3)
    return LocalizationBuildConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("loc") / "ds"
    return build(small_cfg(), out)


def test_manifest_counts_and_splits(dataset):
    c = dataset.data["counts"]
    assert c["test"]["total"] == 3 * 12  # 25% of 12 sounds, every azimuth
    assert c["train"]["total"] + c["val"]["total"] == 9 * 12
    for split in ("train", "val"):
        assert set(c[split]["by_azimuth"]) == {str(a) for a in AZ}
    # 75/25 in every azimuth x environment cell: 9 sounds per cell -> round(2.25) = 2 val
    assert all(n == 2 for n in c["val"]["by_azimuth"].values())
    assert dataset.sample_rate == 16000 and dataset.n_samples == 8000
    assert json.loads((dataset.root / "manifest.json").read_text())["fingerprint"] == dataset.fingerprint


def test_test_sounds_never_in_train_or_val(dataset):
    ids = {s: set(read_split(dataset.root, s).column("sound_id").to_pylist()) for s in ("train", "val", "test")}
    assert not ids["test"] & (ids["train"] | ids["val"])
    assert len(ids["test"]) == 3


def test_rows_hold_rendered_audio(dataset):
    table = read_split(dataset.root, "train")
    waves = shards.read_waves(table)
    assert waves.shape[1:] == (2, 8000) and np.isfinite(waves).all()
    assert np.abs(waves).max() <= 0.9 + 1e-3 and np.abs(waves).max() > 0.5
    # left ear louder for sources on the left (30..150), right ear for 210..330
    az = table.column("azimuth_deg").to_numpy()
    ild = 10 * np.log10((waves[:, 0] ** 2).sum(-1) / (waves[:, 1] ** 2).sum(-1))
    assert (ild[(az > 0) & (az < 180)] > 0).all() and (ild[az > 180] < 0).all()


def test_same_seed_same_bytes_and_resume(dataset, tmp_path):
    again = build(small_cfg(), tmp_path / "again")
    assert again.fingerprint == dataset.fingerprint
    # interrupt: remove two shards and the manifest, then build again into the same folder
    files = sorted((tmp_path / "again" / "shards").glob("*.parquet"))
    kept = files[0].stat().st_mtime_ns
    for f in files[1:3]:
        f.unlink()
    (tmp_path / "again" / "manifest.json").unlink()
    resumed = build(small_cfg(), tmp_path / "again")
    assert resumed.fingerprint == dataset.fingerprint
    assert files[0].stat().st_mtime_ns == kept  # finished shards are kept, not rewritten
    other = build(small_cfg(seed=4), tmp_path / "other")
    assert other.fingerprint != dataset.fingerprint


def test_refuses_a_folder_with_another_build(dataset, tmp_path):
    build(small_cfg(), tmp_path / "x")
    with pytest.raises(ValueError, match="holds a different build"):
        build(small_cfg(seed=9), tmp_path / "x")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a binsweep build folder"):
        build(small_cfg(), tmp_path / "junk")


def test_float32_storage(tmp_path):
    m = build(small_cfg(generated_sounds=4, dtype="float32", azimuths=(0, 90)), tmp_path / "f32")
    table = pq.read_table(m.shards("train")[0])
    assert table.schema.field("left").type.value_type == "float"


def test_reader_partitions_workers_equally(dataset):
    total = dataset.count("train")
    seen = []
    for rank in range(3):
        r = ShardReader(dataset.root, "train", batch_size=16, rank=rank, world_size=3, seed=0)
        batches = list(r)
        assert len(batches) == len(r)
        n = sum(len(b["azimuth"]) for b in batches)
        assert n == total // 3
        for b in batches:
            assert b["wave"].shape[1:] == (2, 8000) and b["wave"].dtype == torch.float32
        # whole rows: generated sounds can open with the same silence, so a prefix is not an identity
        seen.append(torch.cat([b["wave"].flatten(1) for b in batches]))
    allrows = torch.cat(seen)
    assert len(torch.unique(allrows, dim=0)) == len(allrows)  # no row read by two workers


def test_reader_is_seeded_and_reshuffles_per_epoch(dataset):
    def first(epoch, seed=0):
        r = ShardReader(dataset.root, "train", batch_size=8, seed=seed)
        r.set_epoch(epoch)
        return next(iter(r))["azimuth"]

    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))
    unshuffled = ShardReader(dataset.root, "val", batch_size=1000, shuffle=False)
    assert len(list(unshuffled)) == 1


def test_reader_errors(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        ShardReader(tmp_path, "train", 8)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ShardReader(dataset.root, "dev", 8)
    with pytest.raises(ValueError, match="rank 3 is outside world_size 2"):
        ShardReader(dataset.root, "train", 8, rank=3, world_size=2)


def test_on_the_fly_rendering(dataset):
    r = OnTheFlyRenderer(dataset.root, snr_db=20.0)
    a = r.batch(16, torch.Generator().manual_seed(5))
    b = r.batch(16, torch.Generator().manual_seed(5))
    c = r.batch(16, torch.Generator().manual_seed(6))
    assert a["wave"].shape == (16, 2, 8000) and torch.isfinite(a["wave"]).all()
    assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["azimuth"], b["azimuth"])
    assert not torch.equal(a["wave"], c["wave"])
    assert set(a["azimuth"].tolist()) <= set(AZ)
    # without noise, a rendering equals the stored dataset row of the same sound/azimuth up to gain
    clean = OnTheFlyRenderer(dataset.root, gain_db=(0.0, 0.0))
    out = clean.batch(4, torch.Generator().manual_seed(1))
    assert out["wave"].abs().amax(dim=(1, 2)).allclose(torch.full((4,), 0.5), atol=1e-5)


def test_on_the_fly_needs_a_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="sounds.parquet not found"):
        OnTheFlyRenderer(tmp_path)


def test_sound_folder_any_rate_and_channels(tmp_path):
    folder = tmp_path / "sounds"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", rng.standard_normal((44100, 2)) * 0.2, 44100)  # stereo 44.1 kHz, 1 s -> 2 clips
    sf.write(folder / "b.flac", rng.standard_normal(24000) * 0.2, 48000)  # mono 48 kHz, 0.5 s -> 1 clip
    sf.write(folder / "c.ogg", rng.standard_normal(16000) * 0.2, 16000)  # ogg vorbis, 1 s -> 2 clips
    silent = np.zeros(16000)
    sf.write(folder / "silent.wav", silent, 16000)  # rejected: silence
    m = build(small_cfg(sounds=folder, azimuths=(0, 90), test_fraction=0.34), tmp_path / "ds")
    ids = set()
    for s in ("train", "val", "test"):
        if m.count(s):
            ids |= set(read_split(m.root, s).column("sound_id").to_pylist())
    assert ids == {"a.wav#0", "a.wav#1", "b.flac#0", "c.ogg#0", "c.ogg#1"}
    # splits by recording: both clips of a file land on the same side of the test split
    test_src = set(read_split(m.root, "test").column("source").to_pylist())
    assert len(test_src) == 1


def test_corrupt_audio_is_named(tmp_path):
    folder = tmp_path / "sounds"
    folder.mkdir()
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(ValueError, match="broken.wav: cannot be read as audio"):
        build(small_cfg(sounds=folder), tmp_path / "ds")


def test_config_errors():
    with pytest.raises(ValidationError, match="azimuths must be distinct integers"):
        small_cfg(azimuths=(0, 400))
    with pytest.raises(ValidationError, match="environments"):
        small_cfg(environments=("outdoors",))
    with pytest.raises(ValidationError, match="Extra inputs"):
        LocalizationBuildConfig(sound_dir="x")


def test_cli_builds_and_reports(tmp_path):
    res = CliRunner().invoke(app, ["data", "localization", "--out", str(tmp_path / "cli"), "--generated-sounds", "4",
                                   "--azimuth-step", "90", "--environments", "anechoic", "--test-fraction", "0.25"])
    assert res.exit_code == 0, res.output
    assert "fingerprint" in res.output and (tmp_path / "cli" / "manifest.json").exists()
    bad = CliRunner().invoke(app, ["data", "localization", "--out", str(tmp_path / "bad"), "--environments", "moon"])
    assert bad.exit_code == 2 and "environments" in bad.output
    assert not (tmp_path / "bad").exists()


def test_generated_kinds_pick_the_families_and_keep_old_digests(tmp_path):
    from trainables import sounds

    clips, kinds = sounds.generated_corpus(6, 800, 16000, seed=2, kinds=("noise", "chirp"))
    assert kinds == ["noise", "chirp"] * 3
    # clip i keeps its own seed (seed, i): the subset corpus draws each clip as the generator does alone
    expected = sounds.generate_sound("chirp", 800, 16000, np.random.default_rng([2, 3]))
    np.testing.assert_array_equal(clips[3], expected)
    # the default (all six families) is left out of the record, so datasets built before keep their digest
    assert "generated_kinds" not in small_cfg().record()
    assert small_cfg(generated_kinds=sounds.KINDS).digest() == small_cfg().digest()
    narrow = small_cfg(generated_kinds=["noise"])
    assert narrow.digest() != small_cfg().digest()
    build(narrow, tmp_path / "noise")
    manifest = json.loads((tmp_path / "noise" / "manifest.json").read_text())
    assert manifest["build"]["generated_kinds"] == ["noise"]
    with pytest.raises(ValidationError, match=r"unknown 'voice'; known kinds: noise, harmonic"):
        small_cfg(generated_kinds=("noise", "voice"))
    with pytest.raises(ValidationError, match="generated_kinds"):
        small_cfg(generated_kinds=())


def test_cli_generated_kinds(tmp_path):
    res = CliRunner().invoke(app, ["data", "localization", "--out", str(tmp_path / "bb"), "--generated-sounds", "4",
                                   "--generated-kinds", "noise, am_mix", "--azimuth-step", "90",
                                   "--environments", "anechoic", "--test-fraction", "0.25"])
    assert res.exit_code == 0, res.output
    build_record = json.loads((tmp_path / "bb" / "manifest.json").read_text())["build"]
    assert build_record["generated_kinds"] == ["noise", "am_mix"]
    bad = CliRunner().invoke(app, ["data", "localization", "--out", str(tmp_path / "bad"), "--generated-kinds", "bird"])
    assert bad.exit_code == 2 and "generated_kinds" in bad.output and "known kinds" in bad.output
    assert not (tmp_path / "bad").exists()
