"""One geometry for picture and sound (issue 16): the shoebox BRIRs of arbitrary source positions, the ray-cast frame
and depth map of the same room, distance in the audio (level, direct-to-reverberant ratio), and the dataset build
that draws anechoic and reverberant scenes."""

import math

import numpy as np
import pytest

from trainables import sounds
from trainables.acoustics.hrtf import kemar
from trainables.acoustics.rooms import measure_rt60
from trainables.acoustics.shoebox import ShoeboxRoom, brirs, direct_to_reverberant_db
from trainables.binaural.data import BinauralBuildConfig, build, load_manifest, read_clips
from trainables.binaural.scene_view import CHAMBER, MATERIALS, Camera
from trainables.binaural.scenes import (Renderer, Room, SceneConfig, Source, draw_room, draw_sources, make_scene,
                                        render_view)

C = 343.0  # pyroomacoustics' speed of sound (m/s)
SIZE, HEAD = (8.0, 6.0, 3.0), (1.5, 3.0, 1.5)


@pytest.fixture(scope="module")
def hrirs():
    return kemar(16000)


@pytest.fixture(scope="module")
def renderer():
    return Renderer(SceneConfig())


def _ahead(r: float, el_deg: float = 0.0, az_deg: float = 0.0) -> list[float]:
    az, el = math.radians(az_deg), math.radians(el_deg)
    return [HEAD[0] + r * math.cos(el) * math.cos(az), HEAD[1] + r * math.cos(el) * math.sin(az),
            HEAD[2] + r * math.sin(el)]


# ------------------------------------------------------------------------------------------------ shoebox BRIRs


def test_free_field_is_the_nearest_hrir_over_distance(hrirs):
    """Anechoic: the response of a source at (az, el, r) is KEMAR's nearest measured direction scaled by 1/r."""
    room = ShoeboxRoom(size_m=SIZE, absorption=(0.0,) * 6, anechoic=True)
    for az, el, r in ((0.0, 0.0, 1.0), (30.0, -10.0, 2.0), (-25.0, 20.0, 4.0)):
        (ir,) = brirs(hrirs, room, HEAD, [_ahead(r, el, az)])
        want = hrirs.ir[hrirs.nearest(az, el)] / r
        assert ir.shape == want.shape
        np.testing.assert_allclose(ir, want, atol=1e-6)


def test_direct_path_follows_one_over_r_and_reflections_come_after_it(hrirs):
    """In a reverberant room, before the first reflection arrives the response is the free-field one (1/r); the
    first reflection (floor and ceiling, mirrored 1.5 m: a path of sqrt(r^2 + 9) m) arrives when geometry says."""
    wet = ShoeboxRoom(size_m=SIZE, absorption=(0.2,) * 6)
    dry = ShoeboxRoom(size_m=SIZE, absorption=(0.0,) * 6, anechoic=True)
    heads = {}
    for r in (1.0, 4.0):
        (w,) = brirs(hrirs, wet, HEAD, [_ahead(r)])
        (d,) = brirs(hrirs, dry, HEAD, [_ahead(r)])
        first = (math.sqrt(r**2 + 9.0) - r) / C * 16000  # samples after the direct sound
        k = math.floor(first)
        np.testing.assert_allclose(w[:, :k], d[:, :k], atol=1e-9)
        assert np.abs(w[:, k + 2: k + 60] - d[:, k + 2: k + 60]).max() > 1e-3 / r  # the reflection is there
        heads[r] = np.abs(d).max()
    assert heads[1.0] / heads[4.0] == pytest.approx(4.0, rel=1e-6)


def test_late_tail_decays_at_the_rooms_reverberation_time(hrirs):
    """The statistical tail continues the image sources at Eyring's RT60: measured T20 within 25 % of it."""
    for a in (0.15, 0.3):
        room = ShoeboxRoom(size_m=(7.0, 5.0, 3.0), absorption=(a,) * 6, max_seconds=0.8)
        (ir,) = brirs(hrirs, room, [1.0, 2.5, 1.5], [[3.0, 2.5, 1.5]])
        assert measure_rt60(ir, 16000, decay_db=20.0) == pytest.approx(room.rt60_eyring(), rel=0.25)


def test_per_wall_absorption_changes_the_reverberation(hrirs):
    hard = ShoeboxRoom(size_m=SIZE, absorption=(0.05,) * 6)
    foam_front = ShoeboxRoom(size_m=SIZE, absorption=(0.05, 0.9, 0.05, 0.05, 0.05, 0.05))
    assert foam_front.rt60_eyring() < hard.rt60_eyring()
    (h,) = brirs(hrirs, hard, HEAD, [_ahead(2.0)])
    (f,) = brirs(hrirs, foam_front, HEAD, [_ahead(2.0)])
    assert direct_to_reverberant_db(f, 16000) > direct_to_reverberant_db(h, 16000) + 1.0


