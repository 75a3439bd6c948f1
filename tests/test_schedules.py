"""Schedules, warm restarts, the WarmRestarts scheduler and AdamWR / SGDWR."""

from __future__ import annotations

import io
import math
import pickle
import warnings
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import weightdecay
from weightdecay.decay import normalized_weight_decay
from weightdecay.schedules import (
    SGDWR,
    AdamWR,
    RestartRun,
    WarmRestarts,
    constant,
    cosine,
    linear_warmup,
    step_drop,
    warm_restart_run,
    warm_restarts,
)

COS_QUARTER = (1 + math.cos(math.pi / 4)) / 2  # 0.853553...
COS_THREE_QUARTERS = (1 + math.cos(3 * math.pi / 4)) / 2  # 0.146446...


# ---------------------------------------------------------------------------
# Independent references: runs found by accumulating exact run lengths


def reference_run(position: Fraction, T_0: Fraction, T_mult: Fraction) -> RestartRun:
    """Walk run by run, adding exact lengths, until ``position`` is inside."""
    index, start, length = 0, Fraction(0), Fraction(T_0)
    while start + length <= position:
        start += length
        length *= T_mult
        index += 1
    return RestartRun(index, position - start, length, start)


def reference_starts(T_0: Fraction, T_mult: Fraction, count: int) -> list[Fraction]:
    """The exact start epochs of runs 0 .. count-1."""
    starts, start, length = [], Fraction(0), Fraction(T_0)
    for _ in range(count):
        starts.append(start)
        start += length
        length *= T_mult
    return starts


def textbook_multiplier(run: RestartRun, eta_min: float) -> float:
    """The SGDR formula as the paper writes it."""
    return eta_min + (1 - eta_min) * (1 + math.cos(math.pi * run.T_cur / run.T_i)) / 2


# ---------------------------------------------------------------------------
# 1. Closed-form values at quarter points of each run


@pytest.mark.parametrize("T_mult", [1, 2, Fraction(3, 2), 1.5])
def test_quarter_points_of_each_run(T_mult):
    """Every run starts at 1.0 and passes 0.8536, 0.5, 0.1464 at its quarters."""
    schedule = warm_restarts(T_0=100, T_mult=T_mult)
    exact_T_mult = Fraction(str(T_mult))
    starts = reference_starts(Fraction(100), exact_T_mult, 5)
    for i, start in enumerate(starts[:-1]):
        T_i = 100 * exact_T_mult**i
        values = [schedule(start + q * T_i / 4) for q in range(4)]
        expected = [1.0, COS_QUARTER, 0.5, COS_THREE_QUARTERS]
        assert values[0] == 1.0, f"run {i} does not start at exactly 1.0"
        assert values == pytest.approx(expected, rel=1e-12, abs=1e-15), f"run {i}"
        assert schedule(starts[i + 1]) == 1.0, f"no restart after run {i}"
        assert schedule.run(start).index == i


def test_run_ends_for_T_0_100_T_mult_2():
    """With T_0=100, T_mult=2 the runs end at epochs 100, 300, 700, 1500."""
    schedule = warm_restarts(T_0=100, T_mult=2)
    for i, end in enumerate([100, 300, 700, 1500]):
        assert schedule.run(end).index == i + 1
        assert schedule.run(end).T_cur == 0
        assert schedule.run(end - Fraction(1, 10**9)).index == i
        assert schedule.run(end).T_i == 100 * 2 ** (i + 1)
        assert schedule(end) == 1.0


