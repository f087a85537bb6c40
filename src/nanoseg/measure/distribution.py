"""Particle-size distributions: summary statistics, lognormal fit and plots.

Particle sizes of this kind are close to lognormal, described by the median
(= geometric mean) and the geometric standard deviation (GSD, dimensionless).
:func:`size_distribution` returns plain floats and lists (JSON-serializable;
missing values are ``nan``, which :func:`json.dumps` writes as ``NaN``).
:func:`plot_psd` draws histograms with the fitted lognormal densities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from nanoseg.atomic import atomic_path

_STATS = ("median", "mean", "geometric_mean", "gsd", "d10", "d90", "lognorm_median",
          "lognorm_gsd", "median_ci_low", "median_ci_high", "gsd_ci_low", "gsd_ci_high")


def _clean(values):
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values) & (values > 0)]


def _median_and_gsd(sample, axis=-1):
    """The median and the GSD (``exp`` of the sample std of the logs) along ``axis``: the statistics
    bootstrapped by :func:`size_distribution`."""
    return np.stack([np.median(sample, axis=axis), np.exp(np.std(np.log(sample), axis=axis, ddof=1))])


def size_distribution(values, n_boot=1000, seed=0, bins=30, unit="nm"):
    """Summarize a particle-size sample.

    Parameters
    ----------
    values : array_like
        Sizes (e.g. ECDs); non-finite and non-positive values are dropped.
    n_boot : int
        Bootstrap resamples for the 95 % confidence intervals (:func:`scipy.stats.bootstrap`,
        percentile method, in batches of at most 2 million values).
    seed : int
        Seed of the bootstrap.
    bins : int or sequence
        Histogram bins, as for :func:`numpy.histogram`.
    unit : str
        Unit of the values, copied to the result.

    Returns
    -------
    dict
        ``count``, ``unit``, ``median``, ``mean``, ``geometric_mean``, ``gsd``
        (``exp`` of the sample std of ``log(values)``), ``d10``, ``d90``
        (percentiles), ``lognorm_median`` and ``lognorm_gsd`` (maximum-likelihood
        fit, ``scipy.stats.lognorm.fit(floc=0)``: median = scale, GSD =
        exp(shape)), ``median_ci_low/high`` and ``gsd_ci_low/high`` (bootstrap
        95 % CIs), ``n_boot``, ``hist_edges`` and ``hist_counts`` (lists).
        With fewer than 2 values: ``count`` and ``nan`` statistics, empty lists.
    """
    x = _clean(values)
    out = {"count": int(x.size), "unit": unit, **dict.fromkeys(_STATS, float("nan")),
           "n_boot": int(n_boot), "hist_edges": [], "hist_counts": []}
    if x.size < 2:
        return out
    logs = np.log(x)
    shape, _, scale = stats.lognorm.fit(x, floc=0)
    out.update(median=np.median(x), mean=x.mean(), geometric_mean=np.exp(logs.mean()),
               gsd=np.exp(logs.std(ddof=1)), d10=np.percentile(x, 10), d90=np.percentile(x, 90),
               lognorm_median=scale, lognorm_gsd=np.exp(shape))
    if n_boot > 0:  # percentile bootstrap of the median and the GSD, on the same resamples
        res = stats.bootstrap((x,), _median_and_gsd, n_resamples=int(n_boot), batch=max(1, 2_000_000 // x.size),
                              vectorized=True, method="percentile", confidence_level=0.95,
                              rng=np.random.default_rng(seed))
        low, high = res.confidence_interval
        out["median_ci_low"], out["median_ci_high"] = low[0], high[0]
        out["gsd_ci_low"], out["gsd_ci_high"] = low[1], high[1]
    counts, edges = np.histogram(x, bins=bins)
    out["hist_counts"], out["hist_edges"] = counts.tolist(), edges.tolist()
    return {k: float(v) if k in _STATS else v for k, v in out.items()}


def plot_psd(values_by_label, path, unit="nm", title=None):
    """Plot size histograms with fitted lognormal densities to a PNG.

    Parameters
    ----------
    values_by_label : dict of str -> array_like
        One histogram per entry (e.g. ``{"prediction": ecd, "manual": ecd_gt}``
        or ``{"ECD": ecd, "min Feret": feret_min}``), on shared bins, as
        densities; each legend entry shows n, the median and GSD of the fit.
    path : path-like
        Output PNG; written atomically (a temporary file renamed into place).
    unit : str
        Axis label unit.
    title : str, optional

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    data = {k: _clean(v) for k, v in values_by_label.items()}
    pooled = np.concatenate([np.zeros(0), *data.values()])
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = np.histogram_bin_edges(pooled, bins=30) if pooled.size else np.linspace(0, 1, 31)
    grid = np.linspace(edges[0], edges[-1], 400)[1:] if pooled.size else None
    for i, (label, x) in enumerate(data.items()):
        color = f"C{i}"
        if x.size < 2:
            ax.plot([], [], color=color, label=f"{label}: n={x.size}")
            continue
        ax.hist(x, bins=edges, density=True, alpha=0.35, color=color)
        shape, _, scale = stats.lognorm.fit(x, floc=0)
        ax.plot(grid, stats.lognorm.pdf(grid, shape, scale=scale), color=color, lw=2,
                label=f"{label}: n={x.size}, median {scale:.1f} {unit}, GSD {np.exp(shape):.2f}")
    ax.set_xlabel(f"size ({unit})")
    ax.set_ylabel(f"density (1/{unit})")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _ecd_values(table, unit: str) -> np.ndarray:
    measurable = table[table["measurable"].astype(bool)] if len(table) else table
    if unit == "nm":
        return measurable["ecd_nm"].to_numpy(float)
    return np.sqrt(4 * measurable["area_px"].to_numpy(float) / np.pi)


def pooled_ecd(tables, infos) -> tuple[np.ndarray, str]:
    """The ECDs of the measurable particles of several images and their unit: nm when every image has a
    pixel size, else px (``nanoseg predict``'s summary and psd.png, the app's PSD)."""
    unit = "nm" if all(i["pixel_size_nm"] for i in infos) else "px"
    return np.concatenate([np.zeros(0), *(_ecd_values(t, unit) for t in tables)]), unit