def test_shoebox_rejects_bad_rooms_and_positions(hrirs):
    with pytest.raises(ValueError, match="east=1.2"):
        ShoeboxRoom(size_m=SIZE, absorption=(0.1, 1.2, 0.1, 0.1, 0.1, 0.1))
    room = ShoeboxRoom(size_m=SIZE, absorption=(0.1,) * 6)
    with pytest.raises(ValueError, match="source 0 .* outside the room"):
        brirs(hrirs, room, HEAD, [[9.0, 3.0, 1.5]])


# ------------------------------------------------------------------------------------------------ distance in the audio


def test_one_source_at_1m_and_4m_gives_different_targets_in_a_room_but_not_in_free_field(renderer):
    """The old scenes' flaw: a lone anechoic source sounded the same at 1 m and 4 m after normalisation. In a room the
    direct-to-reverberant ratio now tells the distance; the free field alone still cannot (documented)."""
    cfg = renderer.cfg
    dry = sounds.generate_sound("noise", 16000, 16000, np.random.default_rng(0))[None]
    room = Room("reverberant", SIZE, HEAD, ("plaster",) * 6, (0.2,) * 6)
    chamber = Room("anechoic", SIZE, HEAD, (CHAMBER,) * 6, (1.0,) * 6)
    near, far = (renderer.render(room, [Source("noise", 10.0, r, 0.0)], dry) for r in (1.0, 4.0))
    assert np.linalg.norm(near - far) > 0.3 * np.linalg.norm(near)
    ir_near, ir_far = (renderer.responses(room, [Source("noise", 10.0, r, 0.0)])[0] for r in (1.0, 4.0))
    assert direct_to_reverberant_db(ir_near, cfg.sample_rate) > direct_to_reverberant_db(ir_far, cfg.sample_rate) + 6
    a, b = (renderer.render(chamber, [Source("noise", 10.0, r, 0.0)], dry) for r in (1.0, 4.0))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_one_gain_per_scene_keeps_the_level_relation_between_sources(renderer):
    """Two sources in one direction of a chamber, at 1 m (0 dB) and 3 m (-3 dB), each playing one click at a
    different time: after the scene's single gain the far click is 10^(-3/20) / 3 of the near one, and the loudest
    sample is 0.9."""
    chamber = Room("anechoic", SIZE, HEAD, (CHAMBER,) * 6, (1.0,) * 6)
    srcs = [Source("clicks", 20.0, 1.0, 0.0), Source("clicks", 20.0, 3.0, -3.0)]
    dry = np.zeros((2, 8000))
    dry[0, 0] = dry[1, 4000] = 1.0
    mix = renderer.render(chamber, srcs, dry)
    near, far = np.abs(mix[:, :2000]).max(), np.abs(mix[:, 4000:]).max()
    assert near == pytest.approx(0.9, abs=1e-6)
    assert far / near == pytest.approx(10 ** (-3 / 20) / 3, rel=1e-4)


# ------------------------------------------------------------------------------------------------ picture


