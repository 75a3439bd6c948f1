"""The statistics behind the reproduction's four claims, computed from run records.

Every function here is pure: it takes the run records described by the results
store (plain dicts with ``config``, ``status``, ``final`` and ``curves``) and
returns numbers, never touching files. Each claim function returns a
:class:`ClaimResult` whose statistic is printed with its noise and whose
threshold is one of the module constants below, fixed before any run.

Conventions:

- Errors are fractions in ``[0, 1]``; a run whose status is not ``"ok"`` (or
  whose metric is not finite) counts as error :data:`FAILED_ERROR` and loss
  ``inf``, so it is never the best cell.
- Weight decay is compared in octaves, ``log2(decay)``. Decay 0 is a column of
  its own ("no decay"), off the log axis: a row whose best cell is decay 0 is
  censored, and no refinement reaches into it.
- The best decay of a row is refined by a parabola through the best cell and
  its two neighbours in ``log2(decay)``, its vertex clipped to that bracket; a
  best cell on the edge of the grid is censored, not refined.

Claims (from Loshchilov & Hutter, "Decoupled Weight Decay Regularization"):

- (a) With decoupled decay (SGDW, AdamW) the best decay does not move with the
  learning rate; with L2 (SGD, Adam) it moves against it (a diagonal).
- (b) AdamW at its best setting has a lower test error than Adam with L2.
- (c) Normalized decay keeps the best value across training budgets while the
  best raw decay moves.
- (d) AdamW with warm restarts (AdamWR) is ahead of AdamW at intermediate
  epochs and as good at the end.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightdecay.decay import normalized_weight_decay

__all__ = [
    "BUDGET_MAX_NORM_SHIFT",
    "BUDGET_MIN_RAW_SHIFT",
    "DIAGONAL_MAX_SLOPE",
    "FAILED_ERROR",
    "MIN_SEEDS",
    "MIN_USABLE_ROWS",
    "RESTART_FINAL_TOLERANCE",
    "ROW_EXCLUSION_MARGIN",
    "SEEDS_MIN_SE_MULTIPLE",
    "SEPARABLE_MAX_ABS_SLOPE",
    "BestDecay",
    "BudgetBest",
    "ClaimResult",
    "CurveStats",
    "Grid",
    "LineFit",
    "NoiseSummary",
    "Ridge",
    "RowBest",
    "SeedStats",
    "Table",
    "analyse",
    "binomial_se",
    "budget_bests",
    "build_grid",
    "claim_adamw_vs_adam",
    "claim_normalized_decay",
    "claim_restarts",
    "claim_separability",
    "curve_stats",
    "curve_value",
    "failed_runs",
    "fit_line",
    "fmt_log2",
    "fmt_pct",
    "fmt_slope",
    "fmt_span",
    "near_best_range",
    "noise_summary",
    "normalization_factor",
    "rankdata",
    "record_value",
    "refine_best",
    "restart_arms",
    "ridge",
    "ridge_verdict",
    "run_ends",
    "seed_stats",
    "select",
    "spearman",
    "status_counts",
]

logger = logging.getLogger(__name__)

Record = Mapping[str, Any]

OPTIMIZERS: tuple[str, ...] = ("SGD", "SGDW", "Adam", "AdamW")
DECOUPLED: tuple[str, ...] = ("SGDW", "AdamW")
COUPLED: tuple[str, ...] = ("SGD", "Adam")
METRICS: tuple[str, ...] = ("val_error", "val_loss", "test_error", "test_loss")

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_RUN = "not run"
INCONCLUSIVE = "inconclusive"

# Row status in a ridge of best decays.
USED = "used"
CENSORED_LOW = "censored: lowest decay"
CENSORED_HIGH = "censored: highest decay"
CENSORED_ZERO = "censored: no decay best"
EXCLUDED = "excluded"

# Thresholds, fixed in advance and printed in the report.
FAILED_ERROR = 1.0
"""Error assigned to a diverged or failed run."""
ROW_EXCLUSION_MARGIN = 0.015
"""Rows whose best val error is more than this above the optimizer's best are
left out of the ridge (1.5 percentage points)."""
MIN_USABLE_ROWS = 3
"""Fewest uncensored rows for a slope to count."""
SEPARABLE_MAX_ABS_SLOPE = 0.35
"""Decoupled decay is separable when ``|slope| <=`` this."""
DIAGONAL_MAX_SLOPE = -0.5
"""L2 decay is diagonal when ``slope <=`` this."""
SEEDS_MIN_SE_MULTIPLE = 2.0
"""AdamW must beat Adam+L2 by at least this many standard errors."""
MIN_SEEDS = 2
"""Fewest seeds per optimizer for a standard deviation."""
BUDGET_MAX_NORM_SHIFT = 0.5
"""Largest move (octaves) of the best normalized decay from T to 4T."""
BUDGET_MIN_RAW_SHIFT = 0.5
"""Smallest move (octaves) of the best raw decay from T to 4T."""
RESTART_FINAL_TOLERANCE = 0.003
"""AdamWR's final val error must be within this of AdamW's (0.3 points)."""


# --------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class Table:
    """A small table of already formatted cells, for the report."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of one claim.

    Attributes:
        claim_id: Short id, e.g. ``"a (short)"``, ``"b"``.
        statement: The claim in words.
        statistic: The measured statistic(s) with their noise, as text.
        threshold: The pass rule, as text, built from the module constants.
        verdict: ``"reproduced"``, ``"not reproduced"``, ``"not run"`` or
            ``"inconclusive"``.
        numbers: The numbers behind the verdict.
        notes: Sentences explaining what was seen.
        tables: Detail tables for the report.
    """

    claim_id: str
    statement: str
    statistic: str
    threshold: str
    verdict: str
    numbers: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()


@dataclass(frozen=True)
class LineFit:
    """Least-squares line ``y = intercept + slope * x``.

    ``slope_se`` is the usual standard error from the residuals (NaN with only
    two points).
    """

    slope: float
    slope_se: float
    intercept: float
    n: int


@dataclass(frozen=True)
class BestDecay:
    """The best decay of one row of a grid.

    Attributes:
        index: Column of the best cell in the decays given.
        grid_decay: The decay of the best cell (0.0 for "no decay").
        log2_decay: The refined optimum in octaves (``-inf`` for no decay).
        value: The metric at the best cell.
        edge: ``None`` when refined inside the grid, else ``"low"``, ``"high"``
            or ``"zero"`` (censored).
    """

    index: int
    grid_decay: float
    log2_decay: float
    value: float
    edge: str | None

    @property
    def decay(self) -> float:
        """The refined best decay (0.0 when no decay was best)."""
        return 0.0 if self.edge == "zero" else 2.0**self.log2_decay


@dataclass(frozen=True)
class RowBest:
    """One learning-rate row of a ridge."""

    lr: float
    best: BestDecay
    error: float
    status: str

    @property
    def log2_lr(self) -> float:
        """The learning rate in octaves."""
        return math.log2(self.lr)


@dataclass(frozen=True)
class Ridge:
    """Best decay per learning rate for one optimizer, and its slope.

    Attributes:
        optimizer: Optimizer name.
        regime: Grid regime.
        metric: Metric minimized per row.
        units: ``"paper"`` (the optimizer's own ``weight_decay``) or
            ``"torch"`` (AdamW/SGDW decay divided by the learning rate).
        rows: One entry per learning rate, ascending.
        fit: Slope of ``log2(best decay)`` against ``log2(lr)`` over the used
            rows; ``None`` with fewer than :data:`MIN_USABLE_ROWS`.
        spearman: Rank correlation over the same rows (NaN if undefined).
        best_error: The optimizer's best val error in this grid.
    """

    optimizer: str
    regime: str
    metric: str
    units: str
    rows: tuple[RowBest, ...]
    fit: LineFit | None
    spearman: float
    best_error: float

    def count(self, status: str) -> int:
        """Rows with a status starting with ``status`` (e.g. ``"censored"``)."""
        return sum(row.status.startswith(status) for row in self.rows)


@dataclass(frozen=True)
class Grid:
    """One optimizer's (learning rate, weight decay) grid.

    Cells average all runs with that setting; a failed run counts as error
    :data:`FAILED_ERROR` and loss ``inf``. Missing cells are NaN.

    Attributes:
        optimizer: Optimizer name.
        regime: Grid regime.
        lrs: Learning rates, ascending (rows).
        decays: Weight decays, ascending, 0 first when present (columns).
        val_error: Mean val error per cell.
        val_loss: Mean val loss per cell.
        failed: Whether any run of the cell diverged or failed.
        runs: Number of runs per cell.
        val_size: Validation images per run.
    """

    optimizer: str
    regime: str
    lrs: np.ndarray
    decays: np.ndarray
    val_error: np.ndarray
    val_loss: np.ndarray
    failed: np.ndarray
    runs: np.ndarray
    val_size: int

    def values(self, metric: str) -> np.ndarray:
        """The cell means of ``"val_error"`` or ``"val_loss"``."""
        if metric == "val_error":
            return self.val_error
        if metric == "val_loss":
            return self.val_loss
        raise ValueError(f"metric must be 'val_error' or 'val_loss', got {metric!r}")

    @property
    def best_cell(self) -> tuple[int, int]:
        """(row, column) of the lowest val error, ties to the lower val loss."""
        return _argmin_2d(self.val_error, self.val_loss)


# --------------------------------------------------------------------------
# Basic statistics


def binomial_se(p: float, n: int) -> float:
    """Standard error of an error rate ``p`` measured on ``n`` images.

    .. math:: \\sqrt{p (1 - p) / n}

    Example:
        >>> round(binomial_se(0.1, 10_000), 4)
        0.003
    """
    if not (isinstance(n, int | np.integer) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return math.sqrt(p * (1.0 - p) / n)


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of their ranks."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's r of the tie-averaged ranks).

    Returns NaN with fewer than two points or when either side is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have equal length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    rx = rankdata(x) - (len(x) + 1) / 2.0
    ry = rankdata(y) - (len(y) + 1) / 2.0
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return math.nan if denom == 0.0 else float(rx @ ry) / denom


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit:
    """Ordinary least squares of ``y`` on ``x`` with the slope's standard error.

    Raises:
        ValueError: With fewer than two points or a constant ``x``.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(
            f"x and y must be equal-length 1-d, got {xa.shape}, {ya.shape}"
        )
    n = len(xa)
    if n < 2:
        raise ValueError(f"need at least 2 points, got n={n}")
    dx = xa - xa.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise ValueError(f"x must not be constant, got {xa.tolist()}")
    slope = float(dx @ (ya - ya.mean())) / sxx
    intercept = float(ya.mean() - slope * xa.mean())
    if n > 2:
        resid = ya - (intercept + slope * xa)
        slope_se = math.sqrt(float(resid @ resid) / (n - 2) / sxx)
    else:
        slope_se = math.nan
    return LineFit(slope=slope, slope_se=slope_se, intercept=intercept, n=n)


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with ``n - 1`` in the denominator (NaN for n < 2)."""
    a = np.asarray(values, dtype=float)
    return float(a.std(ddof=1)) if len(a) >= 2 else math.nan


# --------------------------------------------------------------------------
# Reading records


def _config(record: Record) -> Mapping[str, Any]:
    return record["config"]


def failed(record: Record) -> bool:
    """Whether a run diverged or failed."""
    return record.get("status") != "ok"


def _failed_value(metric: str) -> float:
    return FAILED_ERROR if metric.endswith("error") else math.inf


def record_value(record: Record, metric: str) -> float:
    """A run's final ``metric``; a failed run gives error 1.0 or loss ``inf``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if failed(record):
        return _failed_value(metric)
    value = float(record["final"][metric])
    return value if math.isfinite(value) else _failed_value(metric)


def curve_value(record: Record, metric: str, epoch: int) -> float:
    """``metric`` at the end of ``epoch`` (from 1); missing or non-finite
    (a run that stopped early) counts as failed."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    curves = record.get("curves") or {}
    epochs = list(curves.get("epoch", []))
    if epoch in epochs:
        value = float(curves[metric][epochs.index(epoch)])
        if math.isfinite(value):
            return value
    return _failed_value(metric)


def select(records: Iterable[Record], **conditions: Any) -> list[Record]:
    """The records whose config matches every ``key=value`` given."""
    return [
        r
        for r in records
        if all(_config(r).get(key) == value for key, value in conditions.items())
    ]


def _typical(values: Iterable[Any]) -> Any:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _argmin_2d(primary: np.ndarray, secondary: np.ndarray) -> tuple[int, int]:
    best: tuple[float, float] | None = None
    where = (0, 0)
    for (i, j), value in np.ndenumerate(primary):
        if math.isnan(value):
            continue
        key = (float(value), float(secondary[i, j]))
        if best is None or key < best:
            best, where = key, (i, j)
    return where


def build_grid(
    records: Iterable[Record],
    optimizer: str,
    regime: str | None = None,
    study: str = "grid",
) -> Grid | None:
    """Arrange one optimizer's runs of ``study`` (and ``regime``) as a grid.

    Returns:
        The grid, or ``None`` when there are no such runs.
    """
    conditions: dict[str, Any] = {"study": study, "optimizer": optimizer}
    if regime is not None:
        conditions["regime"] = regime
    chosen = select(records, **conditions)
    if not chosen:
        return None
    lrs = np.array(sorted({float(_config(r)["lr"]) for r in chosen}))
    decays = np.array(sorted({float(_config(r)["weight_decay"]) for r in chosen}))
    shape = (len(lrs), len(decays))
    err_sum = np.zeros(shape)
    loss_sum = np.zeros(shape)
    runs = np.zeros(shape, dtype=int)
    bad = np.zeros(shape, dtype=bool)
    for r in chosen:
        i = int(np.searchsorted(lrs, float(_config(r)["lr"])))
        j = int(np.searchsorted(decays, float(_config(r)["weight_decay"])))
        err_sum[i, j] += record_value(r, "val_error")
        loss_sum[i, j] += record_value(r, "val_loss")
        runs[i, j] += 1
        bad[i, j] |= failed(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        val_error = np.where(runs > 0, err_sum / np.maximum(runs, 1), np.nan)
        val_loss = np.where(runs > 0, loss_sum / np.maximum(runs, 1), np.nan)
    return Grid(
        optimizer=optimizer,
        regime=_config(chosen[0]).get("regime", "") if regime is None else regime,
        lrs=lrs,
        decays=decays,
        val_error=val_error,
        val_loss=val_loss,
        failed=bad,
        runs=runs,
        val_size=int(_typical(int(_config(r)["val_size"]) for r in chosen)),
    )


# --------------------------------------------------------------------------
# Best decay of one row, refined in log2


def _parabola_vertex(x: Sequence[float], y: Sequence[float]) -> float:
    """Vertex of the parabola through three points, clipped to ``[x0, x2]``.

    Falls back to the middle point when the three are flat or not convex.
    """
    x0, x1, x2 = x
    y0, y1, y2 = y
    d1 = (x1 - x0) * (y1 - y2)
    d2 = (x1 - x2) * (y1 - y0)
    denom = d1 - d2
    if not math.isfinite(denom) or denom >= 0.0:
        return x1
    vertex = x1 - 0.5 * ((x1 - x0) * d1 - (x1 - x2) * d2) / denom
    return min(max(vertex, x0), x2)


def refine_best(
    decays: Sequence[float],
    values: Sequence[float],
    tiebreak: Sequence[float] | None = None,
    failed: Sequence[bool] | None = None,
) -> BestDecay:
    """The best decay among ``decays`` by ``values``, refined in log2.

    The lowest value wins (ties go to the lower ``tiebreak``, then the smaller
    decay; NaN cells are missing). A best positive decay with a positive
    neighbour on each side is refined by a parabola through the three points
    in ``log2(decay)``, clipped to the two neighbours; when a neighbour is a
    failed run its value is not a measurement, so the grid position is kept.
    A best cell at the smallest or largest positive decay, or at decay 0, is
    censored: its ``edge`` is set and its position is the grid value.

    Args:
        decays: Non-negative decays, one per cell (any order).
        values: The metric per cell; NaN for a missing cell, ``inf`` allowed.
        tiebreak: A second metric for equal ``values``.
        failed: Cells whose runs diverged or failed.

    Raises:
        ValueError: On mismatched lengths, negative decays or no cell present.
    """
    d = np.asarray(decays, dtype=float)
    v = np.asarray(values, dtype=float)
    t = np.zeros_like(v) if tiebreak is None else np.asarray(tiebreak, dtype=float)
    if not d.shape == v.shape == t.shape or d.ndim != 1:
        raise ValueError(
            f"decays, values and tiebreak must have one shape, got "
            f"{d.shape}, {v.shape}, {t.shape}"
        )
    if np.any(~np.isfinite(d)) or np.any(d < 0):
        raise ValueError(f"decays must be finite and >= 0, got {d.tolist()}")
    present = [k for k in range(len(v)) if not math.isnan(v[k])]
    if not present:
        raise ValueError(f"values has no cell present, got {v.tolist()}")
    tb = np.where(np.isnan(t), np.inf, t)
    best = min(present, key=lambda k: (v[k], tb[k], d[k]))

    if d[best] == 0.0:
        return BestDecay(best, 0.0, -math.inf, float(v[best]), "zero")
    positive = sorted((k for k in present if d[k] > 0.0), key=lambda k: d[k])
    pos = positive.index(best)
    grid_log2 = math.log2(d[best])
    if pos == 0:
        return BestDecay(best, float(d[best]), grid_log2, float(v[best]), "low")
    if pos == len(positive) - 1:
        return BestDecay(best, float(d[best]), grid_log2, float(v[best]), "high")
    trio = positive[pos - 1 : pos + 2]
    if failed is not None and any(bool(failed[k]) for k in trio):
        return BestDecay(best, float(d[best]), grid_log2, float(v[best]), None)
    log2_best = _parabola_vertex(
        [math.log2(d[k]) for k in trio], [float(v[k]) for k in trio]
    )
    return BestDecay(best, float(d[best]), log2_best, float(v[best]), None)


def near_best_range(
    decays: Sequence[float], values: Sequence[float], margin: float
) -> tuple[float, float]:
    """The octave span of the cells within ``margin`` of the lowest value.

    Returns ``(lo, hi)``: ``log2`` of the smallest and largest decay whose
    value is at most ``min(values) + margin`` (``-inf`` stands for decay 0).
    A wide span means the data do not pin the optimum down. NaN cells are
    missing.

    Raises:
        ValueError: When no cell is present.
    """
    d = np.asarray(decays, dtype=float)
    v = np.asarray(values, dtype=float)
    present = ~np.isnan(v)
    if not present.any():
        raise ValueError(f"values has no cell present, got {v.tolist()}")
    near = d[present & (v <= np.nanmin(v) + margin)]
    with np.errstate(divide="ignore"):
        logs = np.log2(near)
    return float(logs.min()), float(logs.max())


def fmt_span(span: tuple[float, float]) -> str:
    """An octave span as ``2^a .. 2^b``."""
    lo, hi = span
    return fmt_log2(lo) if lo == hi else f"{fmt_log2(lo)} .. {fmt_log2(hi)}"


_EDGE_STATUS = {"low": CENSORED_LOW, "high": CENSORED_HIGH, "zero": CENSORED_ZERO}


def ridge(grid: Grid, metric: str = "val_error", units: str = "paper") -> Ridge:
    """The best decay per learning rate of ``grid`` and its slope.

    Rows are chosen by val error whatever ``metric`` is: a row whose best val
    error is more than :data:`ROW_EXCLUSION_MARGIN` above the grid's best is
    excluded. The other rows are refined with :func:`refine_best` on
    ``metric`` (ties broken by the other metric); censored rows stay out of
    the fit. The slope is that of ``log2(best decay)`` on ``log2(lr)``.

    Args:
        grid: One optimizer's grid.
        metric: ``"val_error"`` or ``"val_loss"``.
        units: ``"paper"`` for the optimizer's own decay, or ``"torch"``
            (SGDW/AdamW only) for PyTorch's ``lambda / lr``. Refinement in log2
            is the same in both; only the positions shift by ``-log2(lr)``.
    """
    values = grid.values(metric)
    other = grid.values("val_loss" if metric == "val_error" else "val_error")
    if units not in ("paper", "torch"):
        raise ValueError(f"units must be 'paper' or 'torch', got {units!r}")
    if units == "torch" and grid.optimizer not in DECOUPLED:
        raise ValueError(
            f"units='torch' applies to {DECOUPLED}, got optimizer {grid.optimizer!r}"
        )
    best_error = float(np.nanmin(grid.val_error))
    rows: list[RowBest] = []
    for i, lr in enumerate(grid.lrs):
        if np.all(np.isnan(values[i])):
            continue
        best = refine_best(grid.decays, values[i], other[i], grid.failed[i])
        if units == "torch":
            best = _to_torch_units(best, float(lr))
        row_error = float(np.nanmin(grid.val_error[i]))
        if row_error > best_error + ROW_EXCLUSION_MARGIN:
            status = EXCLUDED
        else:
            status = _EDGE_STATUS.get(best.edge or "", USED)
        rows.append(RowBest(lr=float(lr), best=best, error=row_error, status=status))

    used = [row for row in rows if row.status == USED]
    fit: LineFit | None = None
    rho = math.nan
    if len(used) >= MIN_USABLE_ROWS:
        xs = [row.log2_lr for row in used]
        ys = [row.best.log2_decay for row in used]
        fit = fit_line(xs, ys)
        # Rank positions equal up to rounding as ties.
        rho = spearman(xs, [round(y, 6) for y in ys])
    return Ridge(
        optimizer=grid.optimizer,
        regime=grid.regime,
        metric=metric,
        units=units,
        rows=tuple(rows),
        fit=fit,
        spearman=rho,
        best_error=best_error,
    )


def _to_torch_units(best: BestDecay, lr: float) -> BestDecay:
    if best.edge == "zero":
        return best
    shift = math.log2(lr)
    return BestDecay(
        index=best.index,
        grid_decay=best.grid_decay / lr,
        log2_decay=best.log2_decay - shift,
        value=best.value,
        edge=best.edge,
    )


# --------------------------------------------------------------------------
# Formatting


def fmt_pct(p: float, se: float | None = None) -> str:
    """An error fraction as percent, with ``± se`` when given."""
    if not math.isfinite(p):
        return "n/a"
    text = f"{100 * p:.2f}"
    if se is not None and math.isfinite(se):
        text += f" ± {100 * se:.2f}"
    return text + " %"


def fmt_log2(x: float) -> str:
    """An octave position as ``2^x``; ``-inf`` as ``0``."""
    if x == -math.inf:
        return "0"
    return f"2^{x:.2f}" if math.isfinite(x) else "n/a"


def fmt_slope(fit: LineFit | None) -> str:
    """A slope with its standard error and row count."""
    if fit is None:
        return "n/a"
    se = f" ± {fit.slope_se:.2f}" if math.isfinite(fit.slope_se) else " ± n/a"
    return f"{fit.slope:+.2f}{se}"


def _fmt_num(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}f}" if math.isfinite(x) else "n/a"


def _in_regime(regime: str) -> str:
    return f", regime {regime!r}" if regime else ""


def _overall(verdicts: Sequence[str]) -> str:
    if not verdicts or all(v == NOT_RUN for v in verdicts):
        return NOT_RUN
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return INCONCLUSIVE


# --------------------------------------------------------------------------
# Claim (a): separability


SEPARABILITY_STATEMENT = (
    "With decoupled decay (SGDW, AdamW) the best weight decay does not move "
    "with the learning rate (separable landscape); with L2 (SGD, Adam) the best "
    "L2 factor falls as the learning rate rises (diagonal)."
)


def separability_threshold() -> str:
    """The pass rule of claim (a) in words."""
    return (
        f"slope of log2(best decay) vs log2(lr), val error: "
        f"|slope| <= {SEPARABLE_MAX_ABS_SLOPE} for SGDW and AdamW, "
        f"slope <= {DIAGONAL_MAX_SLOPE} for SGD and Adam; "
        f"at least {MIN_USABLE_ROWS} uncensored rows within "
        f"{100 * ROW_EXCLUSION_MARGIN:.1f} points of the optimizer's best"
    )


def ridge_verdict(r: Ridge | None) -> str:
    """Claim (a)'s verdict for one optimizer's ridge."""
    if r is None:
        return NOT_RUN
    if r.fit is None:
        return INCONCLUSIVE
    if r.optimizer in DECOUPLED:
        ok = abs(r.fit.slope) <= SEPARABLE_MAX_ABS_SLOPE
    else:
        ok = r.fit.slope <= DIAGONAL_MAX_SLOPE
    return REPRODUCED if ok else NOT_REPRODUCED


def claim_separability(records: Sequence[Record]) -> list[ClaimResult]:
    """Claim (a) for every regime of the ``"grid"`` study.

    Returns:
        One result per regime (a single ``"not run"`` result without grid
        runs).
    """
    grid_records = select(records, study="grid")
    regimes = sorted({_config(r).get("regime", "") for r in grid_records})
    if not regimes:
        return [
            ClaimResult(
                claim_id="a",
                statement=SEPARABILITY_STATEMENT,
                statistic="no grid runs",
                threshold=separability_threshold(),
                verdict=NOT_RUN,
            )
        ]
    return [_separability_regime(grid_records, regime) for regime in regimes]


def _separability_regime(records: Sequence[Record], regime: str) -> ClaimResult:
    per_opt: dict[str, dict[str, Any]] = {}
    summary_rows: list[tuple[str, ...]] = []
    detail_rows: list[tuple[str, ...]] = []
    parts: list[str] = []
    verdicts: list[str] = []
    notes: list[str] = []
    torch_ridge: Ridge | None = None

    for opt in OPTIMIZERS:
        grid = build_grid(records, opt, regime)
        if grid is None:
            verdicts.append(NOT_RUN)
            summary_rows.append((opt, "val error", "not run", "", "", NOT_RUN))
            parts.append(f"{opt} not run")
            continue
        by_error = ridge(grid, "val_error")
        by_loss = ridge(grid, "val_loss")
        verdict = ridge_verdict(by_error)
        verdicts.append(verdict)
        for r, label in ((by_error, "val error"), (by_loss, "val loss")):
            summary_rows.append(
                (
                    opt,
                    label,
                    fmt_slope(r.fit),
                    _fmt_num(r.spearman),
                    f"{r.count(USED)}/{r.count('censored')}/{r.count(EXCLUDED)}",
                    ridge_verdict(r) if r is by_error else "(second metric)",
                )
            )
        parts.append(
            f"{opt} {fmt_slope(by_error.fit)} (rho {_fmt_num(by_error.spearman)}, "
            f"rows {by_error.count(USED)}/{by_error.count('censored')}/"
            f"{by_error.count(EXCLUDED)})"
        )
        for row_e, row_l in zip(by_error.rows, by_loss.rows, strict=True):
            se = binomial_se(row_e.error, grid.val_size)
            i = int(np.searchsorted(grid.lrs, row_e.lr))
            span = near_best_range(grid.decays, grid.val_error[i], se)
            detail_rows.append(
                (
                    opt,
                    f"{row_e.log2_lr:.2f}",
                    fmt_pct(row_e.error, se),
                    fmt_log2(row_e.best.log2_decay),
                    fmt_span(span),
                    row_e.status,
                    fmt_log2(row_l.best.log2_decay),
                    row_l.status,
                )
            )
        per_opt[opt] = {
            "slope": by_error.fit.slope if by_error.fit else math.nan,
            "slope_se": by_error.fit.slope_se if by_error.fit else math.nan,
            "spearman": by_error.spearman,
            "rows_used": by_error.count(USED),
            "rows_censored": by_error.count("censored"),
            "rows_excluded": by_error.count(EXCLUDED),
            "loss_slope": by_loss.fit.slope if by_loss.fit else math.nan,
            "loss_slope_se": by_loss.fit.slope_se if by_loss.fit else math.nan,
            "best_val_error": by_error.best_error,
            "val_size": grid.val_size,
            "verdict": verdict,
        }
        if verdict == INCONCLUSIVE:
            notes.append(
                f"{opt}: only {by_error.count(USED)} uncensored rows within "
                f"{100 * ROW_EXCLUSION_MARGIN:.1f} points of its best "
                f"(need {MIN_USABLE_ROWS})."
            )
        if opt == "AdamW":
            torch_ridge = ridge(grid, "val_error", units="torch")

    if torch_ridge is not None:
        per_opt["AdamW"]["torch_slope"] = (
            torch_ridge.fit.slope if torch_ridge.fit else math.nan
        )
        per_opt["AdamW"]["torch_slope_se"] = (
            torch_ridge.fit.slope_se if torch_ridge.fit else math.nan
        )
        summary_rows.append(
            (
                "AdamW (PyTorch units)",
                "val error",
                fmt_slope(torch_ridge.fit),
                _fmt_num(torch_ridge.spearman),
                f"{torch_ridge.count(USED)}/{torch_ridge.count('censored')}/"
                f"{torch_ridge.count(EXCLUDED)}",
                "(expected near -1)",
            )
        )
        notes.append(
            "In PyTorch's units (lambda_torch = lambda / lr) the AdamW ridge has "
            f"slope {fmt_slope(torch_ridge.fit)}; a separable landscape in the "
            "paper's units is a diagonal of slope -1 there."
        )
    for opt in OPTIMIZERS:
        if per_opt.get(opt, {}).get("verdict") == NOT_REPRODUCED:
            expected = (
                f"|slope| <= {SEPARABLE_MAX_ABS_SLOPE}"
                if opt in DECOUPLED
                else f"slope <= {DIAGONAL_MAX_SLOPE}"
            )
            notes.append(f"{opt}: slope {per_opt[opt]['slope']:+.2f} fails {expected}.")

    return ClaimResult(
        claim_id=f"a ({regime})" if regime else "a",
        statement=SEPARABILITY_STATEMENT,
        statistic="slope ± SE (rows used/censored/excluded): " + "; ".join(parts),
        threshold=separability_threshold(),
        verdict=_overall(verdicts),
        numbers={"regime": regime, "optimizers": per_opt},
        notes=tuple(notes),
        tables=(
            Table(
                title=f"Ridge slopes{_in_regime(regime)} (rows used/censored/excluded)",
                header=(
                    "optimizer",
                    "metric",
                    "slope ± SE",
                    "Spearman",
                    "rows",
                    "verdict",
                ),
                rows=tuple(summary_rows),
            ),
            Table(
                title=f"Best decay per learning rate{_in_regime(regime)}",
                header=(
                    "optimizer",
                    "log2 lr",
                    "row best val error ± binomial SE",
                    "best decay (val error)",
                    "decays within 1 SE of it",
                    "status",
                    "best decay (val loss)",
                    "status",
                ),
                rows=tuple(detail_rows),
            ),
        ),
    )


# --------------------------------------------------------------------------
# Claim (b): AdamW vs Adam+L2 over fresh seeds


SEEDS_STATEMENT = (
    "At its best setting AdamW reaches a lower test error than Adam with L2 at "
    "its best setting (fresh seeds)."
)


def seeds_threshold() -> str:
    """The pass rule of claim (b) in words."""
    return (
        f"mean test error of AdamW lower than Adam+L2's by at least "
        f"{SEEDS_MIN_SE_MULTIPLE:g} standard errors of the difference "
        f"(>= {MIN_SEEDS} seeds each)"
    )


@dataclass(frozen=True)
class SeedStats:
    """Test and val error of one optimizer over seeds."""

    optimizer: str
    n: int
    test_mean: float
    test_std: float
    val_mean: float
    val_std: float
    settings: tuple[tuple[float, float], ...]
    failures: int
    val_size: int


def seed_stats(
    records: Sequence[Record], optimizer: str, regime: str | None = None
) -> SeedStats | None:
    """Mean and standard deviation over the ``"seeds"`` runs of ``optimizer``
    (in ``regime`` when given)."""
    conditions: dict[str, Any] = {"study": "seeds", "optimizer": optimizer}
    if regime is not None:
        conditions["regime"] = regime
    chosen = select(records, **conditions)
    if not chosen:
        return None
    test = [record_value(r, "test_error") for r in chosen]
    val = [record_value(r, "val_error") for r in chosen]
    settings = sorted(
        {(float(_config(r)["lr"]), float(_config(r)["weight_decay"])) for r in chosen}
    )
    return SeedStats(
        optimizer=optimizer,
        n=len(chosen),
        test_mean=float(np.mean(test)),
        test_std=sample_std(test),
        val_mean=float(np.mean(val)),
        val_std=sample_std(val),
        settings=tuple(settings),
        failures=sum(failed(r) for r in chosen),
        val_size=int(_typical(int(_config(r)["val_size"]) for r in chosen)),
    )


def claim_adamw_vs_adam(records: Sequence[Record]) -> list[ClaimResult]:
    """Claim (b) for every regime of the ``"seeds"`` study.

    Returns:
        One result per regime (a single ``"not run"`` result without seeds
        runs).
    """
    seed_records = select(records, study="seeds")
    regimes = sorted({_config(r).get("regime", "") for r in seed_records})
    if not regimes:
        return [
            ClaimResult(
                claim_id="b",
                statement=SEEDS_STATEMENT,
                statistic="no seeds runs",
                threshold=seeds_threshold(),
                verdict=NOT_RUN,
            )
        ]
    return [_seeds_regime(seed_records, regime) for regime in regimes]


def _seeds_regime(records: Sequence[Record], regime: str) -> ClaimResult:
    adamw = seed_stats(records, "AdamW", regime)
    adam = seed_stats(records, "Adam", regime)
    base = {
        "claim_id": f"b ({regime})" if regime else "b",
        "statement": SEEDS_STATEMENT,
        "threshold": seeds_threshold(),
    }
    arms = [s for s in (adamw, adam) if s is not None]
    table = Table(
        title=f"Test error over fresh seeds{_in_regime(regime)}",
        header=(
            "optimizer",
            "seeds",
            "setting",
            "mean test error",
            "std",
            "mean val error",
            "std",
            "diverged/failed",
        ),
        rows=tuple(
            (
                s.optimizer,
                str(s.n),
                ", ".join(
                    f"lr 2^{math.log2(lr):.2f}, decay {wd:.3g}" for lr, wd in s.settings
                ),
                fmt_pct(s.test_mean),
                fmt_pct(s.test_std),
                fmt_pct(s.val_mean),
                fmt_pct(s.val_std),
                str(s.failures),
            )
            for s in arms
        ),
    )
    notes: list[str] = [
        f"{s.optimizer} ran {len(s.settings)} settings; all pooled."
        for s in arms
        if len(s.settings) > 1
    ]
    if adamw is None or adam is None or min(adamw.n, adam.n) < MIN_SEEDS:
        missing = [
            name
            for name, s in (("AdamW", adamw), ("Adam", adam))
            if s is None or s.n < MIN_SEEDS
        ]
        notes.append(f"Fewer than {MIN_SEEDS} seeds for: {', '.join(missing)}.")
        return ClaimResult(
            statistic="too few seeds",
            verdict=INCONCLUSIVE,
            notes=tuple(notes),
            tables=(table,),
            **base,
        )

    diff = adam.test_mean - adamw.test_mean
    se = math.sqrt(adam.test_std**2 / adam.n + adamw.test_std**2 / adamw.n)
    relative = diff / adam.test_mean if adam.test_mean > 0 else math.nan
    ok = diff > 0 and diff >= SEEDS_MIN_SE_MULTIPLE * se
    z = diff / se if se > 0 else (math.inf if diff > 0 else math.nan)
    statistic = (
        f"AdamW {fmt_pct(adamw.test_mean, adamw.test_std)} vs Adam+L2 "
        f"{fmt_pct(adam.test_mean, adam.test_std)} (mean ± seed std, "
        f"{adamw.n} and {adam.n} seeds); Adam - AdamW = {100 * diff:+.2f} "
        f"± {100 * se:.2f} points ({z:.1f} SE, {100 * relative:+.1f} % relative)"
    )
    # With no decay in either arm both run plain Adam: whatever the numbers
    # say, they say nothing about decoupling.
    undecayed = all(wd == 0 for arm in (adamw, adam) for _, wd in arm.settings)
    if undecayed:
        notes.append(
            "Both arms' best settings have no weight decay, where Adam+L2 and "
            "AdamW are the same algorithm: this comparison cannot test the claim."
        )
    elif ok:
        notes.append(f"AdamW is lower by {z:.1f} standard errors of the difference.")
    elif diff <= 0:
        notes.append(
            f"AdamW's mean test error is not lower: Adam+L2 - AdamW = "
            f"{100 * diff:+.2f} points."
        )
    else:
        notes.append(
            f"AdamW is lower by {z:.1f} standard errors of the difference, short "
            f"of {SEEDS_MIN_SE_MULTIPLE:g}."
        )
    notes.append(
        "Both arms are scored on the same test images, so the test set's own "
        "sampling error is shared and the seed spread is the noise that matters."
    )
    return ClaimResult(
        statistic=statistic,
        verdict=INCONCLUSIVE if undecayed else REPRODUCED if ok else NOT_REPRODUCED,
        numbers={
            "regime": regime,
            "adamw_mean": adamw.test_mean,
            "adamw_std": adamw.test_std,
            "adamw_n": adamw.n,
            "adam_mean": adam.test_mean,
            "adam_std": adam.test_std,
            "adam_n": adam.n,
            "difference": diff,
            "difference_se": se,
            "z": z,
            "relative": relative,
        },
        notes=tuple(notes),
        tables=(table,),
        **base,
    )


# --------------------------------------------------------------------------
# Claim (c): normalized decay across budgets


BUDGET_STATEMENT = (
    "The best normalized decay lambda_norm = lambda / sqrt(b / (B T)) stays put "
    "when the budget T grows, while the best raw decay lambda moves."
)


def budget_threshold() -> str:
    """The pass rule of claim (c) in words."""
    return (
        f"from T to 4T the best normalized decay moves by at most "
        f"{BUDGET_MAX_NORM_SHIFT:g} octave and the best raw decay by at least "
        f"{BUDGET_MIN_RAW_SHIFT:g} octave (val error, refined in log2, "
        f"uncensored)"
    )


def normalization_factor(batch_size: int, train_size: int, epochs: float) -> float:
    """``sqrt(b / (B T))``: raw decay = normalized decay x this factor.

    Raises:
        ValueError: On a non-positive size or budget.
    """
    return normalized_weight_decay(1.0, batch_size, train_size, epochs)


@dataclass(frozen=True)
class BudgetBest:
    """Best decays of one budget of the ``"budget"`` study."""

    optimizer: str
    lr: float
    epochs: int
    decays: tuple[float, ...]
    val_error: tuple[float, ...]
    factor: float
    best: BestDecay
    val_size: int

    @property
    def log2_norm(self) -> float:
        """The refined best normalized decay in octaves."""
        return self.best.log2_decay - math.log2(self.factor)


def budget_bests(records: Sequence[Record]) -> list[BudgetBest]:
    """Best raw and normalized decay per (optimizer, lr, budget)."""
    groups: dict[tuple[str, float, int], list[Record]] = defaultdict(list)
    for r in select(records, study="budget"):
        c = _config(r)
        groups[(c["optimizer"], float(c["lr"]), int(c["epochs"]))].append(r)
    out: list[BudgetBest] = []
    for (opt, lr, epochs), runs in sorted(groups.items()):
        by_decay: dict[float, list[Record]] = defaultdict(list)
        for r in runs:
            by_decay[float(_config(r)["weight_decay"])].append(r)
        decays = sorted(by_decay)
        errors = [
            float(np.mean([record_value(r, "val_error") for r in by_decay[d]]))
            for d in decays
        ]
        losses = [
            float(np.mean([record_value(r, "val_loss") for r in by_decay[d]]))
            for d in decays
        ]
        bad = [any(failed(r) for r in by_decay[d]) for d in decays]
        c = _config(runs[0])
        factor = normalization_factor(
            int(c["batch_size"]), int(c["train_size"]), float(epochs)
        )
        out.append(
            BudgetBest(
                optimizer=opt,
                lr=lr,
                epochs=epochs,
                decays=tuple(decays),
                val_error=tuple(errors),
                factor=factor,
                best=refine_best(decays, errors, losses, bad),
                val_size=int(_typical(int(_config(r)["val_size"]) for r in runs)),
            )
        )
    return out


def claim_normalized_decay(records: Sequence[Record]) -> ClaimResult:
    """Claim (c) on the ``"budget"`` study."""
    bests = budget_bests(records)
    base = {
        "claim_id": "c",
        "statement": BUDGET_STATEMENT,
        "threshold": budget_threshold(),
    }
    if not bests:
        return ClaimResult(statistic="no budget runs", verdict=NOT_RUN, **base)

    rows: list[tuple[str, ...]] = []
    for b in bests:
        censored = _EDGE_STATUS.get(b.best.edge or "", USED)
        se = binomial_se(b.best.value, b.val_size)
        rows.append(
            (
                b.optimizer,
                f"{math.log2(b.lr):.2f}",
                str(b.epochs),
                fmt_pct(b.best.value, se),
                fmt_log2(b.best.log2_decay),
                fmt_span(near_best_range(b.decays, b.val_error, se)),
                fmt_log2(b.log2_norm),
                censored,
            )
        )
    series: dict[tuple[str, float], list[BudgetBest]] = defaultdict(list)
    for b in bests:
        series[(b.optimizer, b.lr)].append(b)

    verdicts: list[str] = []
    parts: list[str] = []
    notes: list[str] = []
    numbers: dict[str, Any] = {}
    for (opt, lr), items in sorted(series.items()):
        label = f"{opt} lr 2^{math.log2(lr):.2f}"
        items.sort(key=lambda b: b.epochs)
        first = items[0]
        wanted = [b for b in items if b.epochs == 4 * first.epochs]
        last = wanted[0] if wanted else items[-1]
        if len(items) < 2:
            verdicts.append(INCONCLUSIVE)
            notes.append(f"{label}: only one budget ({first.epochs} epochs).")
            continue
        if not wanted:
            notes.append(
                f"{label}: no run at 4T = {4 * first.epochs} epochs; compared "
                f"{first.epochs} with {last.epochs}."
            )
        censored = [b.epochs for b in (first, last) if b.best.edge is not None]
        shift_norm = last.log2_norm - first.log2_norm
        shift_raw = last.best.log2_decay - first.best.log2_decay
        step = _grid_step(first.decays)
        numbers[label] = {
            "epochs": (first.epochs, last.epochs),
            "log2_raw": (first.best.log2_decay, last.best.log2_decay),
            "log2_norm": (first.log2_norm, last.log2_norm),
            "shift_raw": shift_raw,
            "shift_norm": shift_norm,
            "grid_step_octaves": step,
            "censored_epochs": censored,
        }
        if censored:
            verdicts.append(INCONCLUSIVE)
            notes.append(
                f"{label}: best decay on the grid edge at {censored} epochs (censored)."
            )
            parts.append(f"{label}: censored")
            continue
        ok = (
            abs(shift_norm) <= BUDGET_MAX_NORM_SHIFT
            and abs(shift_raw) >= BUDGET_MIN_RAW_SHIFT
        )
        verdicts.append(REPRODUCED if ok else NOT_REPRODUCED)
        widths = [_span_width(b) for b in (first, last)]
        numbers[label]["near_best_width_octaves"] = tuple(widths)
        parts.append(
            f"{label}: {first.epochs}->{last.epochs} epochs, normalized "
            f"{shift_norm:+.2f} oct, raw {shift_raw:+.2f} oct (grid step "
            f"{step:.2f} oct; decays within 1 SE of the best span "
            f"{widths[0]:.2f} and {widths[1]:.2f} oct)"
        )
    notes.append(
        "Within one budget the two decays differ by a constant factor, so from "
        "T to T' the raw shift equals the normalized shift plus 0.5 log2(T/T') "
        "(-1 octave for 4T): the test is in effect whether the normalized "
        "optimum stays put."
    )
    return ClaimResult(
        statistic="; ".join(parts) if parts else "no comparable budgets",
        verdict=_overall(verdicts),
        numbers=numbers,
        notes=tuple(notes),
        tables=(
            Table(
                title="Best decay per budget (val error, refined in log2)",
                header=(
                    "optimizer",
                    "log2 lr",
                    "epochs",
                    "best val error ± binomial SE",
                    "best raw decay",
                    "raw decays within 1 SE of it",
                    "best normalized decay",
                    "status",
                ),
                rows=tuple(rows),
            ),
        ),
        **base,
    )


def _span_width(b: BudgetBest) -> float:
    se = binomial_se(b.best.value, b.val_size)
    lo, hi = near_best_range(b.decays, b.val_error, se)
    return hi - lo


def _grid_step(decays: Sequence[float]) -> float:
    logs = [math.log2(d) for d in decays if d > 0]
    return float(np.median(np.diff(logs))) if len(logs) >= 2 else math.nan


# --------------------------------------------------------------------------
# Claim (d): warm restarts


RESTARTS_STATEMENT = (
    "AdamW with warm restarts (AdamWR) is ahead of AdamW with one cosine "
    "schedule at the ends of its intermediate runs, and as good at the end."
)


def restarts_threshold(ends: Sequence[float] = ()) -> str:
    """The pass rule of claim (d) in words, naming the epochs when known."""
    whole = [int(e) for e in ends if float(e).is_integer()]
    early = f" (epochs {', '.join(map(str, whole[1:-1]))})" if len(whole) >= 3 else ""
    last = f" (epoch {whole[-1]})" if len(whole) >= 3 else ""
    return (
        f"AdamWR's val error below AdamW's at every intermediate run end{early} "
        f"and within {100 * RESTART_FINAL_TOLERANCE:.1f} points of it at the "
        f"last{last}"
    )


def run_ends(t0: float, t_mult: float, epochs: float) -> list[float]:
    """Epochs at which the warm-restart runs end, up to ``epochs``.

    Example:
        >>> run_ends(1, 2, 15)
        [1.0, 3.0, 7.0, 15.0]
    """
    if not t0 > 0 or not t_mult >= 1 or not epochs > 0:
        raise ValueError(
            f"need T_0 > 0, T_mult >= 1, epochs > 0, got {t0!r}, {t_mult!r}, {epochs!r}"
        )
    ends: list[float] = []
    length, end = float(t0), float(t0)
    while end <= epochs + 1e-9:
        ends.append(end)
        length *= t_mult
        end += length
    return ends


@dataclass(frozen=True)
class CurveStats:
    """Mean (and seed std) of a metric per epoch over the runs of one arm."""

    label: str
    epochs: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n: int
    val_size: int


def curve_stats(runs: Sequence[Record], label: str, metric: str) -> CurveStats:
    """Per-epoch mean and std of ``metric`` over ``runs`` (failed epochs count
    as failed)."""
    if not runs:
        raise ValueError(f"runs must not be empty for {label!r}")
    last = max(int(_config(r)["epochs"]) for r in runs)
    epochs = tuple(range(1, last + 1))
    table = np.array([[curve_value(r, metric, e) for e in epochs] for r in runs])
    std = table.std(axis=0, ddof=1) if len(runs) >= 2 else np.full(len(epochs), np.nan)
    return CurveStats(
        label=label,
        epochs=epochs,
        mean=tuple(float(x) for x in table.mean(axis=0)),
        std=tuple(float(x) for x in std),
        n=len(runs),
        val_size=int(_typical(int(_config(r)["val_size"]) for r in runs)),
    )


def restart_arms(
    records: Sequence[Record],
) -> tuple[list[Record], list[Record], list[float]]:
    """The AdamWR runs, the matching AdamW cosine runs and AdamWR's run ends."""
    chosen = select(records, study="restarts")
    wr = [r for r in chosen if _config(r)["optimizer"] == "AdamWR"]
    plain = [
        r
        for r in chosen
        if _config(r)["optimizer"] == "AdamW"
        and _config(r).get("schedule", "cosine") == "cosine"
    ]
    if not wr:
        return wr, plain, []
    c = _config(wr[0])
    epochs = max(int(_config(r)["epochs"]) for r in wr)
    ends = run_ends(float(c.get("T_0") or 1.0), float(c.get("T_mult") or 1.0), epochs)
    if plain:
        longest = max(int(_config(r)["epochs"]) for r in plain)
        target = (
            epochs
            if any(int(_config(r)["epochs"]) == epochs for r in plain)
            else longest
        )
        plain = [r for r in plain if int(_config(r)["epochs"]) == target]
    return wr, plain, ends


def claim_restarts(records: Sequence[Record]) -> ClaimResult:
    """Claim (d) on the ``"restarts"`` study."""
    wr, plain, ends = restart_arms(records)
    base = {
        "claim_id": "d",
        "statement": RESTARTS_STATEMENT,
        "threshold": restarts_threshold(ends),
    }
    if not wr and not plain:
        return ClaimResult(statistic="no restarts runs", verdict=NOT_RUN, **base)
    if not wr or not plain:
        missing = "AdamWR" if not wr else "AdamW (cosine)"
        return ClaimResult(
            statistic=f"{missing} not run",
            verdict=INCONCLUSIVE,
            notes=(f"The restarts study has no {missing} runs.",),
            **base,
        )
    a = curve_stats(wr, "AdamWR", "val_error")
    b = curve_stats(plain, "AdamW", "val_error")
    notes: list[str] = []
    int_ends = [int(round(e)) for e in ends if abs(e - round(e)) < 1e-9]
    if len(int_ends) < len(ends):
        notes.append("Run ends that are not whole epochs are skipped.")
    usable = [e for e in int_ends if e <= len(b.epochs)]
    rows: list[tuple[str, ...]] = []
    diffs: dict[int, float] = {}
    for e in usable:
        ma, mb = a.mean[e - 1], b.mean[e - 1]
        diffs[e] = ma - mb
        rows.append(
            (
                str(e),
                fmt_pct(ma, _arm_noise(a, e)),
                fmt_pct(mb, _arm_noise(b, e)),
                f"{100 * (ma - mb):+.2f}",
            )
        )
    table = Table(
        title="Val error at AdamWR's run ends (± seed std, or binomial SE with one "
        "seed)",
        header=("epoch", "AdamWR", "AdamW (cosine)", "AdamWR - AdamW (points)"),
        rows=tuple(rows),
    )
    if len(usable) < 3:
        notes.append(
            f"Need at least 3 run ends for intermediate and final checks, got {usable}."
        )
        return ClaimResult(
            statistic="too few run ends",
            verdict=INCONCLUSIVE,
            numbers={"run_ends": usable, "differences": diffs},
            notes=tuple(notes),
            tables=(table,),
            **base,
        )
    early, final = usable[1:-1], usable[-1]
    early_ok = all(diffs[e] < 0 for e in early)
    final_ok = abs(diffs[final]) <= RESTART_FINAL_TOLERANCE
    for e in early:
        if diffs[e] >= 0:
            notes.append(f"At epoch {e} AdamWR is not ahead ({100 * diffs[e]:+.2f}).")
    if not final_ok:
        notes.append(
            f"At epoch {final} the gap is {100 * diffs[final]:+.2f} points, beyond "
            f"{100 * RESTART_FINAL_TOLERANCE:.1f}."
        )
    statistic = (
        "AdamWR - AdamW val error: "
        + ", ".join(f"epoch {e} {100 * diffs[e]:+.2f}" for e in usable)
        + f" points (binomial SE ~{100 * _arm_noise(b, final):.2f})"
    )
    return ClaimResult(
        statistic=statistic,
        verdict=REPRODUCED if early_ok and final_ok else NOT_REPRODUCED,
        numbers={
            "run_ends": usable,
            "differences": diffs,
            "adamwr": dict(zip(usable, (a.mean[e - 1] for e in usable), strict=True)),
            "adamw": dict(zip(usable, (b.mean[e - 1] for e in usable), strict=True)),
            "seeds": (a.n, b.n),
        },
        notes=tuple(notes),
        tables=(table,),
        **base,
    )


def _arm_noise(stats: CurveStats, epoch: int) -> float:
    std = stats.std[epoch - 1]
    if math.isfinite(std):
        return std
    p = stats.mean[epoch - 1]
    return binomial_se(min(max(p, 0.0), 1.0), stats.val_size)


# --------------------------------------------------------------------------
# Noise and summaries


@dataclass(frozen=True)
class NoiseSummary:
    """The two noise scales of the reproduction.

    Attributes:
        binomial: Per (study, optimizer): (best val error, val size,
            binomial SE).
        seeds: Per optimizer of the ``"seeds"`` study: its :class:`SeedStats`.
        tables: The same as report tables.
    """

    binomial: dict[str, tuple[float, int, float]]
    seeds: dict[str, SeedStats]
    tables: tuple[Table, ...]


def noise_summary(records: Sequence[Record]) -> NoiseSummary:
    """Binomial standard errors at each optimizer's best, and seed spread."""
    binomial: dict[str, tuple[float, int, float]] = {}
    rows: list[tuple[str, ...]] = []
    groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    for r in records:
        c = _config(r)
        groups[(c["study"], c.get("regime", ""), c["optimizer"])].append(r)
    for (study, regime, opt), runs in sorted(groups.items()):
        best = min(record_value(r, "val_error") for r in runs)
        n = int(_typical(int(_config(r)["val_size"]) for r in runs))
        se = binomial_se(best, n)
        label = f"{study}{'/' + regime if regime else ''} {opt}"
        binomial[label] = (best, n, se)
        rows.append((label, str(len(runs)), str(n), fmt_pct(best), fmt_pct(se)))
    seeds: dict[str, SeedStats] = {}
    seed_rows: list[tuple[str, ...]] = []
    pairs = sorted(
        {
            (_config(r).get("regime", ""), _config(r)["optimizer"])
            for r in select(records, study="seeds")
        }
    )
    for regime, opt in pairs:
        s = seed_stats(records, opt, regime)
        if s is None:
            continue
        label = f"{regime} {opt}" if regime else opt
        seeds[label] = s
        se_val = binomial_se(min(max(s.val_mean, 0.0), 1.0), s.val_size)
        seed_rows.append(
            (
                label,
                str(s.n),
                fmt_pct(s.val_mean),
                fmt_pct(s.val_std),
                fmt_pct(se_val),
                fmt_pct(s.test_mean),
                fmt_pct(s.test_std),
            )
        )
    tables = [
        Table(
            title="Binomial standard error sqrt(p(1-p)/n) at each arm's best val error",
            header=(
                "study / optimizer",
                "runs",
                "val images",
                "best val error",
                "binomial SE",
            ),
            rows=tuple(rows),
        )
    ]
    if seed_rows:
        tables.append(
            Table(
                title="Seed-to-seed spread (seeds study)",
                header=(
                    "optimizer",
                    "seeds",
                    "mean val error",
                    "seed std",
                    "binomial SE",
                    "mean test error",
                    "seed std",
                ),
                rows=tuple(seed_rows),
            )
        )
    return NoiseSummary(binomial=binomial, seeds=seeds, tables=tuple(tables))


def status_counts(records: Sequence[Record]) -> dict[str, dict[str, int]]:
    """Number of runs per study and status."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        out[_config(r)["study"]][str(r.get("status"))] += 1
    return {study: dict(counts) for study, counts in sorted(out.items())}


def failed_runs(records: Sequence[Record]) -> list[Record]:
    """The runs that diverged or failed."""
    return [r for r in records if failed(r)]


def analyse(records: Sequence[Record]) -> list[ClaimResult]:
    """All claims, in order: (a) and (b) per regime, (c), (d)."""
    records = list(records)
    return [
        *claim_separability(records),
        *claim_adamw_vs_adam(records),
        claim_normalized_decay(records),
        claim_restarts(records),
    ]
