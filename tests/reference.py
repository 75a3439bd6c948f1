"""Textbook float64 loops of the paper's Algorithms 1 and 2, in NumPy.

Written for the tests and independent of the library: no torch, one step at
a time, the equations exactly as Loshchilov & Hutter state them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Grad = Callable[[np.ndarray, int], np.ndarray]


def adam(
    theta0: np.ndarray,
    grad: Grad,
    etas: Sequence[float],
    *,
    alpha: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    l2: float = 0.0,
    decays: Sequence[float] | None = None,
    amsgrad: bool = False,
    maximize: bool = False,
) -> list[np.ndarray]:
    """Algorithm 2; returns theta_1 .. theta_T.

    ``l2`` is Adam's L2 factor; ``decays[t-1]`` is the fraction of the weights
    removed by decoupled decay at step t (``eta_t * lambda`` for AdamW).
    """
    theta = np.array(theta0, dtype=np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    v_max = np.zeros_like(theta)
    out = []
    for t, eta in enumerate(etas, start=1):
        g = grad(theta, t)
        if maximize:
            g = -g
        g = g + l2 * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        if amsgrad:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / (1 - beta2**t)
        else:
            v_hat = v / (1 - beta2**t)
        decay = 0.0 if decays is None else decays[t - 1]
        theta = theta - eta * alpha * m_hat / (np.sqrt(v_hat) + eps) - decay * theta
        out.append(theta.copy())
    return out


def sgd(
    theta0: np.ndarray,
    grad: Grad,
    etas: Sequence[float],
    *,
    alpha: float,
    momentum: float = 0.9,
    l2: float = 0.0,
    decays: Sequence[float] | None = None,
    nesterov: bool = False,
    maximize: bool = False,
) -> list[np.ndarray]:
    """Algorithm 1 (learning rate inside the momentum); returns theta_1 .. theta_T."""
    theta = np.array(theta0, dtype=np.float64)
    m = np.zeros_like(theta)
    out = []
    for t, eta in enumerate(etas, start=1):
        g = grad(theta, t)
        if maximize:
            g = -g
        g = g + l2 * theta
        m = momentum * m + eta * alpha * g
        step = momentum * m + eta * alpha * g if nesterov else m
        decay = 0.0 if decays is None else decays[t - 1]
        theta = theta - step - decay * theta
        out.append(theta.copy())
    return out


def decoupled_decays(
    scaling: str, etas: Sequence[float], lam: float, *, alpha: float
) -> list[float]:
    """The fraction of the weights removed at each step, in each unit system.

    ``"schedule"`` (the paper): eta_t * lambda; ``"lr"`` (PyTorch):
    alpha * eta_t * lambda; ``"none"``: lambda at every step.
    """
    if scaling == "schedule":
        return [eta * lam for eta in etas]
    if scaling == "lr":
        return [alpha * eta * lam for eta in etas]
    if scaling == "none":
        return [lam] * len(etas)
    raise ValueError(f"unknown scaling {scaling!r}")


def objective_grad(dim: int, seed: int) -> tuple[np.ndarray, Grad]:
    """A non-trivial objective: anisotropic quadratic + cosine ripples + noise.

    f_t(theta) = 0.5 theta^T H theta + 0.3 sum cos(2 theta) + n_t . theta with
    a fixed random SPD H of condition number ~100 and n_t seeded per step.
    Returns (theta0, grad).
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    hessian = q @ np.diag(np.logspace(-1, 1, dim)) @ q.T
    theta0 = rng.standard_normal(dim)
    noise = np.random.default_rng(seed + 1).standard_normal((10_000, dim)) * 0.1

    def grad(theta: np.ndarray, t: int) -> np.ndarray:
        return hessian @ theta - 0.6 * np.sin(2 * theta) + noise[t]

    return theta0, grad


def moving_schedule(steps: int) -> list[float]:
    """A multiplier that changes every step: cosine from 1 to 0.1 with jitter."""
    t = np.arange(steps)
    base = 0.1 + 0.45 * (1 + np.cos(np.pi * t / steps))
    return list(base * (1 + 0.05 * np.sin(1.7 * t)))


def max_rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|: the worst error relative to the vector's scale."""
    return float(
        np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300)
    )


def drive(
    optimizer_factory: Callable[[list], object],
    theta0: np.ndarray,
    grad: Grad,
    etas: Sequence[float],
    *,
    alpha: float,
    dtype: object = None,
    split: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Run a torch optimizer on ``grad`` with lr = alpha * eta_t set every step.

    The parameter vector is optionally split into several tensors (``split``
    gives their sizes) so that multi-tensor paths see more than one tensor.
    Returns theta_1 .. theta_T as float64 arrays.
    """
    import torch

    dtype = dtype or torch.float64
    sizes = list(split or [len(theta0)])
    pieces = torch.tensor(theta0, dtype=dtype).split(sizes)
    params = [torch.nn.Parameter(p.clone()) for p in pieces]
    opt = optimizer_factory(params)
    out = []
    for t, eta in enumerate(etas, start=1):
        for group in opt.param_groups:
            group["lr"] = alpha * eta
        theta = torch.cat([p.detach() for p in params]).double().numpy()
        g = torch.tensor(grad(theta, t), dtype=dtype).split(sizes)
        for p, gi in zip(params, g, strict=True):
            p.grad = gi.clone()
        opt.step()
        out.append(torch.cat([p.detach() for p in params]).double().numpy())
    return out


def worst(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """The worst per-step relative error over a trajectory."""
    return max(max_rel_error(a, e) for a, e in zip(actual, expected, strict=True))
