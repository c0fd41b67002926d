import matplotlib.axes
import matplotlib.image
import numpy as np
import pytest

from trainables.bast import metrics, plots


def unit(deg):
    r = np.radians(np.asarray(deg, dtype=float))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def sweep(left_noise: float = 2.0, right_noise: float = 2.0, repeats: int = 3, seed: int = 0):
    """Three samples at every 10° azimuth; predictions off by a random angle scaled per hemifield."""
    rng = np.random.default_rng(seed)
    az = np.repeat(np.arange(0, 360, 10), repeats)
    scale = np.where((az > 0) & (az < 180), left_noise, right_noise)
    pred = unit(az + scale * rng.normal(size=az.size)) * rng.uniform(0.8, 1.2, size=(az.size, 1))
    return pred, unit(az), az


def read_png(path):
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    assert img[..., :3].std() > 0.01, "the image is blank"
    return img


@pytest.fixture
def texts(monkeypatch):
    """Every string drawn with Axes.text, to see the significance annotations after the figure is closed."""
    drawn = []
    original = matplotlib.axes.Axes.text

    def record(self, x, y, s, *args, **kwargs):
        drawn.append(s)
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", record)
    return drawn


def test_polar_azimuth_error(tmp_path):
    pred, target, _ = sweep()
    stats = metrics.per_azimuth(pred, target)
    path = plots.polar_azimuth_error(stats, tmp_path / "deep" / "dir" / "polar.png", title="AD", rmax=10.0)
    assert path == tmp_path / "deep" / "dir" / "polar.png"
    read_png(path)
    # Without a title or rmax, and from azimuths passed separately.
    read_png(plots.polar_azimuth_error(metrics.per_azimuth(pred, target, _), tmp_path / "polar2.png"))


def test_polar_rejects_empty_or_non_azimuth_stats(tmp_path):
    with pytest.raises(ValueError, match="none"):
        plots.polar_azimuth_error([], tmp_path / "p.png")
    pred, target, _ = sweep()
    by_env = metrics.per_environment(pred, target, np.array(["anechoic", "reverberant"] * (len(pred) // 2)))
    with pytest.raises(ValueError, match="per_azimuth"):
        plots.polar_azimuth_error(by_env, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_hemifield_boxplot_without_environment(tmp_path, texts):
    pred, target, _ = sweep()
    read_png(plots.hemifield_boxplot(pred, target, tmp_path / "hemi.png"))
    assert not any(t.startswith("*") for t in texts)  # equal noise on both sides: no asterisk


def test_hemifield_boxplot_with_environments(tmp_path):
    pred, target, az = sweep()
    env = np.array(["anechoic", "reverberant", "anechoic"] * (len(pred) // 3))
    read_png(plots.hemifield_boxplot(pred, target, tmp_path / "hemi.png", azimuth_deg=az, environment=env))


def test_hemifield_boxplot_marks_significant_difference(tmp_path, texts):
    pred, target, az = sweep(left_noise=10.0, right_noise=0.5)
    tests = {t.metric: t for t in metrics.hemifield_tests(pred, target, az)}
    assert tests["ad_deg"].significant  # the data really is lopsided
    read_png(plots.hemifield_boxplot(pred, target, tmp_path / "hemi.png", azimuth_deg=az))
    assert f"* p_FDR = {tests['ad_deg'].p_fdr:.3g}" in texts


def test_prediction_scatter(tmp_path):
    pred, target, _ = sweep()
    path = plots.prediction_scatter(pred, target, tmp_path / "sub" / "scatter.png")
    img = read_png(path)
    assert img.shape[0] > 100 and img.shape[1] > 100


@pytest.mark.parametrize("plot", [plots.hemifield_boxplot, plots.prediction_scatter])
def test_bad_shapes_raise_clear_errors(tmp_path, plot):
    pred, target, _ = sweep()
    with pytest.raises(ValueError, match=r"pred must be an \[N, 2\] array"):
        plot(pred[:, :1], target, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"target must be an \[N, 2\] array"):
        plot(pred, np.ones((len(pred), 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="rows"):
        plot(pred[:-1], target, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_hemifield_boxplot_checks_per_sample_arrays(tmp_path):
    pred, target, az = sweep()
    with pytest.raises(ValueError, match="azimuth_deg must have shape"):
        plots.hemifield_boxplot(pred, target, tmp_path / "bad.png", azimuth_deg=az[:-1])
    with pytest.raises(ValueError, match="environment must have shape"):
        plots.hemifield_boxplot(pred, target, tmp_path / "bad.png", environment=["anechoic"])


def test_figures_are_closed_even_on_error(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    pred, target, _ = sweep()
    before = len(plt.get_fignums())
    plots.prediction_scatter(pred, target, tmp_path / "a.png")
    plots.hemifield_boxplot(pred, target, tmp_path / "b.png")
    plots.polar_azimuth_error(metrics.per_azimuth(pred, target), tmp_path / "c.png")

    def fail(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "_mark_significance", fail)
    with pytest.raises(RuntimeError, match="drawing failed"):
        plots.hemifield_boxplot(pred, target, tmp_path / "d.png")
    assert not (tmp_path / "d.png").exists()  # nothing half-drawn is written
    assert len(plt.get_fignums()) == before
