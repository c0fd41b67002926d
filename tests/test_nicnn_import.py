"""NI-CNN import on real WAV files written in the dataset's layout, broken ones included."""

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from trainables.localization import shards
from trainables.localization.nicnn import NICNNImportError, import_nicnn, parse_name

AZ = tuple(range(0, 360, 10))
TAGS = {"RI01": "anechoic", "RI02": "reverberant"}
N = 8000


def _write(path: Path, data: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype)


def write_dataset(root: Path, train_sounds: int, azimuths=AZ, tags=tuple(TAGS), seed: int = 0) -> dict[str, np.ndarray]:
    """root/train/S{az}_snd{k}_{tag}.wav for every sound, azimuth and tag, and one SNR-tagged test sound.

    Returns {"folder/name": [8000, 2] int16} of everything written. Samples span the whole int16 range so any
    rescaling on the way would show.
    """
    rng = np.random.default_rng(seed)
    written = {}
    names = [("train", f"S{az:03d}_snd{k}_{tag}.wav") for k in range(train_sounds) for az in azimuths for tag in tags]
    names += [("test", f"S{az:03d}_tst0_{tag}_SNR10.wav") for az in azimuths for tag in tags]
    for folder, name in names:
        data = rng.integers(-32768, 32768, (N, 2), dtype=np.int16)
        _write(root / folder / name, data)
        written[f"{folder}/{name}"] = data
    return written


@pytest.fixture(scope="module")
def nicnn(tmp_path_factory):
    src = tmp_path_factory.mktemp("nicnn-src")
    written = write_dataset(src, train_sounds=4)  # 4 per (azimuth, environment) cell: 25% val is exactly 1
    out = tmp_path_factory.mktemp("nicnn-out") / "ds"
    calls = []
    report = import_nicnn(src, out, shard_rows=100, progress=lambda done, total: calls.append((done, total)))
    return src, written, report, calls


def _table(manifest, split) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in manifest.shards(split))


def _ears(table: pa.Table) -> np.ndarray:
    """[N, 2, 8000] in the stored dtype, untouched."""
    ears = [table.column(ear).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, N)
            for ear in ("left", "right")]
    return np.stack(ears, axis=1)


def test_manifest_counts(nicnn):
    _, _, report, _ = nicnn
    assert report.imported == 360 and report.problems == []
    counts = report.manifest.data["counts"]
    assert (counts["train"]["total"], counts["val"]["total"], counts["test"]["total"]) == (216, 72, 72)
    for split, per_cell in (("train", 3), ("val", 1), ("test", 1)):
        assert counts[split]["by_azimuth"] == {str(az): 2 * per_cell for az in AZ}
        assert counts[split]["by_environment"] == {"anechoic": 36 * per_cell, "reverberant": 36 * per_cell}
    m = report.manifest
    assert (m.sample_rate, m.n_samples, m.data["dtype"], m.data["source"]) == (16000, 8000, "int16", "nicnn")
    assert m.data["import"]["problems"] == 0 and m.data["import"]["val_fraction"] == 0.25
    assert shards.load_manifest(m.root).fingerprint == m.fingerprint
    # shard_rows=100: 216 train rows -> 3 shards, val and test one each
    assert [len(m.shards(s)) for s in shards.SPLITS] == [3, 1, 1]


def test_val_is_a_quarter_of_every_cell(nicnn):
    _, _, report, _ = nicnn
    cells = {}
    for split in ("train", "val"):
        t = _table(report.manifest, split)
        cells[split] = Counter(zip(t.column("azimuth_deg").to_pylist(), t.column("environment").to_pylist()))
    every = {(az, env) for az in AZ for env in TAGS.values()}
    assert set(cells["val"]) == every and set(cells["train"]) == every
    assert all(cells["val"][c] / (cells["val"][c] + cells["train"][c]) == 0.25 for c in every)


