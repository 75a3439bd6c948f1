"""The paper's own statements about L2 and decoupled decay, checked numerically."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from weightdecay import SGD, SGDW, Adam, AdamW


def _trajectory(factory, theta0, grad, etas, alpha):
    return reference.drive(factory, theta0, grad, etas, alpha=alpha)


def test_zero_decay_makes_l2_and_decoupled_coincide():
    """With weight_decay=0, Adam == AdamW and SGD == SGDW exactly."""
    theta0, grad = reference.objective_grad(dim=8, seed=7)
    etas = reference.moving_schedule(40)
    adam = _trajectory(lambda p: Adam(p, lr=0.03), theta0, grad, etas, 0.03)
    adamw = _trajectory(lambda p: AdamW(p, lr=0.03), theta0, grad, etas, 0.03)
    sgd = _trajectory(lambda p: SGD(p, lr=0.03), theta0, grad, etas, 0.03)
    sgdw = _trajectory(lambda p: SGDW(p, lr=0.03), theta0, grad, etas, 0.03)
    assert all(np.array_equal(a, b) for a, b in zip(adam, adamw, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(sgd, sgdw, strict=True))


def test_plain_sgd_l2_equals_sgdw_with_lambda_times_lr():
    """Without momentum at constant lr: SGD(lambda') == SGDW(lambda = lr * lambda')."""
    theta0, grad = reference.objective_grad(dim=8, seed=8)
    etas = [1.0] * 50
    alpha, l2 = 0.05, 0.1
    sgd = _trajectory(
        lambda p: SGD(p, lr=alpha, momentum=0.0, weight_decay=l2),
        theta0,
        grad,
        etas,
        alpha,
    )
    sgdw = _trajectory(
        lambda p: SGDW(p, lr=alpha, momentum=0.0, weight_decay=alpha * l2),
        theta0,
        grad,
        etas,
        alpha,
    )
    err = reference.worst(sgdw, sgd)
    assert err < 1e-12, f"max relative error {err:.3e}"


def test_with_momentum_sgd_l2_and_sgdw_differ():
    """With momentum the equivalence breaks: the decay then has momentum too."""
    theta0, grad = reference.objective_grad(dim=8, seed=8)
    etas = [1.0] * 50
    alpha, l2 = 0.05, 0.1
    sgd = _trajectory(
        lambda p: SGD(p, lr=alpha, weight_decay=l2), theta0, grad, etas, alpha
    )
    sgdw = _trajectory(
        lambda p: SGDW(p, lr=alpha, weight_decay=alpha * l2), theta0, grad, etas, alpha
    )
    assert reference.worst(sgdw, sgd) > 1e-3


def test_adamw_shrinks_by_product_of_decays_whatever_lr():
    """With a zero loss gradient AdamW multiplies weights by prod(1 - eta_s lambda)."""
    etas = reference.moving_schedule(30)
    lam = 4e-3
    expected = math.prod(1 - eta * lam for eta in etas)
    theta0 = np.array([1.5, -2.0, 0.25])
    for alpha in (1e-4, 1e-2, 1.0):
        final = reference.drive(
            lambda p: AdamW(p, lr=alpha, weight_decay=lam),  # noqa: B023
            theta0,
            lambda th, t: np.zeros_like(th),
            etas,
            alpha=alpha,
        )[-1]
        np.testing.assert_allclose(final, theta0 * expected, rtol=1e-13)


def test_adam_l2_cannot_reproduce_adamw_on_anisotropic_quadratic():
    """No L2 factor mimics decoupled decay once the preconditioner is not scalar.

    On f = 0.5 (100 x^2 + 0.01 y^2) Adam divides the L2 term by sqrt(vhat)
    together with the gradient, so its decay is rescaled by each coordinate's
    gradient history instead of acting as lambda * theta. Adam with lambda /
    alpha and AdamW with lambda end apart (by a factor of about 1.5 after 200
    steps in the float64 reference).
    """
    hess = np.array([100.0, 0.01])
    theta0 = np.array([1.0, 1.0])
    alpha, lam = 1e-3, 2e-3
    etas = [1.0] * 200

    def grad(theta, t):
        return hess * theta

    adamw = reference.drive(
        lambda p: AdamW(p, lr=alpha, weight_decay=lam), theta0, grad, etas, alpha=alpha
    )[-1]
    adam = reference.drive(
        lambda p: Adam(p, lr=alpha, weight_decay=lam / alpha),
        theta0,
        grad,
        etas,
        alpha=alpha,
    )[-1]
    ratio = adam / adamw
    assert np.abs(ratio - 1).max() > 0.2, f"Adam/AdamW final ratio {ratio}"


betas = st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999))


@settings(max_examples=25, deadline=None)
@given(
    alpha=st.floats(1e-4, 1.0),
    lam=st.floats(0.0, 9e-3),
    beta=betas,
    eps=st.floats(1e-10, 1e-2),
    seed=st.integers(0, 10_000),
    decoupled=st.booleans(),
)
def test_adam_family_matches_reference_for_any_hyperparameters(
    alpha, lam, beta, eps, seed, decoupled
):
    theta0, grad = reference.objective_grad(dim=5, seed=seed)
    etas = list(np.random.default_rng(seed).uniform(0.0, 1.0, size=15))
    if decoupled:
        expected = reference.adam(
            theta0,
            grad,
            etas,
            alpha=alpha,
            beta1=beta[0],
            beta2=beta[1],
            eps=eps,
            decays=[e * lam for e in etas],
        )
        cls = AdamW
    else:
        expected = reference.adam(
            theta0,
            grad,
            etas,
            alpha=alpha,
            beta1=beta[0],
            beta2=beta[1],
            eps=eps,
            l2=lam,
        )
        cls = Adam
    actual = reference.drive(
        lambda p: cls(p, lr=alpha, betas=beta, eps=eps, weight_decay=lam),
        theta0,
        grad,
        etas,
        alpha=alpha,
    )
    assert reference.worst(actual, expected) < 1e-9


@settings(max_examples=25, deadline=None)
@given(
    alpha=st.floats(1e-4, 0.1),
    lam=st.floats(0.0, 9e-3),
    momentum=st.floats(0.0, 0.99),
    seed=st.integers(0, 10_000),
    decoupled=st.booleans(),
)
def test_sgd_family_matches_reference_for_any_hyperparameters(
    alpha, lam, momentum, seed, decoupled
):
    theta0, grad = reference.objective_grad(dim=5, seed=seed)
    etas = list(np.random.default_rng(seed).uniform(0.0, 1.0, size=15))
    decays = [e * lam for e in etas] if decoupled else None
    expected = reference.sgd(
        theta0,
        grad,
        etas,
        alpha=alpha,
        momentum=momentum,
        decays=decays,
        l2=0.0 if decoupled else lam,
    )
    cls = SGDW if decoupled else SGD
    actual = reference.drive(
        lambda p: cls(p, lr=alpha, momentum=momentum, weight_decay=lam),
        theta0,
        grad,
        etas,
        alpha=alpha,
    )
    assert reference.worst(actual, expected) < 1e-9


@settings(max_examples=20, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(st.integers(1, 7), st.integers(1, 5)), min_size=1, max_size=6
    ),
    amsgrad=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_adamw_paths_agree_for_any_shapes(shapes, amsgrad, seed):
    """Loop, foreach and fused give the same float32 result on any tensor list."""
    gen = torch.Generator().manual_seed(seed)
    inits = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(5)]
    results = []
    for kw in ({"foreach": False, "fused": False}, {"foreach": True}, {"fused": True}):
        params = [torch.nn.Parameter(x.clone()) for x in inits]
        opt = AdamW(params, lr=0.01, weight_decay=5e-3, amsgrad=amsgrad, **kw)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in params]))
    for other in results[1:]:
        assert torch.allclose(other, results[0], rtol=1e-6, atol=1e-7)
