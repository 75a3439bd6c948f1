"""Figures of the reproduction, drawn from run records.

Everything is drawn through matplotlib's object interface
(:class:`matplotlib.figure.Figure` rendered by the Agg canvas), so no global
pyplot state or backend is touched, and matplotlib is imported only when a
figure is drawn. Each function writes one PNG (about 100 dpi) and returns its
path; a study without records gives a small figure that says so.

- :func:`heatmaps`: the layout of the paper's Figure 2, one 2x2 panel
  (SGD, SGDW, Adam, AdamW) per grid regime.
- :func:`learning_curves`: val error and val loss per epoch at each
  optimizer's best grid cell.
- :func:`budget_plot`: val error against raw and normalized decay, one line
  per budget.
- :func:`restarts_plot`: AdamWR against AdamW over epochs, run ends marked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightdecay.experiments import analysis

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "all_figures",
    "budget_plot",
    "heatmaps",
    "learning_curves",
    "placeholder",
    "restarts_plot",
]

logger = logging.getLogger(__name__)

DPI = 100
COLOUR_SPAN = 0.10
"""Heatmap colours span at most this much error above the panel's best
(10 points); worse cells saturate."""
_COLOURS = {"SGD": "C0", "SGDW": "C1", "Adam": "C2", "AdamW": "C3", "AdamWR": "C4"}


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _margins(
    fig: Any,
    width: float,
    height: float,
    *,
    right: float = 0.25,
    top: float = 0.4,
    hspace: float = 0.55,
) -> None:
    """Fixed margins in inches (cheaper than a layout engine, which draws the
    figure an extra time to measure it)."""
    fig.subplots_adjust(
        left=0.75 / width,
        right=1.0 - right / width,
        bottom=0.55 / height,
        top=1.0 - top / height,
        wspace=0.25,
        hspace=hspace,
    )


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    logger.info("wrote %s", path)
    return path


def placeholder(path: Path, text: str) -> Path:
    """A small PNG that only says ``text`` (for a study that did not run)."""
    fig = _figure(4.0, 1.2)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    return _save(fig, path)


def _whole_ticks(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _octave(x: float) -> str:
    """``log2`` of a positive number, as an integer when it is one."""
    e = math.log2(x)
    return f"{round(e)}" if abs(e - round(e)) < 1e-9 else f"{e:.2f}"


def _decay_labels(decays: np.ndarray) -> list[str]:
    return ["0" if d == 0 else _octave(d) for d in decays]


def _column_position(decays: np.ndarray, log2_decay: float) -> float:
    """Fractional column index of a refined decay on the categorical axis."""
    cols = [j for j, d in enumerate(decays) if d > 0]
    logs = [math.log2(decays[j]) for j in cols]
    return float(np.interp(log2_decay, logs, cols))


def _heatmap_panel(ax: Axes, grid: analysis.Grid, vmin: float, vmax: float) -> Any:
    from matplotlib.patches import Rectangle

    error = grid.val_error * 100.0
    shown = np.ma.masked_array(error, mask=np.isnan(error) | grid.failed)
    image = ax.imshow(
        shown,
        origin="lower",
        aspect="auto",
        cmap=_cmap(),
        vmin=vmin * 100.0,
        vmax=vmax * 100.0,
        interpolation="nearest",
    )
    n_rows, n_cols = error.shape
    small = n_rows * n_cols <= 100
    for (i, j), value in np.ndenumerate(error):
        if grid.failed[i, j]:
            ax.add_patch(
                Rectangle(
                    (j - 0.5, i - 0.5),
                    1,
                    1,
                    fill=False,
                    hatch="xxx",
                    edgecolor="0.45",
                    linewidth=0.0,
                )
            )
            label = ax.text(j, i, "div", ha="center", va="center", fontsize=6)
            label.set_in_layout(False)
        elif small and math.isfinite(value):
            # viridis_r is light at low error and dark at high error.
            light = value < (vmin + 0.5 * (vmax - vmin)) * 100.0
            label = ax.text(
                j,
                i,
                f"{value:.1f}",
                ha="center",
                va="center",
                fontsize=6,
                color="black" if light else "white",
            )
            label.set_in_layout(False)

    ridge = analysis.ridge(grid, "val_error")
    for row in ridge.rows:
        i = int(np.searchsorted(grid.lrs, row.lr))
        ax.plot(
            row.best.index,
            i,
            marker="o",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="crimson",
            markeredgewidth=1.2,
        )
    used = [row for row in ridge.rows if row.status == analysis.USED]
    if len(used) >= 2:
        xs = [_column_position(grid.decays, row.best.log2_decay) for row in used]
        ys = [int(np.searchsorted(grid.lrs, row.lr)) for row in used]
        ax.plot(xs, ys, color="black", linewidth=1.0, linestyle="--")
    bi, bj = grid.best_cell
    ax.add_patch(
        Rectangle(
            (bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.0
        )
    )

    ax.set_xticks(range(n_cols), _decay_labels(grid.decays), fontsize=7)
    ax.set_yticks(range(n_rows), [_octave(lr) for lr in grid.lrs], fontsize=7)
    ax.set_xlabel("log2 weight decay (0 = none)", fontsize=8)
    ax.set_ylabel("log2 learning rate", fontsize=8)
    best = np.nanmin(grid.val_error)
    slope = analysis.fmt_slope(ridge.fit)
    ax.set_title(
        f"{grid.optimizer}: best {100 * best:.2f} %, slope {slope}", fontsize=9
    )
    return image


def _cmap() -> Any:
    from matplotlib import colormaps

    return colormaps["viridis_r"].with_extremes(bad="0.85")


def heatmaps(records: Sequence[analysis.Record], path: Path) -> Path:
    """Figure 2 of the paper: val error over (decay, learning rate) per regime.

    One 2x2 panel (SGD, SGDW, Adam, AdamW) per regime of the ``"grid"`` study;
    colour is val error in percent, each panel on its own scale from its best
    cell up to at most :data:`COLOUR_SPAN` above it, so the shape of every
    basin shows; the numbers in the cells and titles compare panels. The red
    box is the best cell,
    crimson circles each row's best, the dashed line the refined ridge over the
    rows used for the slope; hatched cells marked "div" diverged or failed.
    """
    grid_records = analysis.select(records, study="grid")
    regimes = sorted({r["config"].get("regime", "") for r in grid_records})
    if not regimes:
        return placeholder(path, "grid study not run")
    fig = _figure(10.0, 7.5 * len(regimes))
    subfigs = fig.subfigures(len(regimes), 1, squeeze=False)[:, 0]
    for subfig, regime in zip(subfigs, regimes, strict=True):
        _margins(subfig, 10.0, 7.5, right=0.1, top=0.75, hspace=0.35)
        axes = subfig.subplots(2, 2)
        for ax, opt in zip(axes.flat, analysis.OPTIMIZERS, strict=True):
            grid = analysis.build_grid(grid_records, opt, regime)
            if grid is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{opt}: not run", ha="center", va="center")
                continue
            shown = grid.val_error[~grid.failed & ~np.isnan(grid.val_error)]
            vmin = float(shown.min()) if shown.size else 0.0
            vmax = float(shown.max()) if shown.size else 1.0
            vmax = max(min(vmax, vmin + COLOUR_SPAN), vmin + 1e-3)
            image = _heatmap_panel(ax, grid, vmin, vmax)
            bar = subfig.colorbar(image, ax=ax, shrink=0.9, pad=0.02, extend="max")
            bar.set_label("val error (%)", fontsize=7)
            bar.ax.tick_params(labelsize=6)
        subfig.suptitle(f"Regime {regime!r}: val error (%)", fontsize=11)
    return _save(fig, path)


def _best_cell_runs(
    records: Sequence[analysis.Record], grid: analysis.Grid
) -> list[analysis.Record]:
    i, j = grid.best_cell
    return [
        r
        for r in analysis.select(
            records, study="grid", optimizer=grid.optimizer, regime=grid.regime
        )
        if float(r["config"]["lr"]) == grid.lrs[i]
        and float(r["config"]["weight_decay"]) == grid.decays[j]
    ]


def learning_curves(records: Sequence[analysis.Record], path: Path) -> Path:
    """Val error and val loss per epoch at each optimizer's best grid cell."""
    grid_records = analysis.select(records, study="grid")
    regimes = sorted({r["config"].get("regime", "") for r in grid_records})
    if not regimes:
        return placeholder(path, "grid study not run")
    fig = _figure(10.0, 3.6 * len(regimes))
    _margins(fig, 10.0, 3.6 * len(regimes))
    axes = fig.subplots(len(regimes), 2, squeeze=False)
    for (ax_err, ax_loss), regime in zip(axes, regimes, strict=True):
        for opt in analysis.OPTIMIZERS:
            grid = analysis.build_grid(grid_records, opt, regime)
            if grid is None:
                continue
            runs = _best_cell_runs(grid_records, grid)
            i, j = grid.best_cell
            label = (
                f"{opt} (lr 2^{_octave(grid.lrs[i])}, decay "
                f"{_decay_labels(grid.decays[j : j + 1])[0]})"
            )
            err = analysis.curve_stats(runs, opt, "val_error")
            loss = analysis.curve_stats(runs, opt, "val_loss")
            colour = _COLOURS.get(opt)
            style = {"color": colour, "label": label, "marker": "o", "markersize": 3}
            ax_err.plot(err.epochs, np.array(err.mean) * 100.0, **style)
            ax_loss.plot(loss.epochs, loss.mean, **style)
        ax_err.set_title(f"Regime {regime!r}: val error at the best cell", fontsize=9)
        ax_loss.set_title(f"Regime {regime!r}: val loss at the best cell", fontsize=9)
        ax_err.set_ylabel("val error (%)", fontsize=8)
        ax_loss.set_ylabel("val cross-entropy", fontsize=8)
        for ax in (ax_err, ax_loss):
            ax.set_xlabel("epoch", fontsize=8)
            _whole_ticks(ax)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        ax_err.legend(fontsize=7)
    return _save(fig, path)