def test_samples_are_bit_identical_and_rows_labelled(nicnn):
    _, written, report, _ = nicnn
    for split in shards.SPLITS:
        t = _table(report.manifest, split)
        sources = t.column("source").to_pylist()
        assert sources == sorted(sources)  # file-name order, so the same input gives the same bytes
        assert t.schema.field("left").type.value_type == pa.int16()
        ears = _ears(t)
        for i, source in enumerate(sources):
            assert np.array_equal(ears[i], written[source].T), source
        name = Path(sources[0]).name
        assert t.column("azimuth_deg")[0].as_py() == int(name[1:4])
        assert t.column("environment")[0].as_py() == TAGS[Path(name).stem.split("_")[2]]
        assert set(t.column("split").to_pylist()) == {split}
        # the shared reader sees the same samples on its 1/32767 scale
        assert np.allclose(shards.read_waves(t.slice(0, 1))[0] * 32767.0, ears[0])
    test = _table(report.manifest, "test")
    assert test.column("source")[0].as_py() == "test/S000_tst0_RI01_SNR10.wav"  # the raw name, SNR tag and all
    assert set(test.column("environment").to_pylist()) == {"anechoic", "reverberant"}


def test_sound_id_is_the_name_without_azimuth(nicnn):
    _, _, report, _ = nicnn
    ids = Counter()
    for split in shards.SPLITS:
        ids.update(_table(report.manifest, split).column("sound_id").to_pylist())
    expected = {f"train/S_snd{k}_{tag}" for k in range(4) for tag in TAGS}
    expected |= {f"test/S_tst0_{tag}_SNR10" for tag in TAGS}
    assert set(ids) == expected and set(ids.values()) == {36}


def test_report_file_and_progress(nicnn):
    _, _, report, calls = nicnn
    text = (report.manifest.root / "import_report.txt").read_text()
    assert text == report.format()
    assert "imported 360 clips (train 216, val 72, test 72); 0 files left out" in text
    assert "0..350 in 10° steps" in text
    assert report.manifest.fingerprint in text
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and calls[-1] == (720, 720) and {t for _, t in calls} == {720}


def test_same_seed_same_bytes_other_seed_other_split(nicnn, tmp_path):
    src, _, first, _ = nicnn
    again = import_nicnn(src, tmp_path / "again", shard_rows=100)
    assert again.manifest.fingerprint == first.manifest.fingerprint
    for a, b in zip(first.manifest.data["shards"], again.manifest.data["shards"]):
        assert a["file"] == b["file"]
        assert (first.manifest.root / a["file"]).read_bytes() == (again.manifest.root / b["file"]).read_bytes()
    other = import_nicnn(src, tmp_path / "other", shard_rows=100, seed=1)
    assert other.manifest.fingerprint != first.manifest.fingerprint
    val = {r.manifest.fingerprint: set(_table(r.manifest, "val").column("source").to_pylist()) for r in (first, other)}
    assert val[first.manifest.fingerprint] != val[other.manifest.fingerprint]
    assert other.manifest.data["counts"]["val"] == first.manifest.data["counts"]["val"]  # still 1 per cell


def test_float32_storage_reads_back_on_the_int16_scale(nicnn, tmp_path):
    src, written, _, _ = nicnn
    report = import_nicnn(src, tmp_path / "f32", dtype="float32")
    t = _table(report.manifest, "test")
    assert t.schema.field("left").type.value_type == pa.float32()
    want = np.stack([written[s].T for s in t.column("source").to_pylist()]).astype(np.float32) / 32767.0
    assert np.array_equal(shards.read_waves(t), want)


BROKEN = {
    "S100_short_RI01.wav": "7999 samples",
    "S110_fast_RI01.wav": "44100 Hz",
    "S120_mono_RI01.wav": "1 channel",
    "S130_deep_RI01.wav": "PCM_24",
    "S140_junk_RI01.wav": "unreadable",
    "xabc_RI01.wav": "no azimuth",
    "S150_noroom.wav": "no environment tag",
}