@pytest.mark.parametrize("eta_min", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("T_mult", [1, 2, 1.5])
def test_eta_min_reached_at_end_of_each_run(T_mult, eta_min):
    """Just before each restart the multiplier is eta_min (limit from below)."""
    schedule = warm_restarts(T_0=3, T_mult=T_mult, eta_min=eta_min)
    starts = reference_starts(Fraction(3), Fraction(str(T_mult)), 6)
    for i, end in enumerate(starts[1:]):
        before = end - Fraction(1, 10**12)
        assert schedule.run(before).index == i
        # (1 + cos(pi (1 - d))) / 2 ~ (pi d)^2 / 4 with d = 1e-12 / T_i
        assert schedule(before) == pytest.approx(eta_min, abs=1e-20 + 1e-15)
        assert schedule(before) >= eta_min
        assert schedule(end) == 1.0


def test_float_inputs_read_as_their_decimals():
    """T_0=0.1 means 1/10: boundaries 0.1, 0.25, 0.475 are hit by float positions."""
    schedule = warm_restarts(T_0=0.1, T_mult=1.5)
    for i, boundary in enumerate([0.1, 0.25, 0.475]):
        run = schedule.run(boundary)
        assert (run.index, run.T_cur) == (i + 1, 0)
        assert schedule(boundary) == 1.0
    assert schedule.run(0.1).T_i == Fraction(3, 20)


# ---------------------------------------------------------------------------
# 2. Far positions and exact boundaries


def test_far_position_T_mult_10():
    """Epoch 10^6 with T_0=1, T_mult=10 is in run 6, 888889 epochs in."""
    run = warm_restart_run(10**6, T_0=1, T_mult=10)
    expected = reference_run(Fraction(10**6), Fraction(1), Fraction(10))
    assert run == expected
    assert (run.index, run.T_cur, run.T_i) == (6, 888_889, 10**6)
    assert warm_restarts(1, 10)(10**6) == pytest.approx(
        textbook_multiplier(expected, 0.0), rel=1e-12
    )


@pytest.mark.parametrize(
    ("T_0", "T_mult", "runs"),
    [
        (Fraction(1), Fraction(10), 40),
        (Fraction(1), Fraction(3, 2), 300),
        (Fraction(7, 3), Fraction(3, 2), 120),
        (Fraction(1, 10), Fraction(11, 10), 400),
        (Fraction(1), Fraction(2), 200),
    ],
)
def test_exact_restart_boundaries_far_out(T_0, T_mult, runs):
    """On every run start E_i, also for large i: run i, T_cur 0, multiplier 1.0."""
    schedule = warm_restarts(T_0, T_mult)
    starts = reference_starts(T_0, T_mult, runs)
    step = max(1, runs // 40)
    for i in range(1, runs, step):
        on = schedule.run(starts[i])
        assert (on.index, on.T_cur, on.start) == (i, 0, starts[i]), f"E_{i}"
        assert on.T_i == T_0 * T_mult**i
        assert schedule(starts[i]) == 1.0
        tiny = Fraction(1, 10**60)
        below = schedule.run(starts[i] - tiny)
        assert below == RestartRun(
            i - 1,
            T_0 * T_mult ** (i - 1) - tiny,
            T_0 * T_mult ** (i - 1),
            starts[i - 1],
        ), f"just below E_{i}"
        middle = starts[i] + T_0 * T_mult**i / 3
        assert schedule.run(middle) == reference_run(middle, T_0, T_mult)


def test_boundaries_T_mult_1_large_index():
    """T_mult=1: position k*T_0 starts run k exactly, for k up to 10^15."""
    T_0 = Fraction(3, 7)
    for k in [1, 10, 10**6, 10**15 + 1]:
        run = warm_restart_run(k * T_0, T_0, 1)
        assert (run.index, run.T_cur, run.T_i) == (k, 0, T_0)
        below = warm_restart_run(k * T_0 - Fraction(1, 10**30), T_0, 1)
        assert (below.index, below.T_cur) == (k - 1, T_0 - Fraction(1, 10**30))


def test_float_positions_near_one_binary_boundary():
    """A float position just below an integer boundary is not rounded onto it."""
    below = math.nextafter(300.0, 0.0)
    assert warm_restart_run(below, 100, 2).index == 1
    assert warm_restart_run(300.0, 100, 2).index == 2


# ---------------------------------------------------------------------------
# Other schedules


def test_constant_cosine_step_drop_warmup_values():
    """Closed forms of the single-run schedules and their composition."""
    assert [constant()(p) for p in (0, 0.5, 10**9)] == [1.0, 1.0, 1.0]

    c = cosine(100, eta_min=0.2)
    assert c(0) == 1.0
    assert c(25) == pytest.approx(0.2 + 0.8 * COS_QUARTER, rel=1e-12)
    assert c(50) == pytest.approx(0.6, rel=1e-12)
    assert c(100) == 0.2
    assert c(1000) == 0.2

    s = step_drop([30, Fraction(120, 2), 80.5], factor=0.5)
    positions = [0, 29.999, 30, 59, 60, 80.49, 80.5, 10**6]
    assert [s(p) for p in positions] == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]

    w = linear_warmup(4, cosine(100))
    assert [w(p) for p in (0, 1, 2, 3)] == [0.0, 0.25, 0.5, 0.75]
    assert w(4) == 1.0
    assert w(54) == pytest.approx(0.5, rel=1e-12)
    assert w(104) == 0.0
    assert linear_warmup(0, cosine(10))(5) == cosine(10)(5)

    wr = linear_warmup(Fraction(1, 2), warm_restarts(1, 2, eta_min=0.1))
    assert wr(Fraction(1, 4)) == 0.5
    assert wr(Fraction(3, 2)) == 1.0  # restart 1 epoch after the warmup


def test_schedules_pickle_and_compare():
    """Schedules are plain values: picklable for worker processes."""
    for schedule in [
        constant(),
        cosine(10, 0.1),
        step_drop([1, 2], 0.1),
        warm_restarts(1, 1.5, 0.0),
        linear_warmup(2, warm_restarts(3, 2)),
    ]:
        copy = pickle.loads(pickle.dumps(schedule))
        assert copy == schedule
        assert copy(2.75) == schedule(2.75)


# ---------------------------------------------------------------------------
# The scheduler


def make_sgd(*groups_lr: float) -> torch.optim.SGD:
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in groups_lr
    ]
    return torch.optim.SGD(groups, lr=1.0)


