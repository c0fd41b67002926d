import numpy as np
import pytest
import scipy.stats

from trainables.bast import metrics


def unit(deg):
    r = np.radians(np.asarray(deg, dtype=float))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_angular_error_by_hand():
    target = unit([0, 0, 90, 350])
    pred = unit([30, 330, 270, 10]) * np.array([[2.0], [1.0], [0.5], [3.0]])  # scale does not matter
    np.testing.assert_allclose(metrics.angular_error_deg(pred, target), [30, 30, 180, 20], atol=1e-9)
    assert metrics.angular_error_deg([[0.0, 0.0]], [[1.0, 0.0]])[0] == 90.0


def test_summary_by_hand():
    target = unit([0, 90])
    pred = np.array([[1.0, 1.0], [0.0, 1.0]])  # 45° and 0°; squared distances 1 and 0
    assert metrics.summary(pred, target, prefix="val") == {"val_ad_deg": pytest.approx(22.5),
                                                            "val_mse": pytest.approx(0.5)}
    assert set(metrics.summary(pred, target)) == {"ad_deg", "mse"}


def test_exactness_near_zero_error():
    # arccos of a clipped dot product loses precision near 0°; atan2 does not.
    target, pred = unit([0]), unit([1e-6])
    assert metrics.angular_error_deg(pred, target)[0] == pytest.approx(1e-6, rel=1e-6)


def test_per_azimuth_and_environment():
    az = np.array([0, 0, 90, 90, 180])
    target = unit(az)
    pred = unit([10, 30, 90, 100, 180])
    stats = metrics.per_azimuth(pred, target)
    assert [s.group for s in stats] == [0, 90, 180]
    assert [s.n for s in stats] == [2, 2, 1]
    np.testing.assert_allclose([s.ad_deg for s in stats], [20, 5, 0], atol=1e-9)
    env = np.array(["anechoic", "reverberant", "anechoic", "reverberant", "anechoic"])
    by_env = {s.group: s for s in metrics.per_environment(pred, target, env)}
    assert by_env["anechoic"].ad_deg == pytest.approx(10 / 3) and by_env["reverberant"].ad_deg == pytest.approx(20)


def test_target_azimuth_wraps_to_0_360():
    np.testing.assert_array_equal(metrics.target_azimuth_deg(unit([0, 10, 190, 350])), [0, 10, 190, 350])


def _hemifield_data(left_err, right_err):
    """One sample per azimuth 0..350; error left_err[a] at left azimuth a, right_err at 360 - a."""
    az, err = [], []
    for a in range(0, 360, 10):
        az.append(a)
        if 0 < a < 180:
            err.append(left_err(a))
        elif a > 180:
            err.append(right_err(360 - a))
        else:
            err.append(0.0)
    az = np.array(az, dtype=float)
    return unit(az + np.array(err)), unit(az), az


