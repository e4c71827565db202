"""PNG figures written by the ``ptycho`` commands (matplotlib, Agg, written atomically).

Every image panel is in object-frame pixels (``x`` = column, ``y`` = row, ``specs/physics.md``)
with axis labels and a colour bar. Uncovered pixels are masked (grey). matplotlib is imported
lazily so ``ptycho --help`` stays light.

- :func:`reconstruction_figure`: amplitude and phase of a reconstruction with scan positions.
- :func:`loss_figure`: the training history (``train_loss``, ``val_loss`` per epoch).
- :func:`comparison_figure`: truth / reconstruction / error for amplitude and phase, SSIM and
  PSNR in the titles (``ptycho evaluate``).
- :func:`demo_figure`: the comparison plus the scan layout and the loss curve on one page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.io import atomic_write

__all__ = [
    "reconstruction_figure",
    "loss_figure",
    "comparison_figure",
    "demo_figure",
    "save_figure",
]

logger = logging.getLogger(__name__)

_AMP_CMAP = "gray"
_PHASE_CMAP = "twilight_shifted"
_ERR_CMAP = "RdBu_r"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    plt = _plt()
    path = Path(path)
    try:
        with atomic_write(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    logger.info("wrote figure %s", path)
    return path


def _extent(shape: tuple[int, ...], origin: Sequence[float]) -> tuple[float, float, float, float]:
    """imshow extent so pixel centres sit at integer object-frame coordinates."""
    h, w = shape[-2:]
    x0, y0 = float(origin[0]), float(origin[1])
    return (x0 - 0.5, x0 + w - 0.5, y0 + h - 0.5, y0 - 0.5)


def _masked(a: np.ndarray, mask: np.ndarray | None) -> np.ma.MaskedArray:
    a = np.asarray(a, dtype=np.float64)
    return np.ma.masked_where(~mask if mask is not None else np.zeros(a.shape, bool), a)


def _limits(a: np.ndarray, mask: np.ndarray | None, lo: float = 0.5, hi: float = 99.5):
    vals = np.asarray(a)[mask] if mask is not None else np.asarray(a).ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None, None
    vmin, vmax = np.percentile(vals, [lo, hi])
    if vmax <= vmin:
        vmax = vmin + 1e-6
    return float(vmin), float(vmax)


def _panel(
    fig: Any,
    ax: Any,
    image: np.ndarray,
    *,
    title: str,
    cmap: str,
    origin=(0.0, 0.0),
    mask: np.ndarray | None = None,
    vmin=None,
    vmax=None,
    label: str = "",
) -> None:
    if vmin is None or vmax is None:
        lo, hi = _limits(image, mask)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    cmap_obj = _plt().get_cmap(cmap).with_extremes(bad="0.85")
    im = ax.imshow(
        _masked(image, mask),
        cmap=cmap_obj,
        vmin=vmin,
        vmax=vmax,
        extent=_extent(image.shape, origin),
        interpolation="nearest",
    )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if label:
        cbar.set_label(label)


def _scatter(
    ax: Any,
    positions: np.ndarray | None,
    color: str = "tab:red",
    label=None,
    size: float | None = None,
) -> None:
    if positions is None or len(positions) == 0:
        return
    p = np.asarray(positions)
    s = size if size is not None else max(1.0, min(8.0, 2500.0 / len(p)))
    ax.scatter(p[:, 0], p[:, 1], s=s, c=color, marker="o", linewidths=0, alpha=0.55, label=label)


def reconstruction_figure(
    path: str | Path,
    amplitude: np.ndarray,
    phase: np.ndarray,
    *,
    positions: np.ndarray | None = None,
    origin=(0.0, 0.0),
    coverage: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Amplitude and phase side by side with the scan positions overlaid (object pixels)."""
    plt = _plt()
    mask = None if coverage is None else np.asarray(coverage) > 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    _panel(
        fig,
        axes[0],
        amplitude,
        title="amplitude",
        cmap=_AMP_CMAP,
        origin=origin,
        mask=mask,
        label="amplitude (a.u.)",
    )
    _panel(
        fig,
        axes[1],
        phase,
        title="phase",
        cmap=_PHASE_CMAP,
        origin=origin,
        mask=mask,
        label="phase (rad)",
    )
    for ax in axes:
        _scatter(ax, positions)
        ax.set_xlim(*_extent(np.shape(amplitude), origin)[:2])
        ax.set_ylim(*_extent(np.shape(amplitude), origin)[2:])
    n = 0 if positions is None else len(positions)
    fig.suptitle(title or f"reconstruction ({n} scan positions, red dots)")
    return save_figure(fig, path)


def _loss_axes(ax: Any, history: Mapping[str, Sequence[float]]) -> None:
    """Plot ``train_loss`` and ``val_loss`` against the epoch, numbered from 1 (a
    :attr:`ptycho_core.engine.TrainResult.history` counts epochs from 0). A series without a
    finite value (no validation data) is left out; NaN epochs are gaps."""
    plotted = False
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        values = np.asarray(history.get(key, []), dtype=np.float64)
        if np.isfinite(values).any():
            epochs = np.arange(1, values.size + 1)
            ax.plot(epochs, values, style, ms=3, label=key.replace("_", " "))
            plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no loss history", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (as configured; default amplitude MAE)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend()