def drive(optimizer, scheduler, steps: int) -> list[list[float]]:
    """Normal use: optimizer.step() then scheduler.step(); the lrs after each."""
    seen = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        seen.append([g["lr"] for g in optimizer.param_groups])
    return seen


def test_scheduler_follows_pure_schedule_per_batch():
    """After k steps the lr is initial_lr * warm_restarts(k / steps_per_epoch)."""
    optimizer = make_sgd(0.1, 0.03)
    scheduler = WarmRestarts(optimizer, T_0=1, T_mult=1.5, steps_per_epoch=4)
    schedule = warm_restarts(1, 1.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.03]
    lrs = drive(optimizer, scheduler, 40)
    for k, (lr_a, lr_b) in enumerate(lrs, start=1):
        eta = schedule(Fraction(k, 4))
        assert (lr_a, lr_b) == (0.1 * eta, 0.03 * eta), f"step {k}"
    assert scheduler.get_last_lr() == lrs[-1]
    # 40 steps = 10 epochs; runs of 1, 1.5, 2.25, 3.375 end at 8.125 epochs.
    assert (scheduler.run_index, scheduler.T_cur) == (4, Fraction(15, 8))
    assert scheduler.T_i == Fraction(81, 16)
    # Restarts at steps 4, 10 and 19 (epochs 1, 2.5, 4.75): exactly 1.0.
    assert [lrs[k - 1][0] for k in (4, 10, 19)] == [0.1, 0.1, 0.1]


def test_scheduler_runs_shorter_than_a_step():
    """Runs shorter than one batch are skipped exactly as the pure schedule does."""
    optimizer = torch.optim.SGD(normalized_groups(), lr=1.0)
    scheduler = WarmRestarts(
        optimizer,
        T_0=0.1,
        T_mult=1.5,
        eta_min=0.2,
        steps_per_epoch=3,
        warmup_epochs=Fraction(1, 3),
        batch_size=128,
        dataset_size=50_000,
    )
    schedule = linear_warmup(Fraction(1, 3), warm_restarts(0.1, 1.5, eta_min=0.2))
    seen = set()
    for k in range(1, 120):
        drive(optimizer, scheduler, 1)
        seen.add(scheduler.run_index)
        position = Fraction(k, 3)
        run = warm_restart_run(max(position - Fraction(1, 3), Fraction(0)), 0.1, 1.5)
        assert optimizer.param_groups[0]["lr"] == 0.1 * schedule(position), f"step {k}"
        assert (scheduler.run_index, scheduler.T_cur, scheduler.T_i) == run[:3]
        assert optimizer.param_groups[0]["weight_decay"] == normalized_weight_decay(
            0.025, 128, 50_000, float(run.T_i)
        ), f"step {k}"
    # 118/3 epochs after the warmup: E_13 = 0.2 (1.5**13 - 1) ~ 38.7 <= 39.3 < E_14.
    assert scheduler.run_index == 13
    assert 1 not in seen and {0, 2, 3, 4} <= seen, "run 1 (epochs 0.1-0.25) unseen"