def test_hemifield_paired_t_test_against_scipy():
    rng = np.random.default_rng(0)
    noise = {a: rng.uniform(0, 2) for a in range(10, 180, 10)}
    pred, target, az = _hemifield_data(lambda a: 5 + noise[a], lambda a: 2 + noise[a] * 0.5)
    tests = {(t.metric, t.environment): t for t in metrics.hemifield_tests(pred, target)}
    ad = tests[("ad_deg", "all")]
    left = np.array([5 + noise[a] for a in range(10, 180, 10)])
    right = np.array([2 + noise[a] * 0.5 for a in range(10, 180, 10)])
    ref = scipy.stats.ttest_rel(left, right)
    assert ad.n_pairs == 17
    assert ad.left_mean == pytest.approx(left.mean()) and ad.right_mean == pytest.approx(right.mean())
    assert ad.t == pytest.approx(ref.statistic) and ad.p == pytest.approx(ref.pvalue)
    assert ad.significant
    # BH over the two tests (AD, MSE) by hand: sorted p ascending, p_(i) * m / i, made monotone
    ps = np.array([t.p for t in tests.values()])
    order = np.argsort(ps)
    adj = ps[order] * len(ps) / np.arange(1, len(ps) + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    expected = np.empty_like(adj)
    expected[order] = np.minimum(adj, 1)
    np.testing.assert_allclose([t.p_fdr for t in tests.values()], expected)


def test_symmetric_model_is_not_significant():
    pred, target, _ = _hemifield_data(lambda a: 3.0 + a / 100, lambda a: 3.0 + a / 100)
    for t in metrics.hemifield_tests(pred, target):
        assert not t.significant and t.p_fdr > 0.5


def test_hemifield_per_environment():
    pred, target, az = _hemifield_data(lambda a: 4.0 + (a % 30) / 10, lambda a: 1.0 + (a % 20) / 10)
    pred, target, az = np.vstack([pred, pred]), np.vstack([target, target]), np.concatenate([az, az])
    env = np.array(["anechoic"] * 36 + ["reverberant"] * 36)
    tests = metrics.hemifield_tests(pred, target, az, env)
    assert {(t.metric, t.environment) for t in tests} == {
        (m, e) for m in ("ad_deg", "mse") for e in ("all", "anechoic", "reverberant")}


def test_hemifield_skips_an_environment_without_mirrored_pairs():
    pred, target, az = _hemifield_data(lambda a: 4.0 + (a % 30) / 10, lambda a: 1.0 + (a % 20) / 10)
    # "front" was only measured at 0, 90 and 180: no mirrored pair (90 lacks 270), so it has no test
    front = np.array([0.0, 90.0, 180.0])
    pred = np.vstack([pred, unit(front + 5)])
    target, az = np.vstack([target, unit(front)]), np.concatenate([az, front])
    env = np.array(["anechoic"] * 36 + ["front"] * 3)
    tests = metrics.hemifield_tests(pred, target, az, env)
    assert {(t.metric, t.environment) for t in tests} == {
        (m, e) for m in ("ad_deg", "mse") for e in ("all", "anechoic")}
    alone = {(t.metric, t.environment): t for t in metrics.hemifield_tests(pred[:36], target[:36], az[:36])}
    # the anechoic test itself is unchanged by the skipped environment (only the FDR family differs)
    by_env = {(t.metric, t.environment): t for t in tests}
    assert by_env[("ad_deg", "anechoic")].p == pytest.approx(alone[("ad_deg", "all")].p)
    assert by_env[("ad_deg", "anechoic")].n_pairs == 17


def test_fdr_by_hand():
    # p = [0.01, 0.04, 0.03]; m = 3: sorted 0.01*3/1 = 0.03, 0.03*3/2 = 0.045, 0.04*3/3 = 0.04 -> monotone: 0.03, 0.04, 0.04
    np.testing.assert_allclose(metrics.fdr_correct([0.01, 0.04, 0.03]), [0.03, 0.04, 0.04])


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        metrics.angular_error_deg(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="groups has 2 entries for 3"):
        metrics.per_group(np.zeros((3, 2)), np.zeros((3, 2)), [1, 2])
    with pytest.raises(ValueError, match="mirrored azimuth pairs"):
        metrics.hemifield_tests(unit([0, 90]), unit([0, 90]))
    with pytest.raises(ValueError, match="mirrored azimuth pairs"):  # one pair (90, 270) is not enough
        metrics.hemifield_tests(unit([90, 270]), unit([90, 270]), environment=["a", "b"])


def test_pred_and_target_lengths_must_match():
    # one prediction would otherwise broadcast against all three targets
    for fn in (metrics.angular_error_deg, metrics.squared_error, metrics.summary):
        with pytest.raises(ValueError, match="pred has 1 rows but target has 3"):
            fn(unit([0]), unit([0, 90, 180]))
    with pytest.raises(ValueError, match="pred has 3 rows but target has 2"):
        metrics.hemifield_tests(unit([0, 90, 270]), unit([0, 90]))
