"""Adam (L2) and AdamW against the textbook Algorithm 2 and against PyTorch."""

from __future__ import annotations

import math

import pytest
import torch

import reference
import resumable
from weightdecay import Adam, AdamW

IMPLEMENTATIONS = {
    "loop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
    "default": {},
}
STEPS = 60
ALPHA = 0.05


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("scaling", ["schedule", "lr", "none"])
def test_adamw_matches_textbook_algorithm2(impl, amsgrad, maximize, scaling):
    """AdamW follows Algorithm 2 step by step under a schedule moving every step."""
    theta0, grad = reference.objective_grad(dim=12, seed=1)
    if maximize:
        theta0, grad = theta0, (lambda th, t, g=grad: -g(th, t))
    etas = reference.moving_schedule(STEPS)
    lam = 0.008
    per_step = reference.decoupled_decays(scaling, etas, lam, alpha=ALPHA)
    expected = reference.adam(
        theta0,
        grad,
        etas,
        alpha=ALPHA,
        decays=per_step,
        amsgrad=amsgrad,
        maximize=maximize,
    )
    actual = reference.drive(
        lambda ps: AdamW(
            ps,
            lr=ALPHA,
            weight_decay=lam,
            amsgrad=amsgrad,
            maximize=maximize,
            decay_scaling=scaling,
            **IMPLEMENTATIONS[impl],
        ),
        theta0,
        grad,
        etas,
        alpha=ALPHA,
        split=[5, 4, 3],
    )
    err = reference.worst(actual, expected)
    assert err < 1e-10, f"max relative error {err:.3e} over {STEPS} steps"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_l2_matches_textbook_algorithm2(impl, amsgrad):
    """Adam adds lambda * theta to the gradient and scales nothing else."""
    theta0, grad = reference.objective_grad(dim=12, seed=2)
    etas = reference.moving_schedule(STEPS)
    expected = reference.adam(theta0, grad, etas, alpha=ALPHA, l2=0.3, amsgrad=amsgrad)
    actual = reference.drive(
        lambda ps: Adam(
            ps, lr=ALPHA, weight_decay=0.3, amsgrad=amsgrad, **IMPLEMENTATIONS[impl]
        ),
        theta0,
        grad,
        etas,
        alpha=ALPHA,
        split=[6, 6],
    )
    err = reference.worst(actual, expected)
    assert err < 1e-10, f"max relative error {err:.3e} over {STEPS} steps"


def test_adamw_float32_tracks_float64_reference():
    """In float32 the trajectory stays within float32 rounding of the reference."""
    theta0, grad = reference.objective_grad(dim=12, seed=3)
    etas = reference.moving_schedule(STEPS)
    decays = [eta * 5e-3 for eta in etas]
    expected = reference.adam(theta0, grad, etas, alpha=ALPHA, decays=decays)
    actual = reference.drive(
        lambda ps: AdamW(ps, lr=ALPHA, weight_decay=5e-3),
        theta0,
        grad,
        etas,
        alpha=ALPHA,
        dtype=torch.float32,
    )
    err = reference.worst(actual, expected)
    assert err < 1e-4, f"max relative error {err:.3e} over {STEPS} steps"