def test_scheduler_with_tensor_lr():
    """A tensor lr is updated in place and keeps its identity."""
    lr = torch.tensor(0.5)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=lr)
    scheduler = WarmRestarts(optimizer, T_0=1, steps_per_epoch=4)
    drive(optimizer, scheduler, 2)
    assert optimizer.param_groups[0]["lr"] is lr
    assert lr.item() == pytest.approx(0.25, rel=1e-6)
    assert scheduler.get_last_lr()[0].item() == pytest.approx(0.25, rel=1e-6)


def test_scheduler_with_warmup():
    """Warmup ramps from 0 over warmup_epochs, then the first run starts at 1.0."""
    optimizer = make_sgd(0.2)
    scheduler = WarmRestarts(
        optimizer, T_0=1, T_mult=2, steps_per_epoch=4, warmup_epochs=1
    )
    assert optimizer.param_groups[0]["lr"] == 0.0
    lrs = [lr for (lr,) in drive(optimizer, scheduler, 16)]
    assert lrs[:4] == [0.05, 0.1, 0.15000000000000002, 0.2]
    expected = [0.2 * warm_restarts(1, 2)(Fraction(k, 4) - 1) for k in range(4, 17)]
    assert lrs[3:] == expected
    assert (scheduler.run_index, scheduler.T_cur) == (2, 0)


def test_no_warnings_in_normal_use():
    """torch's LRScheduler base emits no warning in the usual loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = torch.nn.Linear(3, 2)
        optimizer = weightdecay.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        scheduler = WarmRestarts(optimizer, T_0=1, steps_per_epoch=3)
        for _ in range(7):
            optimizer.zero_grad()
            model(torch.ones(4, 3)).sum().backward()
            optimizer.step()
            scheduler.step()
        state = scheduler.state_dict()
        resumed = WarmRestarts(optimizer, T_0=1, steps_per_epoch=3)
        resumed.load_state_dict(state)
        optimizer.step()
        resumed.step()
    assert resumed.last_epoch == 8


# ---------------------------------------------------------------------------
# 3. Resuming from state_dict


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def normalized_groups() -> list[dict]:
    return [
        {
            "params": [torch.nn.Parameter(torch.ones(3))],
            "lr": 0.1,
            "weight_decay": 0.0,
            "weight_decay_norm": 0.025,
        },
        {
            "params": [torch.nn.Parameter(torch.ones(2))],
            "lr": 0.05,
            "weight_decay": 0.0,
        },
    ]


@pytest.mark.parametrize(
    ("k", "label"),
    [(3, "inside run 0"), (10, "on the restart at epoch 2.5"), (757, "run 9")],
)
@pytest.mark.parametrize("optimizer_first", [True, False])
def test_resume_is_exact(k, label, optimizer_first):
    """A scheduler resumed at step k continues with exactly (==) the same values."""
    kwargs = dict(
        T_0=1,
        T_mult=Fraction(3, 2),
        eta_min=0.01,
        steps_per_epoch=4,
        batch_size=128,
        dataset_size=50_000,
    )
    optimizer = torch.optim.SGD(normalized_groups(), lr=1.0)
    scheduler = WarmRestarts(optimizer, **kwargs)
    drive(optimizer, scheduler, k)
    opt_state = roundtrip(optimizer.state_dict())
    sched_state = roundtrip(scheduler.state_dict())
    reference = drive(optimizer, scheduler, 25)
    reference_decay = optimizer.param_groups[0]["weight_decay"]

    fresh = torch.optim.SGD(normalized_groups(), lr=1.0)
    if optimizer_first:
        fresh.load_state_dict(opt_state)
        resumed = WarmRestarts(fresh, **{**kwargs, "T_0": 5})
    else:
        resumed = WarmRestarts(fresh, **{**kwargs, "T_0": 5})
        fresh.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    assert resumed.last_epoch == k
    assert resumed.T_0 == 1, "hyperparameters come from the state"
    assert [g["lr"] for g in fresh.param_groups] == scheduler_values_at(k, kwargs)
    run_k = warm_restart_run(Fraction(k, 4), 1, Fraction(3, 2))
    assert fresh.param_groups[0]["weight_decay"] == normalized_weight_decay(
        0.025, 128, 50_000, float(run_k.T_i)
    ), label
    assert drive(fresh, resumed, 25) == reference, label
    assert fresh.param_groups[0]["weight_decay"] == reference_decay
    assert fresh.param_groups[1]["weight_decay"] == 0.0


def scheduler_values_at(k: int, kwargs: dict) -> list[float]:
    """The lrs an uninterrupted scheduler shows after k steps."""
    optimizer = torch.optim.SGD(normalized_groups(), lr=1.0)
    scheduler = WarmRestarts(optimizer, **kwargs)
    return drive(optimizer, scheduler, k)[-1]


# ---------------------------------------------------------------------------
# 4. Normalized decay


def test_normalized_decay_check_value():
    """b=128, B=50000, T=100, lambda_norm=0.025 gives 1.2649e-4."""
    assert normalized_weight_decay(0.025, 128, 50_000, 100) == pytest.approx(
        1.2649e-4, abs=1e-8
    )


def test_normalized_decay_follows_T_i_per_run():
    """Each run's decay is lambda_norm sqrt(b / (B T_i)); other groups untouched."""
    groups = normalized_groups()
    groups.append(
        {
            "params": [torch.nn.Parameter(torch.ones(1))],
            "lr": 0.5,
            "weight_decay": 0.0,
            "weight_decay_norm": 0.05,
            "decay_scaling": "lr",
        }
    )
    optimizer = torch.optim.SGD(groups, lr=1.0)
    scheduler = WarmRestarts(
        optimizer,
        T_0=2,
        T_mult=2,
        steps_per_epoch=1,
        batch_size=128,
        dataset_size=50_000,
    )
    seen_runs = set()
    for epoch in range(30):
        run = reference_run(Fraction(epoch), Fraction(2), Fraction(2))
        expected = 0.025 * math.sqrt(128 / (50_000 * run.T_i))
        decays = [g["weight_decay"] for g in optimizer.param_groups]
        assert decays[0] == pytest.approx(expected, rel=1e-15), f"epoch {epoch}"
        assert decays[1] == 0.0
        torch_units = 0.05 * math.sqrt(128 / (50_000 * run.T_i)) / 0.5
        assert decays[2] == pytest.approx(torch_units, rel=1e-15)
        seen_runs.add(run.index)
        drive(optimizer, scheduler, 1)
    assert seen_runs == {0, 1, 2, 3}
    T_100 = WarmRestarts(
        torch.optim.SGD(normalized_groups(), lr=1.0),
        T_0=100,
        steps_per_epoch=391,
        batch_size=128,
        dataset_size=50_000,
    )
    assert T_100.optimizer.param_groups[0]["weight_decay"] == pytest.approx(
        1.2649e-4, abs=1e-8
    )


