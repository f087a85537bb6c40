"""Tests for nanoseg.measure.distribution."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from nanoseg.measure import distribution


def test_lognormal_fit_and_bootstrap_ci():
    x = stats.lognorm.rvs(math.log(1.3), scale=175.0, size=1500, random_state=42)
    d = distribution.size_distribution(x, n_boot=500, seed=1)
    assert d["count"] == 1500 and d["unit"] == "nm"
    assert d["lognorm_median"] == pytest.approx(175, rel=0.03)
    assert d["lognorm_gsd"] == pytest.approx(1.3, abs=0.03)
    assert d["median_ci_low"] < 175 < d["median_ci_high"]
    assert d["gsd_ci_low"] < 1.3 < d["gsd_ci_high"]
    assert d["geometric_mean"] == pytest.approx(d["lognorm_median"])
    assert sum(d["hist_counts"]) == 1500 and len(d["hist_edges"]) == 31
    again = distribution.size_distribution(x, n_boot=500, seed=1)
    assert again["median_ci_low"] == d["median_ci_low"]
    text = json.dumps(d)
    assert json.loads(text)["count"] == 1500


def _percentile_bootstrap(x, n_boot, seed):
    """The 95 % percentile-bootstrap CIs of the median and GSD by hand (nanoseg's own code before it used
    scipy.stats.bootstrap): the same resamples from the same seed, drawn row by row."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    medians, gsds = np.median(x[idx], axis=1), np.exp(np.log(x)[idx].std(axis=1, ddof=1))
    return [*np.percentile(medians, [2.5, 97.5]), *np.percentile(gsds, [2.5, 97.5])]


@pytest.mark.parametrize("n", [2, 37, 5000])  # 5000 values: resampled in 3 batches of 400
def test_bootstrap_ci_is_the_percentile_bootstrap(n):
    x = np.random.default_rng(n).lognormal(3.0, 0.4, n)
    d = distribution.size_distribution(x, n_boot=1000, seed=7)
    got = [d["median_ci_low"], d["median_ci_high"], d["gsd_ci_low"], d["gsd_ci_high"]]
    assert got == pytest.approx(_percentile_bootstrap(x, 1000, 7), rel=1e-12)


def test_too_few_values():
    d = distribution.size_distribution([np.nan, -1.0, 12.0], unit="px")
    assert d["count"] == 1 and d["unit"] == "px"
    assert math.isnan(d["median"]) and math.isnan(d["gsd_ci_high"]) and d["hist_counts"] == []
    json.dumps(d)
    assert distribution.size_distribution([])["count"] == 0


def test_plot_psd_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    path = distribution.plot_psd(
        {"prediction": rng.lognormal(5.1, 0.25, 300), "manual": rng.lognormal(5.2, 0.25, 300),
         "empty": []}, tmp_path / "plots" / "psd.png", title="ECD")
    assert path == tmp_path / "plots" / "psd.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["psd.png"]  # no temporary left