def _seeded_run(make_optimizer, steps=100, amsgrad=False, maximize=False, seed=0):
    """100 steps of a small network under a cosine schedule; returns parameters."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(7, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )
    data = torch.randn(steps, 32, 7)
    target = torch.randn(steps, 32, 3)
    opt = make_optimizer(model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    for x, y in zip(data, target, strict=True):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


TORCH_IMPLS = [
    ({"foreach": False, "fused": False}, {"foreach": False}),
    ({"foreach": True}, {"foreach": True}),
    ({"fused": True}, {"fused": True}),
]


@pytest.mark.parametrize(("ours", "theirs"), TORCH_IMPLS)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_adamw_lr_scaling_is_torch_adamw(ours, theirs, amsgrad, maximize):
    """decay_scaling='lr' reproduces torch.optim.AdamW under a moving schedule."""
    kw = dict(lr=3e-3, weight_decay=0.05, amsgrad=amsgrad, maximize=maximize)
    a = _seeded_run(lambda p: AdamW(p, decay_scaling="lr", **kw, **ours))
    b = _seeded_run(lambda p: torch.optim.AdamW(p, **kw, **theirs))
    assert _rel(a, b) < 1e-6, f"max relative error {_rel(a, b):.3e}"


@pytest.mark.parametrize(("ours", "theirs"), TORCH_IMPLS)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_is_torch_adam(ours, theirs, amsgrad):
    """Adam with L2 is torch.optim.Adam under a moving schedule."""
    kw = dict(lr=3e-3, weight_decay=0.05, amsgrad=amsgrad)
    a = _seeded_run(lambda p: Adam(p, **kw, **ours))
    b = _seeded_run(lambda p: torch.optim.Adam(p, **kw, **theirs))
    assert _rel(a, b) < 1e-6, f"max relative error {_rel(a, b):.3e}"


def test_paper_units_differ_from_torch_units_by_alpha():
    """AdamW(lambda) in paper units equals torch AdamW(lambda / alpha)."""
    alpha, lam = 3e-3, 1e-4
    a = _seeded_run(lambda p: AdamW(p, lr=alpha, weight_decay=lam))
    b = _seeded_run(lambda p: torch.optim.AdamW(p, lr=alpha, weight_decay=lam / alpha))
    c = _seeded_run(lambda p: torch.optim.AdamW(p, lr=alpha, weight_decay=lam))
    assert _rel(a, b) < 1e-6, f"paper vs converted torch: {_rel(a, b):.3e}"
    assert _rel(a, c) > 1e-4, "paper units must differ from unconverted torch units"


@pytest.mark.parametrize("amsgrad", [False, True])
def test_paths_agree_in_float32(amsgrad):
    """Loop, foreach and fused paths agree to 1e-6 relative on float32."""
    runs = {
        name: _seeded_run(
            lambda p, kw=kw: AdamW(p, lr=1e-2, weight_decay=1e-3, amsgrad=amsgrad, **kw)
        )
        for name, kw in IMPLEMENTATIONS.items()
    }
    for name, params in runs.items():
        err = _rel(params, runs["loop"])
        assert err < 1e-6, f"{name} vs loop: max relative error {err:.3e}"


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_state_dict_resume_is_bit_identical(cls, impl, tmp_path):
    """Stopping after k steps and resuming from state_dict changes nothing."""

    def factory(p):
        return cls(p, lr=1e-2, weight_decay=1e-3, amsgrad=True, **IMPLEMENTATIONS[impl])

    straight, _ = resumable.train_resumable(factory, 40)
    _, half = resumable.train_resumable(factory, 20)
    torch.save(half, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed, _ = resumable.train_resumable(factory, 20, start_state=loaded, seed=123)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_determinism_bitwise():
    """Two identical seeded runs give bit-identical parameters."""
    a = _seeded_run(lambda p: AdamW(p, lr=1e-2, weight_decay=1e-3))
    b = _seeded_run(lambda p: AdamW(p, lr=1e-2, weight_decay=1e-3))
    assert torch.equal(a, b)


def rosenbrock_grad(xy: torch.Tensor) -> torch.Tensor:
    """Gradient of (1 - x)^2 + 100 (y - x^2)^2."""
    x, y = xy
    return torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_converges_on_rosenbrock(cls):
    """From (-1.5, 2) Adam/AdamW without decay reach the minimum (1, 1)."""
    xy = torch.nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float64))
    opt = cls([xy], lr=0.05)
    for _ in range(2000):
        xy.grad = rosenbrock_grad(xy.detach())
        opt.step()
    distance = (xy.detach() - 1).abs().max().item()
    assert distance < 1e-3, f"ended at {xy.tolist()}, {distance:.2e} from (1, 1)"


def test_param_without_grad_is_skipped_and_not_decayed():
    """A parameter whose grad is None keeps its value and has no state."""
    used = torch.nn.Parameter(torch.ones(3))
    unused = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([used, unused], lr=0.1, weight_decay=5e-3)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused.detach(), torch.ones(3))
    assert len(opt.state[unused]) == 0
    assert opt.state[used]["step"] == 1


def test_sparse_gradient_raises():
    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.ones(4).to_sparse()
    opt = AdamW([param], lr=0.1)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_complex_parameter_is_a_pair_of_reals(impl):
    """A complex parameter evolves exactly like its real and imaginary parts."""
    torch.manual_seed(0)
    z0 = torch.randn(6, dtype=torch.complex64)
    grads = [torch.randn(6, dtype=torch.complex64) for _ in range(20)]
    z = torch.nn.Parameter(z0.clone())
    r = torch.nn.Parameter(torch.view_as_real(z0).clone())
    opt_z = AdamW([z], lr=0.01, weight_decay=5e-3, **IMPLEMENTATIONS[impl])
    opt_r = AdamW([r], lr=0.01, weight_decay=5e-3, foreach=False, fused=False)
    for g in grads:
        z.grad, r.grad = g.clone(), torch.view_as_real(g).clone()
        opt_z.step()
        opt_r.step()
    assert torch.allclose(torch.view_as_real(z.detach()), r.detach(), rtol=1e-6)


def test_step_count_keeps_precision_for_low_precision_params():
    """The step counter is exact beyond bfloat16's 256 consecutive integers."""
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = AdamW([param], lr=1e-3)
    for _ in range(301):
        param.grad = torch.ones(4, dtype=torch.bfloat16)
        opt.step()
    step = opt.state[param]["step"]
    assert step == 301 and isinstance(step, int)
    assert float(torch.tensor(301.0, dtype=torch.bfloat16)) != 301.0


def test_first_adamw_step_closed_form():
    """theta_1 = theta_0 - eta_1 * (alpha * g / (|g| + eps) + lambda * theta_0)."""
    theta0 = torch.tensor([0.5, -2.0, 3.0, 1e-3], dtype=torch.float64)
    g = torch.tensor([1e-3, 4.0, -0.5, 2.0], dtype=torch.float64)
    alpha, eta, lam, eps = 0.1, 0.7, 0.005, 1e-8
    expected = theta0 - eta * (alpha * g / (g.abs() + eps) + lam * theta0)
    for kw in IMPLEMENTATIONS.values():
        param = torch.nn.Parameter(theta0.clone())
        opt = AdamW([param], lr=alpha, weight_decay=lam, eps=eps, **kw)
        opt.param_groups[0]["lr"] = alpha * eta
        param.grad = g.clone()
        opt.step()
        assert torch.allclose(param.detach(), expected, rtol=1e-12, atol=0), kw


def test_lambda_lr_drives_step_and_decay():
    """LambdaLR's multiplier is eta_t: it scales the decoupled decay too."""
    param = torch.nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    opt = AdamW([param], lr=0.5, weight_decay=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    expected = 2.0
    for t in range(5):
        param.grad = torch.zeros(3, dtype=torch.float64)
        opt.step()
        expected *= 1 - 0.5**t * 5e-3
        sched.step()
    assert math.isclose(param[0].item(), expected, rel_tol=1e-12)
    assert opt.param_groups[0]["initial_lr"] == 0.5