# ---------------------------------------------------------------------------
# 5. AdamWR against a float64 textbook loop


def adam_textbook(theta, grad_fn, steps, spe, alpha, betas, eps, T_0, T_mult, decay):
    """Algorithm 2 with the SGDR multiplier and per-run normalized decay."""
    beta1, beta2 = betas
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    history = []
    for t in range(1, steps + 1):
        run = reference_run(Fraction(t - 1, spe), T_0, T_mult)
        eta = textbook_multiplier(run, 0.0)
        lam = decay(run.T_i)
        g = grad_fn(theta)
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        theta = [
            th
            - eta
            * (
                alpha * (mi / (1 - beta1**t)) / (math.sqrt(vi / (1 - beta2**t)) + eps)
                + lam * th
            )
            for th, mi, vi in zip(theta, m, v, strict=True)
        ]
        history.append(theta)
    return history


def quadratic_problem(n: int = 20):
    """f(theta) = sum a_j (theta_j - c_j)^2 / 2 plus a small coupling term."""
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(n, generator=gen, dtype=torch.float64) * 3 + 0.1).tolist()
    c = torch.randn(n, generator=gen, dtype=torch.float64).tolist()
    start = torch.randn(n, generator=gen, dtype=torch.float64).tolist()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        a_t = torch.tensor(a, dtype=theta.dtype)
        c_t = torch.tensor(c, dtype=theta.dtype)
        return 0.5 * (a_t * (theta - c_t) ** 2).sum() + 0.1 * theta.sin().sum()

    def grad(theta: list[float]) -> list[float]:
        return [
            aj * (tj - cj) + 0.1 * math.cos(tj)
            for aj, tj, cj in zip(a, theta, c, strict=True)
        ]

    return loss, grad, start