def loss_figure(path: str | Path, history: Mapping[str, Sequence[float]]) -> Path:
    """Loss per epoch (train and validation) from a ``TrainResult.history``, epochs from 1.

    The CLI is the only writer of ``loss.png`` (``specs/cli.md``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    _loss_axes(ax, history)
    return save_figure(fig, path)


def _fmt(metrics: Mapping[str, Any], key: str, spec: str) -> str:
    v = metrics.get(key)
    return "n/a" if v is None else format(float(v), spec)


def _comparison_panels(
    fig: Any,
    axes: Any,
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray,
    metrics: Mapping[str, Any],
    origin,
) -> None:
    """axes: 2×3 (rows amplitude, phase; columns truth, reconstruction, error)."""
    t_amp, r_amp = np.abs(truth), np.abs(recon)
    t_ph, r_ph = np.angle(truth), np.angle(recon)
    amp_lim = _limits(t_amp, mask)
    ph_lim = _limits(t_ph, mask)
    amp_err = r_amp - t_amp
    ph_err = np.angle(np.exp(1j * (r_ph - t_ph)))
    a_e = np.nanpercentile(np.abs(amp_err[mask]), 99) if mask.any() else 1.0
    p_e = np.nanpercentile(np.abs(ph_err[mask]), 99) if mask.any() else 1.0
    amp_t = f"SSIM {_fmt(metrics, 'ssim_amp', '.3f')}, PSNR {_fmt(metrics, 'psnr_amp', '.1f')} dB"
    ph_t = (
        f"SSIM {_fmt(metrics, 'ssim_phase', '.3f')}, PSNR {_fmt(metrics, 'psnr_phase', '.1f')} dB"
    )
    _panel(
        fig,
        axes[0, 0],
        t_amp,
        title="truth amplitude",
        cmap=_AMP_CMAP,
        origin=origin,
        mask=mask,
        vmin=amp_lim[0],
        vmax=amp_lim[1],
    )
    _panel(
        fig,
        axes[0, 1],
        r_amp,
        title=f"reconstruction amplitude\n{amp_t}",
        cmap=_AMP_CMAP,
        origin=origin,
        mask=mask,
        vmin=amp_lim[0],
        vmax=amp_lim[1],
    )
    _panel(
        fig,
        axes[0, 2],
        amp_err,
        title="amplitude error (recon − truth)",
        cmap=_ERR_CMAP,
        origin=origin,
        mask=mask,
        vmin=-max(a_e, 1e-6),
        vmax=max(a_e, 1e-6),
    )
    _panel(
        fig,
        axes[1, 0],
        t_ph,
        title="truth phase",
        cmap=_PHASE_CMAP,
        origin=origin,
        mask=mask,
        vmin=ph_lim[0],
        vmax=ph_lim[1],
        label="rad",
    )
    _panel(
        fig,
        axes[1, 1],
        r_ph,
        title=f"reconstruction phase\n{ph_t}",
        cmap=_PHASE_CMAP,
        origin=origin,
        mask=mask,
        vmin=ph_lim[0],
        vmax=ph_lim[1],
        label="rad",
    )
    _panel(
        fig,
        axes[1, 2],
        ph_err,
        title="phase error (wrapped)",
        cmap=_ERR_CMAP,
        origin=origin,
        mask=mask,
        vmin=-max(p_e, 1e-6),
        vmax=max(p_e, 1e-6),
        label="rad",
    )


def comparison_figure(
    path: str | Path,
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray,
    metrics: Mapping[str, Any],
    *,
    origin=(0.0, 0.0),
    title: str = "",
) -> Path:
    """Truth / reconstruction / error for amplitude (row 1) and phase (row 2).

    ``truth`` and ``recon`` are complex ``(H, W)`` on the same grid, ``recon`` already scaled and
    phase-aligned to the truth; ``mask`` is the scored region; ``metrics`` the
    :func:`ptycho_core.metrics.evaluate` dict.
    """
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(15, 9), constrained_layout=True)
    _comparison_panels(fig, axes, truth, recon, np.asarray(mask, bool), metrics, origin)
    fig.suptitle(title or "reconstruction vs ground truth (scored region; grey = not scored)")
    return save_figure(fig, path)


def demo_figure(
    path: str | Path,
    truth: np.ndarray,
    recon: np.ndarray,
    mask: np.ndarray,
    metrics: Mapping[str, Any],
    history: Mapping[str, Sequence[float]],
    *,
    truth_full: np.ndarray,
    train_positions: np.ndarray,
    test_positions: np.ndarray,
    origin=(0.0, 0.0),
    title: str = "",
) -> Path:
    """One page: the 2×3 comparison on the held-out region, the scan layout and the loss curve."""
    plt = _plt()
    fig = plt.figure(figsize=(19, 9), constrained_layout=True)
    grid = fig.add_gridspec(2, 4)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(3)] for r in range(2)])
    _comparison_panels(fig, axes, truth, recon, np.asarray(mask, bool), metrics, origin)
    ax = fig.add_subplot(grid[0, 3])
    _panel(fig, ax, np.abs(truth_full), title="scan layout on the true amplitude", cmap=_AMP_CMAP)
    _scatter(ax, train_positions, "tab:blue", label=f"train ({len(train_positions)})")
    _scatter(ax, test_positions, "tab:orange", label=f"held out ({len(test_positions)})")
    ax.legend(loc="upper right", fontsize=8, markerscale=4, framealpha=0.8)
    h, w = np.shape(truth_full)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    _loss_axes(fig.add_subplot(grid[1, 3]), history)
    fig.suptitle(title or "ptycho demo: held-out reconstruction vs ground truth")
    return save_figure(fig, path)