def test_depth_of_far_wall_and_floor_matches_the_room():
    """Hand-computed ray lengths: the far wall at forward distance Lx - x, the floor at ear height / tan(down)."""
    cfg = SceneConfig()
    room = Room("reverberant", SIZE, HEAD, ("plaster",) * 6, (0.05,) * 6)
    _, depth, _ = render_view(cfg, room, [], np.random.default_rng(0))
    cam = Camera(cfg.image_size, cfg.hfov_deg)
    H, W = cfg.image_size
    f = cam.focal
    u, v = (W / 2 - 0.5 - W / 2) / f, (H / 2 - 0.5 - H / 2) / f  # the pixel just up-left of the centre
    assert depth[0, H // 2 - 1, W // 2 - 1] == pytest.approx((SIZE[0] - HEAD[0]) * math.sqrt(1 + u * u + v * v),
                                                            rel=1e-5)
    v = (H - 0.5 - H / 2) / f  # bottom row, looking down by atan(v)
    t = HEAD[2] / v  # forward metres to the floor (shorter than the 6.5 m to the wall)
    assert depth[0, H - 1, W // 2] == pytest.approx(t * math.sqrt(1 + ((0.5) / f) ** 2 + v * v), rel=1e-5)


def test_object_drawn_where_it_is_with_its_physical_size():
    """A 0.5 m object at 1 m and a 1 m object at 2 m look the same size; only their depth tells them apart."""
    cfg = SceneConfig()
    room = Room("reverberant", SIZE, HEAD, ("plaster",) * 6, (0.05,) * 6)
    cam = Camera(cfg.image_size, cfg.hfov_deg)
    seen = []
    for r, size in ((1.0, 0.5), (2.0, 1.0)):
        _, depth, (s,) = render_view(cfg, room, [Source("noise", 0.0, r, 0.0, 5.0, size)], np.random.default_rng(0))
        row, col = cam.project(room.position(0.0, 5.0, r) - np.array(HEAD))
        r0, c0, r1, c1 = s.box
        assert abs((r0 + r1) / 2 - row) <= 1.0 and abs((c0 + c1) / 2 - col) <= 1.0
        assert c1 - c0 == pytest.approx(cam.focal * size / (r * math.cos(math.radians(5.0))), abs=1.0)
        seen.append((c1 - c0, float(depth[0, int(row), int(col)])))
    assert seen[0][0] == seen[1][0]
    assert seen[1][1] == pytest.approx(2 * seen[0][1], rel=0.02)


def _size_and_depth_fits(object_size_m) -> tuple[float, float]:
    """Over 150 drawn single-source scenes: R^2 of log distance against log box width, and against log depth-map
    median inside the box."""
    cfg = SceneConfig(max_sources=1, object_size_m=object_size_m)
    width, dist, box_depth = [], [], []
    for i in range(150):
        rng = np.random.default_rng([5, i])
        room = draw_room(cfg, "reverberant", rng)
        _, depth, (s,) = render_view(cfg, room, draw_sources(cfg, room, rng), rng)
        r0, c0, r1, c1 = s.box
        if c1 - c0 < 2 or r1 - r0 < 2 or c0 == 0 or c1 == cfg.image_size[1]:
            continue  # hidden or cut by the frame: its width is not its size
        width.append(c1 - c0)
        dist.append(s.distance_m)
        box_depth.append(np.median(depth[0, r0:r1, c0:c1]))
    assert len(dist) > 80

    def r2(x):
        return float(np.corrcoef(np.log(x), np.log(dist))[0, 1] ** 2)

    return r2(width), r2(box_depth)


def test_pixel_size_alone_does_not_give_distance_but_depth_does():
    """With one object size (the old scenes) the box width gives the distance (measured R^2 0.97); with sizes drawn
    from 0.2-1.0 m it explains much less (0.64), while the depth map still gives it (0.998)."""
    fixed_width, _ = _size_and_depth_fits(0.5)
    drawn_width, drawn_depth = _size_and_depth_fits((0.2, 1.0))
    assert fixed_width > 0.9
    assert drawn_width < 0.75
    assert drawn_depth > 0.95


def test_surfaces_are_painted_by_material_and_chambers_only_in_anechoic_scenes():
    cfg = SceneConfig()
    for material in ("brick", "curtain", "foam", "wood"):
        room = Room("reverberant", SIZE, HEAD, (material,) * 6, (0.1,) * 6)
        image, _, _ = render_view(cfg, room, [], np.random.default_rng(0))
        far = image[:, 24:40, 48:80].reshape(3, -1).mean(axis=1) / 255  # the far wall
        base = np.asarray(MATERIALS[material][1])
        cos = far @ base / np.linalg.norm(far) / np.linalg.norm(base)
        assert cos > 0.97, (material, far, base)
    for i in range(20):
        rng = np.random.default_rng(i)
        assert set(draw_room(cfg, "anechoic", rng).materials) == {CHAMBER}
        rev = draw_room(cfg, "reverberant", rng)
        assert CHAMBER not in rev.materials
        for m, a in zip(rev.materials, rev.absorption):
            lo, hi = MATERIALS[m][0]
            assert lo <= a <= hi


def test_sources_are_in_the_room_and_in_view(renderer):
    cfg = renderer.cfg
    for i in range(30):
        scene = make_scene(cfg, renderer, 3, i, 800, "anechoic")
        room = scene.room
        for s in scene.sources:
            p = room.position(s.azimuth_deg, s.elevation_deg, s.distance_m)
            assert all(0 < x < side for x, side in zip(p, room.size_m)), (i, s)
            assert abs(s.elevation_deg) <= cfg.max_elevation_deg + 1e-9
            assert cfg.object_size_m[0] <= s.size_m <= cfg.object_size_m[1]
            assert 0.5 <= math.hypot(p[0] - room.listener_m[0], p[1] - room.listener_m[1])


# ------------------------------------------------------------------------------------------------ dataset


def test_build_draws_both_environments_with_their_rooms(tmp_path):
    cfg = BinauralBuildConfig(scenes=12, shard_rows=8, val_fraction=0.2, test_fraction=0.2, clip_seconds=0.2,
                              test_clip_seconds=0.3, environments=("anechoic", "reverberant"),
                              scene=SceneConfig(max_sources=2))
    m = build(cfg, tmp_path / "both")
    clips = [c for s in ("train", "val", "test") for c in read_clips(m.root, s)]
    assert len(clips) == 12 and len({c.scene_id for c in clips}) == 12  # one row per scene
    envs = {c.environment for c in clips}
    assert envs == {"anechoic", "reverberant"}
    rooms = load_manifest(m.root).data["rooms"]
    assert len(rooms) == 12
    for c in clips:
        room = rooms[c.scene_id]
        assert room["environment"] == c.environment and c.clip_id == f"{c.scene_id}/{c.environment}"
        chamber = set(room["materials"].values()) == {CHAMBER}
        assert chamber == (c.environment == "anechoic")
        assert (room["rt60_eyring_s"] > 0.05) == (c.environment == "reverberant")
    with pytest.raises(ValueError, match="reverberant_fraction"):
        BinauralBuildConfig(reverberant_fraction=1.5)