@pytest.mark.parametrize("implementation", ["adamwr", "torch_adamw_lr_units"])
def test_adamwr_matches_textbook_loop(implementation):
    """AdamWR (and torch's AdamW fed lambda / lr) follow Algorithm 2 step by step."""
    loss, grad, start = quadratic_problem()
    spe, steps, alpha = 4, 60, 0.05
    T_0, T_mult = Fraction(1), Fraction(3, 2)
    b, B, lam_norm = 32, 500, 0.5
    theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    if implementation == "adamwr":
        optimizer, scheduler = AdamWR(
            [theta],
            lr=alpha,
            T_0=1,
            T_mult=1.5,
            steps_per_epoch=spe,
            weight_decay_norm=lam_norm,
            batch_size=b,
            dataset_size=B,
        )
        assert isinstance(optimizer, weightdecay.AdamW)
    else:
        optimizer = torch.optim.AdamW(
            [{"params": [theta], "weight_decay_norm": lam_norm, "decay_scaling": "lr"}],
            lr=alpha,
        )
        scheduler = WarmRestarts(
            optimizer, 1, 1.5, steps_per_epoch=spe, batch_size=b, dataset_size=B
        )

    expected = adam_textbook(
        start,
        grad,
        steps,
        spe,
        alpha,
        (0.9, 0.999),
        1e-8,
        T_0,
        T_mult,
        lambda T_i: lam_norm * math.sqrt(b / (B * T_i)),
    )
    worst = 0.0
    for t in range(steps):
        optimizer.zero_grad()
        loss(theta).backward()
        optimizer.step()
        scheduler.step()
        want = torch.tensor(expected[t], dtype=torch.float64)
        rel = ((theta.detach() - want).abs() / want.abs().clamp_min(1e-12)).max().item()
        worst = max(worst, rel)
    assert worst < 1e-12, f"max relative error {worst:.3e} over {steps} steps"
    assert scheduler.run_index == 5, "the run crossed five restarts"
    assert torch.isfinite(theta).all()


def test_sgdwr_matches_textbook_loop():
    """SGDWR follows Algorithm 1 (lr inside the momentum) with SGDR and norm decay."""
    loss, grad, start = quadratic_problem(8)
    spe, steps, alpha, beta1 = 3, 30, 0.02, 0.9
    b, B, lam_norm = 16, 300, 0.2
    theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer, scheduler = SGDWR(
        [theta],
        lr=alpha,
        T_0=1,
        T_mult=2,
        steps_per_epoch=spe,
        weight_decay_norm=lam_norm,
        batch_size=b,
        dataset_size=B,
        momentum=beta1,
    )
    assert isinstance(optimizer, weightdecay.SGDW)
    ref, m = list(start), [0.0] * len(start)
    worst = 0.0
    for t in range(steps):
        run = reference_run(Fraction(t, spe), Fraction(1), Fraction(2))
        eta = textbook_multiplier(run, 0.0)
        lam = lam_norm * math.sqrt(b / (B * run.T_i))
        g = grad(ref)
        m = [beta1 * mi + eta * alpha * gi for mi, gi in zip(m, g, strict=True)]
        ref = [th - mi - eta * lam * th for th, mi in zip(ref, m, strict=True)]

        optimizer.zero_grad()
        loss(theta).backward()
        optimizer.step()
        scheduler.step()
        want = torch.tensor(ref, dtype=torch.float64)
        rel = ((theta.detach() - want).abs() / want.abs().clamp_min(1e-12)).max().item()
        worst = max(worst, rel)
    assert worst < 1e-12, f"max relative error {worst:.3e} over {steps} steps"


def test_factory_groups_and_exclusive_decay():
    """weight_decay_norm reaches groups without their own decay setting only."""
    w, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    optimizer, _ = AdamWR(
        [{"params": [w]}, {"params": [bias], "weight_decay": 0.0}],
        lr=1e-3,
        T_0=10,
        steps_per_epoch=5,
        weight_decay_norm=0.05,
        batch_size=100,
        dataset_size=1000,
    )
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(
        0.05 * math.sqrt(100 / (1000 * 10)), rel=1e-15
    )
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="weight_decay_norm"):
        AdamWR(
            [w],
            lr=1e-3,
            T_0=1,
            steps_per_epoch=1,
            weight_decay=1e-4,
            weight_decay_norm=0.05,
            batch_size=1,
            dataset_size=1,
        )
    with pytest.raises(ValueError, match="batch_size"):
        SGDWR([w], lr=1e-3, T_0=1, steps_per_epoch=1, weight_decay_norm=0.05)