@pytest.fixture
def broken_src(tmp_path):
    src = tmp_path / "src"
    write_dataset(src, train_sounds=1, azimuths=(0, 90, 180, 270), tags=("RI01",))
    rng = np.random.default_rng(1)
    stereo = rng.integers(-3000, 3000, (N, 2), dtype=np.int16)
    train = src / "train"
    _write(train / "S100_short_RI01.wav", stereo[:-1])
    _write(train / "S110_fast_RI01.wav", stereo, rate=44100)
    _write(train / "S120_mono_RI01.wav", stereo[:, 0])
    _write(train / "S130_deep_RI01.wav", stereo, subtype="PCM_24")
    (train / "S140_junk_RI01.wav").write_bytes(b"this is not a RIFF file" * 100)
    _write(train / "xabc_RI01.wav", stereo)
    _write(train / "S150_noroom.wav", stereo)
    (train / "notes.txt").write_text("not audio")
    return src


def test_broken_files_are_reported_and_good_ones_imported(broken_src, tmp_path):
    report = import_nicnn(broken_src, tmp_path / "out")
    assert report.imported == 8  # 4 train + 4 test
    reasons = {p.path.name: p.reason for p in report.problems}
    assert set(reasons) == set(BROKEN)
    for name, expected in BROKEN.items():
        assert expected in reasons[name], (name, reasons[name])
    text = (tmp_path / "out" / "import_report.txt").read_text()
    for name, expected in BROKEN.items():
        line = next(line for line in text.splitlines() if name in line)
        assert expected in line
    assert "notes.txt" in text and [p.name for p in report.ignored] == ["notes.txt"]
    assert report.manifest.data["import"]["problems"] == len(BROKEN)
    assert "not the paper's 0..350" in text  # 4 azimuths only
    assert "no val rows" in text  # one clip per cell: round(0.25) = 0


def test_strict_lists_every_problem_and_writes_nothing(broken_src, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NICNNImportError) as info:
        import_nicnn(broken_src, out, strict=True)
    assert isinstance(info.value, ValueError)
    assert {p.path.name for p in info.value.problems} == set(BROKEN)
    for name, expected in BROKEN.items():
        line = next(line for line in str(info.value).splitlines() if name in line)
        assert expected in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temporary folder


def test_missing_and_empty_folders(tmp_path):
    src = tmp_path / "src"
    write_dataset(src, train_sounds=1, azimuths=(0,), tags=("RI01",))
    for f in (src / "train").iterdir():
        f.unlink()
    with pytest.raises(NICNNImportError, match=r"train holds no \.wav files"):
        import_nicnn(src, tmp_path / "out")
    (src / "train").rmdir()
    with pytest.raises(FileNotFoundError, match=r"train not found"):
        import_nicnn(src, tmp_path / "out")
    (src / "train").mkdir()
    (src / "train" / "S000_x_RI03.wav").write_bytes(b"")
    with pytest.raises(NICNNImportError, match="none of its WAV files") as info:
        import_nicnn(src, tmp_path / "out")
    assert [p.path.name for p in info.value.problems] == ["S000_x_RI03.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_refuses_a_non_empty_output(nicnn, tmp_path):
    src = nicnn[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        import_nicnn(src, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    assert import_nicnn(src, tmp_path / "empty", shard_rows=1000).imported == 360
    with pytest.raises(ValueError, match="dtype"):
        import_nicnn(src, tmp_path / "x", dtype="int8")


def test_parse_name():
    assert parse_name("S090_dog_RI02_SNR10.wav") == (90, "reverberant")
    assert parse_name("a005RI01.WAV") == (5, "anechoic")  # off the 10° grid, still an azimuth
    with pytest.raises(ValueError, match="outside 0..359"):
        parse_name("S360_x_RI01.wav")
    with pytest.raises(ValueError, match="ambiguous"):
        parse_name("S010_RI01_RI02.wav")
    with pytest.raises(ValueError, match="no azimuth.*; no environment tag"):
        parse_name("x1a.wav")
