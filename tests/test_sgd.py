"""SGD (L2) and SGDW against the textbook Algorithm 1 and against PyTorch."""

from __future__ import annotations

import pytest
import torch

import reference
import resumable
from weightdecay import SGD, SGDW

IMPLEMENTATIONS = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "default": {},
}
STEPS = 60
ALPHA = 0.02


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("scaling", ["schedule", "lr", "none"])
def test_sgdw_matches_textbook_algorithm1(impl, nesterov, maximize, scaling):
    """SGDW follows Algorithm 1 step by step under a schedule moving every step."""
    theta0, grad = reference.objective_grad(dim=10, seed=4)
    if maximize:
        grad = lambda th, t, g=grad: -g(th, t)  # noqa: E731
    etas = reference.moving_schedule(STEPS)
    lam = 0.008
    per_step = reference.decoupled_decays(scaling, etas, lam, alpha=ALPHA)
    expected = reference.sgd(
        theta0,
        grad,
        etas,
        alpha=ALPHA,
        decays=per_step,
        nesterov=nesterov,
        maximize=maximize,
    )
    actual = reference.drive(
        lambda ps: SGDW(
            ps,
            lr=ALPHA,
            weight_decay=lam,
            nesterov=nesterov,
            maximize=maximize,
            decay_scaling=scaling,
            **IMPLEMENTATIONS[impl],
        ),
        theta0,
        grad,
        etas,
        alpha=ALPHA,
        split=[4, 6],
    )
    err = reference.worst(actual, expected)
    assert err < 1e-10, f"max relative error {err:.3e} over {STEPS} steps"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.9, True)]
)
def test_sgd_l2_matches_textbook_algorithm1(impl, momentum, nesterov):
    """SGD adds lambda * theta to the gradient inside the momentum buffer."""
    theta0, grad = reference.objective_grad(dim=10, seed=5)
    etas = reference.moving_schedule(STEPS)
    expected = reference.sgd(
        theta0, grad, etas, alpha=ALPHA, momentum=momentum, l2=0.5, nesterov=nesterov
    )
    actual = reference.drive(
        lambda ps: SGD(
            ps,
            lr=ALPHA,
            momentum=momentum,
            weight_decay=0.5,
            nesterov=nesterov,
            **IMPLEMENTATIONS[impl],
        ),
        theta0,
        grad,
        etas,
        alpha=ALPHA,
        split=[3, 7],
    )
    err = reference.worst(actual, expected)
    assert err < 1e-10, f"max relative error {err:.3e} over {STEPS} steps"


def _seeded_run(make_optimizer, steps=100, schedule=None, dtype=torch.float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(7, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    ).to(dtype)
    data = torch.randn(steps, 32, 7, dtype=dtype)
    target = torch.randn(steps, 32, 3, dtype=dtype)
    opt = make_optimizer(model.parameters())
    sched = schedule(opt) if schedule else None
    for x, y in zip(data, target, strict=True):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_sgd_is_torch_sgd_at_constant_lr(impl, nesterov, maximize):
    """At a constant rate SGD equals torch.optim.SGD(dampening=0)."""
    kw = dict(
        lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=nesterov, maximize=maximize
    )
    a = _seeded_run(lambda p: SGD(p, **kw, **IMPLEMENTATIONS[impl]))
    b = _seeded_run(lambda p: torch.optim.SGD(p, dampening=0, **kw))
    # Ascent on a quadratic grows the weights and amplifies rounding.
    tolerance = 1e-6 if maximize else 1e-12
    assert _rel(a, b) < tolerance, f"max relative error {_rel(a, b):.3e}"


def test_sgd_differs_from_torch_while_lr_moves():
    """With a moving rate the lr-inside-momentum form is not PyTorch's SGD."""
    kw = dict(lr=0.05, momentum=0.9)

    def schedule(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.3)

    a = _seeded_run(lambda p: SGD(p, **kw), schedule=schedule)
    b = _seeded_run(lambda p: torch.optim.SGD(p, **kw), schedule=schedule)
    assert _rel(a, b) > 1e-4, f"expected a visible difference, got {_rel(a, b):.3e}"


def test_sgdw_lr_units_are_torch_sgd_with_decoupled_decay():
    """decay_scaling='lr' removes lr_t * lambda per step, like PyTorch's units."""
    theta0, grad = reference.objective_grad(dim=6, seed=6)
    etas = reference.moving_schedule(30)
    expected = reference.sgd(
        theta0, grad, etas, alpha=0.1, decays=[0.1 * e * 0.05 for e in etas]
    )
    actual = reference.drive(
        lambda ps: SGDW(ps, lr=0.1, weight_decay=0.05, decay_scaling="lr"),
        theta0,
        grad,
        etas,
        alpha=0.1,
    )
    assert reference.worst(actual, expected) < 1e-10


@pytest.mark.parametrize("cls", [SGD, SGDW])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_state_dict_resume_is_bit_identical(cls, impl, tmp_path):
    def factory(p):
        return cls(
            p, lr=0.05, weight_decay=1e-3, nesterov=True, **IMPLEMENTATIONS[impl]
        )

    straight, _ = resumable.train_resumable(factory, 40)
    _, half = resumable.train_resumable(factory, 20)
    torch.save(half, tmp_path / "ckpt.pt")
    resumed, _ = resumable.train_resumable(
        factory, 20, torch.load(tmp_path / "ckpt.pt", weights_only=True)
    )
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [SGD, SGDW])
def test_paths_agree_in_float32(cls):
    """Loop and foreach paths agree to 1e-6 relative on float32."""
    runs = {
        name: _seeded_run(
            lambda p, kw=kw: cls(p, lr=0.05, weight_decay=1e-3, **kw),
            dtype=torch.float32,
        )
        for name, kw in IMPLEMENTATIONS.items()
    }
    for name, params in runs.items():
        assert _rel(params, runs["loop"]) < 1e-6, name


@pytest.mark.parametrize("cls", [SGD, SGDW])
def test_converges_on_rosenbrock(cls):
    """Momentum SGD reaches (1, 1) on Rosenbrock from (-1.5, 2)."""
    xy = torch.nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float64))
    opt = cls([xy], lr=1e-3, momentum=0.9)
    for _ in range(5000):
        x, y = xy.detach()
        xy.grad = torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])
        opt.step()
    distance = (xy.detach() - 1).abs().max().item()
    assert distance < 1e-3, f"ended at {xy.tolist()}, {distance:.2e} from (1, 1)"


def test_param_without_grad_keeps_momentum_and_value():
    used = torch.nn.Parameter(torch.ones(3))
    unused = torch.nn.Parameter(torch.ones(3))
    opt = SGDW([used, unused], lr=0.1, weight_decay=5e-3)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused.detach(), torch.ones(3))
    assert "momentum_buffer" not in opt.state[unused]
    assert torch.allclose(opt.state[used]["momentum_buffer"], torch.full((3,), 0.1))