# ---------------------------------------------------------------------------
# 6. Bad inputs and properties


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: cosine(0), "T"),
        (lambda: cosine(-1.0), "T"),
        (lambda: cosine(10, eta_min=1.5), "eta_min"),
        (lambda: cosine(float("nan")), "T"),
        (lambda: warm_restarts(0), "T_0"),
        (lambda: warm_restarts(1, T_mult=0.5), "T_mult"),
        (lambda: warm_restarts(1, T_mult=float("inf")), "T_mult"),
        (lambda: warm_restarts(1, eta_min=-0.1), "eta_min"),
        (lambda: warm_restarts("10"), "T_0"),
        (lambda: warm_restarts(True), "T_0"),
        (lambda: warm_restart_run(-1, 1, 2), "position"),
        (lambda: warm_restarts(1)(-0.5), "position"),
        (lambda: warm_restarts(1)(float("nan")), "position"),
        (lambda: step_drop([10, 5], 0.1), "milestones"),
        (lambda: step_drop([-1], 0.1), "milestones"),
        (lambda: step_drop(5, 0.1), "milestones"),
        (lambda: step_drop([5], 2.0), "factor"),
        (lambda: linear_warmup(-1, constant()), "warmup_epochs"),
        (lambda: linear_warmup(1, 0.5), "schedule"),
        (lambda: constant()(-1), "position"),
    ],
)
def test_bad_schedule_inputs(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"T_0": 0}, "T_0"),
        ({"T_mult": 0.9}, "T_mult"),
        ({"eta_min": 2}, "eta_min"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"steps_per_epoch": 2.5}, "steps_per_epoch"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"dataset_size": -5}, "dataset_size"),
        ({"last_epoch": -2}, "last_epoch"),
    ],
)
def test_bad_scheduler_inputs(kwargs, name):
    arguments = {"T_0": 1, "steps_per_epoch": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        WarmRestarts(make_sgd(0.1), **arguments)


def test_normalized_decay_requires_sizes():
    """A group with weight_decay_norm needs batch_size and dataset_size."""
    optimizer = torch.optim.SGD(normalized_groups(), lr=1.0)
    with pytest.raises(ValueError, match="batch_size and dataset_size"):
        WarmRestarts(optimizer, T_0=1, steps_per_epoch=1, batch_size=128)
    assert "initial_lr" not in optimizer.param_groups[0], "optimizer left as it was"


rationals = st.fractions(min_value=0, max_value=10**6, max_denominator=10**4)
T_0s = st.fractions(min_value=Fraction(1, 100), max_value=100, max_denominator=100)
T_mults = st.sampled_from(
    [Fraction(1), Fraction(2), Fraction(3, 2), Fraction(11, 10), Fraction(10), 1.25]
)
eta_mins = st.sampled_from([0.0, 0.05, 0.5, 1.0])


@settings(max_examples=150, deadline=None)
@given(position=rationals, T_0=T_0s, T_mult=T_mults, eta_min=eta_mins)
def test_property_run_matches_accumulation(position, T_0, T_mult, eta_min):
    """Run and multiplier agree with the accumulated reference; eta in range."""
    run = warm_restart_run(position, T_0, T_mult)
    if T_mult == 1:
        # Up to 10^8 equal runs: check the defining inequalities instead.
        assert run.start == run.index * T_0 and run.T_i == T_0
        assert 0 <= run.T_cur < T_0 and run.start + run.T_cur == position
    else:
        assert run == reference_run(position, T_0, Fraction(str(T_mult)))
    eta = warm_restarts(T_0, T_mult, eta_min)(position)
    assert eta_min <= eta <= 1.0
    assert eta == pytest.approx(textbook_multiplier(run, eta_min), rel=1e-12, abs=1e-15)


@settings(max_examples=150, deadline=None)
@given(a=rationals, b=rationals, T_0=T_0s, T_mult=T_mults, eta_min=eta_mins)
def test_property_monotone(a, b, T_0, T_mult, eta_min):
    """Run index never decreases; within a run the multiplier never increases."""
    p, q = min(a, b), max(a, b)
    schedule = warm_restarts(T_0, T_mult, eta_min)
    run_p, run_q = schedule.run(p), schedule.run(q)
    assert run_p.index <= run_q.index
    if run_p.index == run_q.index:
        assert schedule(p) >= schedule(q)
