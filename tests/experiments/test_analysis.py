"""Tests of the claim statistics on synthetic records with known answers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightdecay.experiments import analysis as A

VAL_SIZE = 1000


def record(
    study: str,
    optimizer: str,
    lr: float,
    weight_decay: float,
    val_error: float,
    *,
    regime: str = "",
    epochs: int = 4,
    seed: int = 0,
    status: str = "ok",
    test_error: float | None = None,
    curve: list[float] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """A run record as the store returns it; loss is 3x the error."""
    cfg: dict[str, Any] = {
        "study": study,
        "regime": regime,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "weight_decay_norm": None,
        "epochs": epochs,
        "seed": seed,
        "model": "mlp_bn",
        "train_size": 5000,
        "val_size": VAL_SIZE,
        "batch_size": 128,
        "schedule": "cosine",
        "T_0": None,
        "T_mult": None,
        "data": "embedded",
    }
    cfg.update(config)
    test = val_error if test_error is None else test_error
    final = {
        "train_loss": 3 * val_error,
        "val_loss": 3 * val_error,
        "val_error": val_error,
        "test_loss": 3 * test,
        "test_error": test,
    }
    errors = [val_error] * epochs if curve is None else list(curve)
    if status != "ok":
        final = {k: math.nan for k in final}
        errors = errors[:1]
    curves = {
        "epoch": list(range(1, len(errors) + 1)),
        "train_loss": [3 * e for e in errors],
        "val_loss": [3 * e for e in errors],
        "val_error": errors,
        "test_loss": [3 * e for e in errors],
        "test_error": errors,
    }
    return {
        "key": f"{study}-{optimizer}-{lr}-{weight_decay}-{epochs}-{seed}",
        "config": cfg,
        "status": status,
        "diverged_step": 5 if status == "diverged" else None,
        "final": final,
        "curves": curves,
        "wall_s": 1.0,
    }


def bowl(x: float, centre: float, lr_log2: float) -> float:
    """Val error: a parabola in log2(decay) around ``centre``, plus a row term."""
    return 0.10 + 0.004 * (x - centre) ** 2 + 0.001 * (lr_log2 + 7) ** 2


def grid_records(
    optimizer: str,
    slope: float,
    *,
    centre: float = -12.3,
    lr_log2: tuple[int, ...] = (-9, -8, -7, -6, -5),
    decay_log2: tuple[int, ...] = tuple(range(-17, -7)),
    zero: bool = True,
    regime: str = "short",
) -> list[dict[str, Any]]:
    """A grid whose best log2(decay) is ``centre + slope * (log2 lr + 7)``."""
    out = []
    for ll in lr_log2:
        optimum = centre + slope * (ll + 7)
        for dl in decay_log2:
            out.append(
                record(
                    "grid",
                    optimizer,
                    2.0**ll,
                    2.0**dl,
                    bowl(dl, optimum, ll),
                    regime=regime,
                )
            )
        if zero:
            out.append(
                record(
                    "grid",
                    optimizer,
                    2.0**ll,
                    0.0,
                    bowl(-30, optimum, ll),
                    regime=regime,
                )
            )
    return out


def paper_grid() -> list[dict[str, Any]]:
    return [
        *grid_records("SGD", -1.0),
        *grid_records("SGDW", 0.0),
        *grid_records("Adam", -1.0),
        *grid_records("AdamW", 0.0),
    ]


# --------------------------------------------------------------------------
# Basic statistics


def test_binomial_se_closed_form_and_bad_input() -> None:
    assert A.binomial_se(0.1, 10_000) == pytest.approx(0.003)
    assert A.binomial_se(0.0, 50) == 0.0
    with pytest.raises(ValueError, match="p must be"):
        A.binomial_se(1.5, 10)
    with pytest.raises(ValueError, match="n must be"):
        A.binomial_se(0.5, 0)


def test_spearman_matches_hand_computed_values() -> None:
    # No ties: d = (-1, 1, -1, 1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8.
    assert A.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # Ties: y ranks (1, 2.5, 2.5, 4); r = 4.5 / sqrt(5 * 4.5) = sqrt(0.9).
    assert A.spearman([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(math.sqrt(0.9))
    assert A.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(A.spearman([1, 2, 3], [5, 5, 5]))


def test_rankdata_averages_ties() -> None:
    np.testing.assert_array_equal(A.rankdata([10, 30, 20, 20]), [1, 4, 2.5, 2.5])


def test_fit_line_slope_and_standard_error_closed_form() -> None:
    # (0,0), (1,1), (2,1): slope 1/2, SSR 1/6, SE = sqrt(SSR / 1 / Sxx=2).
    fit = A.fit_line([0, 1, 2], [0, 1, 1])
    assert fit.slope == pytest.approx(0.5)
    assert fit.intercept == pytest.approx(1 / 6)
    assert fit.slope_se == pytest.approx(math.sqrt(1 / 12))
    with pytest.raises(ValueError, match="x must not be constant"):
        A.fit_line([1, 1, 1], [0, 1, 2])


# --------------------------------------------------------------------------
# Refinement of one row


def test_refine_best_recovers_vertex_of_a_parabola_on_uneven_grid() -> None:
    decays = [2.0**-10, 2.0**-9, 2.0**-7.5, 2.0**-6]
    values = [(math.log2(d) + 8.2) ** 2 for d in decays]
    best = A.refine_best(decays, values)
    assert best.edge is None
    assert best.log2_decay == pytest.approx(-8.2)
    assert best.grid_decay == 2.0**-7.5


@settings(max_examples=60, deadline=None)
@given(
    centre=st.floats(-15.49, -8.51),
    curvature=st.floats(1e-4, 1.0),
    offset=st.floats(0.0, 0.5),
    zero_value=st.floats(0.6, 1.0),
)
def test_refine_best_is_exact_for_any_interior_parabola(
    centre: float, curvature: float, offset: float, zero_value: float
) -> None:
    decays = [0.0] + [2.0**k for k in range(-16, -7)]
    values = [zero_value + offset] + [
        offset + curvature * (k - centre) ** 2 for k in range(-16, -7)
    ]
    best = A.refine_best(decays, values)
    assert best.edge is None
    assert best.log2_decay == pytest.approx(centre, abs=1e-6)
    assert abs(math.log2(best.grid_decay) - centre) <= 0.5 + 1e-9


def test_refine_best_tie_lands_between_and_is_clipped() -> None:
    # A tie goes to the smaller decay; the parabola puts the optimum between.
    best = A.refine_best([1 / 16, 1 / 8, 1 / 4, 1 / 2], [0.3, 0.1, 0.1, 0.3])
    assert best.grid_decay == 1 / 8
    assert best.log2_decay == pytest.approx(-2.5)
    # y = 0.1 x^2 - 0.6 x + 1 has its vertex at 3, clipped to the bracket [0, 2].
    assert A._parabola_vertex([0, 1, 2], [1.0, 0.5, 0.2]) == 2
    assert A._parabola_vertex([0, 1, 2], [0.5, 0.5, 0.5]) == 1


def test_refine_best_keeps_grid_position_next_to_a_failed_run() -> None:
    decays = [1 / 8, 1 / 4, 1 / 2, 1.0]
    values = [0.3, 0.10, 0.09, A.FAILED_ERROR]
    assert A.refine_best(decays, values).log2_decay < -1.0
    kept = A.refine_best(decays, values, failed=[False, False, False, True])
    assert kept.log2_decay == -1.0 and kept.edge is None


def test_refine_best_censors_edges_and_never_refines_into_zero() -> None:
    decays = [0.0, 0.25, 0.5, 1.0]
    low = A.refine_best(decays, [0.12, 0.10, 0.11, 0.20])
    assert low.edge == "low" and low.log2_decay == -2.0
    high = A.refine_best(decays, [0.30, 0.20, 0.15, 0.10])
    assert high.edge == "high" and high.log2_decay == 0.0
    zero = A.refine_best(decays, [0.05, 0.10, 0.15, 0.20])
    assert zero.edge == "zero" and zero.decay == 0.0 and zero.log2_decay == -math.inf


def test_refine_best_skips_missing_cells_and_rejects_bad_input() -> None:
    best = A.refine_best([0.25, 0.5, 1.0, 2.0], [0.2, math.nan, 0.1, 0.3])
    assert best.grid_decay == 1.0 and best.edge is None
    with pytest.raises(ValueError, match="decays must be"):
        A.refine_best([-1.0, 1.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="no cell"):
        A.refine_best([1.0, 2.0], [math.nan, math.nan])


def test_near_best_range_spans_cells_within_the_margin() -> None:
    decays = [0.0, 1 / 8, 1 / 4, 1 / 2, 1.0]
    values = [0.13, 0.11, 0.10, 0.105, 0.2]
    assert A.near_best_range(decays, values, 0.006) == (-2.0, -1.0)
    assert A.near_best_range(decays, values, 0.03) == (-math.inf, -1.0)
    assert A.fmt_span((-math.inf, -1.0)) == "0 .. 2^-1.00"
    assert A.fmt_span((-2.0, -2.0)) == "2^-2.00"


# --------------------------------------------------------------------------
# Claim (a)


@pytest.mark.parametrize("slope", [0.0, -1.0, -0.5])
def test_ridge_recovers_known_slope(slope: float) -> None:
    grid = A.build_grid(grid_records("AdamW", slope), "AdamW", "short")
    assert grid is not None
    r = A.ridge(grid, "val_error")
    assert r.count(A.USED) == 5
    assert r.fit is not None
    assert abs(r.fit.slope - slope) < 0.05
    expected = [-12.3 + slope * (ll + 7) for ll in (-9, -8, -7, -6, -5)]
    np.testing.assert_allclose(
        [row.best.log2_decay for row in r.rows], expected, atol=1e-9
    )


@pytest.mark.parametrize("slope", [0.0, -1.0])
def test_ridge_slope_survives_binomial_noise(slope: float) -> None:
    # Each cell's error is redrawn as a binomial count on 10 000 images.
    rng = np.random.default_rng(0)
    records = grid_records(
        "AdamW", slope, lr_log2=tuple(range(-10, -3)), decay_log2=tuple(range(-19, -5))
    )
    for rec in records:
        p = min(rec["final"]["val_error"], 1.0)
        rec["final"]["val_error"] = rng.binomial(10_000, p) / 10_000
    grid = A.build_grid(records, "AdamW", "short")
    assert grid is not None
    r = A.ridge(grid)
    assert r.fit is not None and r.count(A.USED) >= 6
    assert abs(r.fit.slope - slope) < 0.15
    assert abs(r.fit.slope - slope) < 3 * r.fit.slope_se + 0.05


def test_ridge_in_torch_units_shifts_slope_by_minus_one() -> None:
    grid = A.build_grid(grid_records("AdamW", 0.0), "AdamW", "short")
    assert grid is not None
    paper = A.ridge(grid, "val_error")
    torch_units = A.ridge(grid, "val_error", units="torch")
    assert paper.fit is not None and torch_units.fit is not None
    assert torch_units.fit.slope == pytest.approx(paper.fit.slope - 1.0)
    sgd = A.build_grid(grid_records("SGD", -1.0), "SGD", "short")
    assert sgd is not None
    with pytest.raises(ValueError, match="units='torch'"):
        A.ridge(sgd, units="torch")


def test_claim_a_reproduced_for_paper_shaped_grid() -> None:
    (result,) = A.claim_separability(paper_grid())
    assert result.claim_id == "a (short)"
    assert result.verdict == A.REPRODUCED
    opts = result.numbers["optimizers"]
    assert opts["SGD"]["slope"] == pytest.approx(-1.0, abs=0.05)
    assert opts["AdamW"]["slope"] == pytest.approx(0.0, abs=0.05)
    assert opts["AdamW"]["torch_slope"] == pytest.approx(-1.0, abs=0.05)
    assert opts["Adam"]["loss_slope"] == pytest.approx(-1.0, abs=0.05)
    assert "±" in result.statistic


def test_claim_a_not_reproduced_when_decoupled_is_diagonal() -> None:
    records = [
        *grid_records("SGD", -1.0),
        *grid_records("SGDW", -1.0),
        *grid_records("Adam", -1.0),
        *grid_records("AdamW", 0.0),
    ]
    (result,) = A.claim_separability(records)
    assert result.verdict == A.NOT_REPRODUCED
    assert result.numbers["optimizers"]["SGDW"]["verdict"] == A.NOT_REPRODUCED
    assert any("SGDW" in note for note in result.notes)


def test_claim_a_not_reproduced_when_l2_is_separable() -> None:
    records = [
        *grid_records("SGD", 0.0),
        *grid_records("SGDW", 0.0),
        *grid_records("Adam", -1.0),
        *grid_records("AdamW", 0.0),
    ]
    (result,) = A.claim_separability(records)
    assert result.verdict == A.NOT_REPRODUCED
    assert result.numbers["optimizers"]["SGD"]["verdict"] == A.NOT_REPRODUCED


def test_rows_with_best_on_the_edge_are_censored_and_left_out() -> None:
    # Slope -1 from centre -12.3: rows lr 2^-9 and 2^-8 want 2^-10.3 and 2^-11.3;
    # with decays up to 2^-11 both sit on the upper edge.
    records = grid_records("SGD", -1.0, decay_log2=tuple(range(-17, -10)))
    grid = A.build_grid(records, "SGD", "short")
    assert grid is not None
    r = A.ridge(grid)
    statuses = [row.status for row in r.rows]
    assert statuses[:2] == [A.CENSORED_HIGH, A.CENSORED_HIGH]
    assert statuses[2:] == [A.USED] * 3
    assert r.fit is not None and r.fit.n == 3
    assert r.fit.slope == pytest.approx(-1.0, abs=0.05)


def test_row_best_at_decay_zero_is_censored() -> None:
    records = grid_records("AdamW", 0.0)
    for rec in records:
        c = rec["config"]
        if c["weight_decay"] == 0.0 and c["lr"] == 2.0**-5:
            rec["final"]["val_error"] = 0.1001
    grid = A.build_grid(records, "AdamW", "short")
    assert grid is not None
    r = A.ridge(grid)
    assert r.rows[-1].status == A.CENSORED_ZERO
    assert r.rows[-1].best.decay == 0.0
    assert r.count(A.USED) == 4


def test_rows_far_above_the_best_are_excluded() -> None:
    records = grid_records("SGDW", 0.0)
    for rec in records:
        if rec["config"]["lr"] == 2.0**-9:
            rec["final"]["val_error"] += 0.02  # 2 points worse: out
        if rec["config"]["lr"] == 2.0**-5:
            rec["final"]["val_error"] += 0.01  # 1 + 4 row points: still in
    grid = A.build_grid(records, "SGDW", "short")
    assert grid is not None
    r = A.ridge(grid)
    assert [row.status for row in r.rows] == [A.EXCLUDED] + [A.USED] * 4
    assert r.count(A.EXCLUDED) == 1
    assert r.fit is not None and abs(r.fit.slope) < 0.05


def test_too_few_rows_is_inconclusive() -> None:
    records = [
        *grid_records("SGD", -1.0),
        *grid_records("SGDW", 0.0, lr_log2=(-8, -7)),
        *grid_records("Adam", -1.0),
        *grid_records("AdamW", 0.0),
    ]
    (result,) = A.claim_separability(records)
    assert result.verdict == A.INCONCLUSIVE
    assert result.numbers["optimizers"]["SGDW"]["verdict"] == A.INCONCLUSIVE


def test_diverged_cell_counts_as_error_one_and_is_never_best() -> None:
    records = grid_records("AdamW", 0.0)
    records.append(
        record(
            "grid", "AdamW", 2.0**-4, 2.0**-12, 0.0, regime="short", status="diverged"
        )
    )
    grid = A.build_grid(records, "AdamW", "short")
    assert grid is not None
    i = list(grid.lrs).index(2.0**-4)
    j = list(grid.decays).index(2.0**-12)
    assert grid.failed[i, j] and grid.val_error[i, j] == A.FAILED_ERROR
    assert grid.val_loss[i, j] == math.inf
    assert grid.best_cell != (i, j)
    r = A.ridge(grid)
    assert r.rows[i].status == A.EXCLUDED


def test_all_diverged_grid_gives_no_verdict_from_failures() -> None:
    records = [
        record("grid", opt, 2.0**ll, wd, 0.0, regime="short", status="diverged")
        for opt in A.OPTIMIZERS
        for ll in (-3, -2, -1)
        for wd in (0.0, 2.0**-12, 2.0**-11, 2.0**-10)
    ]
    (result,) = A.claim_separability(records)
    assert result.verdict == A.INCONCLUSIVE
    for opt in A.OPTIMIZERS:
        assert result.numbers["optimizers"][opt]["rows_used"] == 0


def test_regimes_get_one_result_each_and_no_grid_is_not_run() -> None:
    records = [*paper_grid(), *grid_records("AdamW", 0.0, regime="long")]
    results = A.claim_separability(records)
    assert [r.claim_id for r in results] == ["a (long)", "a (short)"]
    assert results[0].verdict == A.INCONCLUSIVE  # only AdamW ran in "long"
    assert A.claim_separability([])[0].verdict == A.NOT_RUN


# --------------------------------------------------------------------------
# Claim (b)


def seeds(
    adamw: list[float], adam: list[float], regime: str = ""
) -> list[dict[str, Any]]:
    out = [
        record("seeds", "AdamW", 1e-3, 1e-4, 0.1, test_error=e, seed=k, regime=regime)
        for k, e in enumerate(adamw)
    ]
    out += [
        record("seeds", "Adam", 1e-3, 1e-5, 0.1, test_error=e, seed=k, regime=regime)
        for k, e in enumerate(adam)
    ]
    return out


def test_claim_b_known_means_and_standard_error() -> None:
    (result,) = A.claim_adamw_vs_adam(seeds([0.10, 0.11, 0.12], [0.13, 0.14, 0.15]))
    n = result.numbers
    assert n["adamw_mean"] == pytest.approx(0.11)
    assert n["adam_std"] == pytest.approx(0.01)
    assert n["difference"] == pytest.approx(0.03)
    assert n["difference_se"] == pytest.approx(math.sqrt(2 * 0.01**2 / 3))
    assert result.verdict == A.REPRODUCED


def test_claim_b_small_difference_not_reproduced() -> None:
    # diff 0.015, SE 0.00816: 1.84 SE < 2.
    (result,) = A.claim_adamw_vs_adam(seeds([0.10, 0.11, 0.12], [0.115, 0.125, 0.135]))
    assert result.numbers["z"] == pytest.approx(0.015 / math.sqrt(2e-4 / 3))
    assert result.verdict == A.NOT_REPRODUCED


def test_claim_b_failed_seed_counts_as_error_one() -> None:
    records = seeds([0.10, 0.11, 0.12], [0.13, 0.14])
    records.append(record("seeds", "AdamW", 1e-3, 1e-4, 0.1, seed=9, status="diverged"))
    (result,) = A.claim_adamw_vs_adam(records)
    assert result.numbers["adamw_mean"] == pytest.approx((0.33 + 1.0) / 4)
    assert result.verdict == A.NOT_REPRODUCED


def test_claim_b_one_result_per_regime_without_pooling() -> None:
    records = [
        *seeds([0.10, 0.11, 0.12], [0.13, 0.14, 0.15], regime="short"),
        *seeds([0.10, 0.11, 0.12], [0.10, 0.11, 0.12], regime="long"),
        record("seeds", "SGD", 0.1, 1e-4, 0.1, test_error=0.5, regime="short"),
    ]
    long, short = A.claim_adamw_vs_adam(records)
    assert (long.claim_id, long.verdict) == ("b (long)", A.NOT_REPRODUCED)
    assert long.numbers["difference"] == pytest.approx(0.0)
    assert (short.claim_id, short.verdict) == ("b (short)", A.REPRODUCED)
    assert short.numbers["adam_mean"] == pytest.approx(0.14)


@pytest.mark.parametrize(
    ("adamw_decay", "adam_decay", "verdict"),
    [
        (0.0, 0.0, A.INCONCLUSIVE),  # both plain Adam
        (1e-4, 0.0, A.REPRODUCED),  # decoupled decay against no decay at all
        (0.0, 1e-5, A.REPRODUCED),
    ],
)
def test_claim_b_without_decay_in_either_arm_tests_nothing(
    adamw_decay: float, adam_decay: float, verdict: str
) -> None:
    records = [
        record("seeds", name, 1e-3, decay, 0.1, test_error=e, seed=k)
        for name, decay, errors in (
            ("AdamW", adamw_decay, [0.10, 0.11, 0.12]),
            ("Adam", adam_decay, [0.13, 0.14, 0.15]),
        )
        for k, e in enumerate(errors)
    ]
    (result,) = A.claim_adamw_vs_adam(records)
    assert result.verdict == verdict
    assert result.numbers["difference"] == pytest.approx(0.03)
    same = [note for note in result.notes if "same algorithm" in note]
    assert len(same) == (verdict == A.INCONCLUSIVE)


def test_claim_b_missing_arm_inconclusive_and_empty_not_run() -> None:
    assert A.claim_adamw_vs_adam(seeds([0.1, 0.2], []))[0].verdict == A.INCONCLUSIVE
    assert A.claim_adamw_vs_adam(seeds([0.1, 0.2], [0.3]))[0].verdict == A.INCONCLUSIVE
    assert A.claim_adamw_vs_adam([])[0].verdict == A.NOT_RUN


# --------------------------------------------------------------------------
# Claim (c)


def budget(
    norm_optimum: float,
    raw_optimum: float | None = None,
    norm_range: tuple[int, int] = (-8, 1),
) -> list[dict[str, Any]]:
    """Budgets 4, 8, 16 epochs swept in normalized decay.

    The error bowl is centred on ``norm_optimum`` in log2 normalized units, or
    on ``raw_optimum`` in log2 raw units when given.
    """
    out = []
    for epochs in (4, 8, 16):
        factor = math.sqrt(128 / (5000 * epochs))
        for ln in range(*norm_range):
            raw = 2.0**ln * factor
            x = math.log2(raw) if raw_optimum is not None else ln
            centre = raw_optimum if raw_optimum is not None else norm_optimum
            out.append(
                record(
                    "budget",
                    "AdamW",
                    1e-3,
                    raw,
                    0.1 + 0.004 * (x - centre) ** 2,
                    epochs=epochs,
                    weight_decay_norm=2.0**ln,
                )
            )
    return out


def test_claim_c_stable_normalized_optimum_reproduced() -> None:
    result = A.claim_normalized_decay(budget(-3.3))
    (numbers,) = result.numbers.values()
    assert numbers["epochs"] == (4, 16)
    assert numbers["shift_norm"] == pytest.approx(0.0, abs=1e-9)
    assert numbers["shift_raw"] == pytest.approx(-1.0, abs=1e-9)
    assert numbers["log2_norm"][0] == pytest.approx(-3.3)
    # SE at the best (10.04 %, n=1000) is 0.95 points: 0.004 (x + 3.3)^2 stays
    # within it for normalized x in -4..-2, a 2-octave span.
    assert numbers["near_best_width_octaves"] == pytest.approx((2.0, 2.0))
    assert result.verdict == A.REPRODUCED


def test_claim_c_stable_raw_optimum_not_reproduced() -> None:
    result = A.claim_normalized_decay(budget(0.0, raw_optimum=-8.6))
    (numbers,) = result.numbers.values()
    assert numbers["shift_raw"] == pytest.approx(0.0, abs=1e-9)
    assert numbers["shift_norm"] == pytest.approx(1.0, abs=1e-9)
    assert result.verdict == A.NOT_REPRODUCED


def test_claim_c_censored_optimum_inconclusive_and_empty_not_run() -> None:
    result = A.claim_normalized_decay(budget(-3.3, norm_range=(-8, -4)))
    assert result.verdict == A.INCONCLUSIVE
    assert A.claim_normalized_decay([]).verdict == A.NOT_RUN


def test_normalization_factor_matches_paper_check_value() -> None:
    # b=128, B=50000, T=100, lambda_norm=0.025 gives lambda = 1.2649e-4.
    assert 0.025 * A.normalization_factor(128, 50_000, 100) == pytest.approx(
        1.2649e-4, rel=1e-4
    )


# --------------------------------------------------------------------------
# Claim (d)


def test_run_ends() -> None:
    assert A.run_ends(1, 2, 15) == [1, 3, 7, 15]
    assert A.run_ends(2, 1, 7) == [2, 4, 6]
    with pytest.raises(ValueError, match="T_mult"):
        A.run_ends(1, 0.5, 10)


def restarts(wr: list[float], plain: list[float]) -> list[dict[str, Any]]:
    return [
        record(
            "restarts",
            "AdamWR",
            1e-3,
            1e-4,
            wr[-1],
            epochs=15,
            curve=wr,
            schedule="warm_restarts",
            T_0=1,
            T_mult=2,
        ),
        record("restarts", "AdamW", 1e-3, 1e-4, plain[-1], epochs=15, curve=plain),
    ]


PLAIN = [0.30 - 0.012 * e for e in range(1, 16)]  # 28.8 ... 12.0 %


def test_claim_d_anytime_advantage_reproduced() -> None:
    wr = [p - 0.02 for p in PLAIN[:14]] + [PLAIN[14] + 0.002]
    result = A.claim_restarts(restarts(wr, PLAIN))
    assert result.numbers["run_ends"] == [1, 3, 7, 15]
    assert result.numbers["differences"][7] == pytest.approx(-0.02)
    assert result.numbers["differences"][15] == pytest.approx(0.002)
    assert result.verdict == A.REPRODUCED


def test_claim_d_behind_at_epoch_7_not_reproduced() -> None:
    wr = [p - 0.02 for p in PLAIN]
    wr[6] = PLAIN[6] + 0.001
    wr[14] = PLAIN[14]
    result = A.claim_restarts(restarts(wr, PLAIN))
    assert result.verdict == A.NOT_REPRODUCED
    assert any("epoch 7" in note for note in result.notes)


def test_claim_d_final_gap_beyond_tolerance_not_reproduced() -> None:
    wr = [p - 0.02 for p in PLAIN[:14]] + [PLAIN[14] + 0.005]
    result = A.claim_restarts(restarts(wr, PLAIN))
    assert result.verdict == A.NOT_REPRODUCED


def test_claim_d_missing_arm_inconclusive_and_empty_not_run() -> None:
    only_wr = restarts(PLAIN, PLAIN)[:1]
    assert A.claim_restarts(only_wr).verdict == A.INCONCLUSIVE
    assert A.claim_restarts([]).verdict == A.NOT_RUN


# --------------------------------------------------------------------------
# Summaries


def test_analyse_orders_claims_and_noise_summary_reports_both_scales() -> None:
    records = [*paper_grid(), *seeds([0.10, 0.11, 0.12], [0.13, 0.14, 0.15])]
    results = A.analyse(records)
    assert [r.claim_id for r in results] == ["a (short)", "b", "c", "d"]
    assert [r.verdict for r in results] == [
        A.REPRODUCED,
        A.REPRODUCED,
        A.NOT_RUN,
        A.NOT_RUN,
    ]
    noise = A.noise_summary(records)
    best, n, se = noise.binomial["grid/short AdamW"]
    assert n == VAL_SIZE and se == pytest.approx(math.sqrt(best * (1 - best) / n))
    assert noise.seeds["Adam"].test_std == pytest.approx(0.01)
    assert len(noise.tables) == 2