def budget_plot(records: Sequence[analysis.Record], path: Path) -> Path:
    """Val error against raw and normalized decay, one line per budget.

    Decay 0 is off the log axis and not drawn; dotted lines mark each
    budget's refined best.
    """
    bests = analysis.budget_bests(records)
    if not bests:
        return placeholder(path, "budget study not run")
    series: dict[tuple[str, float], list[analysis.BudgetBest]] = {}
    for b in bests:
        series.setdefault((b.optimizer, b.lr), []).append(b)
    fig = _figure(10.0, 3.6 * len(series))
    _margins(fig, 10.0, 3.6 * len(series))
    axes = fig.subplots(len(series), 2, squeeze=False)
    for (ax_raw, ax_norm), ((opt, lr), items) in zip(
        axes, sorted(series.items()), strict=True
    ):
        for k, b in enumerate(sorted(items, key=lambda b: b.epochs)):
            keep = [n for n, d in enumerate(b.decays) if d > 0]
            raw = np.log2([b.decays[n] for n in keep])
            norm = raw - math.log2(b.factor)
            err = np.array([b.val_error[n] for n in keep]) * 100.0
            colour = f"C{k}"
            label = f"{b.epochs} epochs"
            ax_raw.plot(raw, err, marker="o", markersize=3, color=colour, label=label)
            ax_norm.plot(norm, err, marker="o", markersize=3, color=colour, label=label)
            if b.best.edge != "zero":
                ax_raw.axvline(b.best.log2_decay, color=colour, linestyle=":")
                ax_norm.axvline(b.log2_norm, color=colour, linestyle=":")
        title = f"{opt}, lr 2^{_octave(lr)}"
        ax_raw.set_title(f"{title}: raw decay", fontsize=9)
        ax_norm.set_title(f"{title}: normalized decay", fontsize=9)
        ax_raw.set_xlabel("log2 raw decay lambda", fontsize=8)
        ax_norm.set_xlabel("log2 normalized decay lambda / sqrt(b/(B T))", fontsize=8)
        for ax in (ax_raw, ax_norm):
            ax.set_ylabel("val error (%)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        ax_raw.legend(fontsize=7)
    return _save(fig, path)


def restarts_plot(records: Sequence[analysis.Record], path: Path) -> Path:
    """Val error per epoch of AdamWR and AdamW (cosine); run ends marked."""
    wr, plain, ends = analysis.restart_arms(records)
    if not wr and not plain:
        return placeholder(path, "restarts study not run")
    fig = _figure(7.0, 4.0)
    _margins(fig, 7.0, 4.0)
    ax = fig.add_subplot()
    for runs, label in ((wr, "AdamWR (warm restarts)"), (plain, "AdamW (cosine)")):
        if not runs:
            continue
        stats = analysis.curve_stats(runs, label, "val_error")
        mean = np.array(stats.mean) * 100.0
        colour = _COLOURS["AdamWR" if runs is wr else "AdamW"]
        ax.plot(stats.epochs, mean, color=colour, label=f"{label}, {stats.n} seed(s)")
        if stats.n >= 2:
            std = np.array(stats.std) * 100.0
            ax.fill_between(
                stats.epochs,
                mean - std,
                mean + std,
                color=colour,
                alpha=0.2,
                linewidth=0,
            )
        marks = [int(e) for e in ends if float(e).is_integer() and e <= len(mean)]
        ax.plot(
            marks,
            mean[[m - 1 for m in marks]],
            linestyle="none",
            marker="o",
            color=colour,
        )
    for e in ends:
        ax.axvline(e, color="0.6", linestyle=":", linewidth=1.0)
    ax.set_xlabel("epoch (dotted: AdamWR run ends)", fontsize=8)
    _whole_ticks(ax)
    ax.set_ylabel("val error (%)", fontsize=8)
    ax.set_title("Warm restarts: val error per epoch", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def all_figures(records: Sequence[analysis.Record], out_dir: Path) -> dict[str, Path]:
    """Write the four figures into ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    return {
        "heatmaps": heatmaps(records, out_dir / "heatmaps.png"),
        "curves": learning_curves(records, out_dir / "curves.png"),
        "budget": budget_plot(records, out_dir / "budget.png"),
        "restarts": restarts_plot(records, out_dir / "restarts.png"),
    }
