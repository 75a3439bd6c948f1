r"""SGD with momentum and L2 regularization, and SGDW with decoupled decay.

Both follow Algorithm 1 of Loshchilov & Hutter (2019). With base learning
rate :math:`\alpha` (``lr`` at construction), schedule multiplier
:math:`\eta_t` = ``group["lr"] / group["initial_lr"]``, momentum
:math:`\beta_1` (``momentum``) and decay factor :math:`\lambda`
(``weight_decay``):

.. math::

    g_t &= \nabla f_t(\theta_{t-1}) \;[+\, \lambda \theta_{t-1}
           \text{ (SGD only)}] \\
    m_t &= \beta_1 m_{t-1} + \eta_t \alpha g_t \\
    \theta_t &= \theta_{t-1} - m_t \;[-\, \eta_t \lambda \theta_{t-1}
               \text{ (SGDW only)}]

The learning rate sits inside the momentum buffer. While the schedule is
constant this is ``torch.optim.SGD(dampening=0)``, whose buffer holds
gradients and is multiplied by the learning rate afterwards; while the
schedule moves the two differ (here a change of learning rate acts on new
gradients only).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from weightdecay import _kernels, _update
from weightdecay._base import (
    ScheduledOptimizer,
    as_real,
    check_unit_interval,
    warn_if_torch_sized,
)

__all__ = ["SGD", "SGDW"]


class _SGDCore(ScheduledOptimizer):
    """Algorithm 1; ``_decoupled`` chooses SGDW over SGD with L2."""

    _decoupled: bool

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        decay_scaling: str = "schedule",
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            decay_scaling=decay_scaling,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_unit_interval("momentum", group["momentum"])
        if group["nesterov"] and group["momentum"] == 0.0:
            raise ValueError("nesterov=True requires momentum > 0, got momentum=0.0")
        if self._decoupled:
            warn_if_torch_sized(group["weight_decay"], group["decay_scaling"])

    def _init_state(self, param: Tensor, momentum: float) -> dict[str, Any]:
        state = self.state[param]
        # The step count is a Python int: exact at any length.
        state.setdefault("step", 0)
        _update.settle_state(state)
        if momentum != 0.0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(
                param, memory_format=torch.preserve_format
            )
        return state

    def _step_group(self, group: dict[str, Any]) -> None:
        momentum = float(group["momentum"])
        options = dict(
            lr=float(group["lr"]),
            momentum=momentum,
            l2=0.0 if self._decoupled else float(group["weight_decay"]),
            decay=self.decoupled_decay(group) if self._decoupled else 0.0,
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        keys = ("momentum_buffer",) if momentum != 0.0 else ()
        planned = self._planned(group, keys)
        if planned is None:
            params, grads, originals = self._gather(group)
            if not params:
                return
            for param in originals:
                self._init_state(param, momentum)
            if group["foreach"] is None and _kernels.applies(params):
                planned = self._new_plan(group, keys, _kernels.SGD_ROWS)
        if planned is not None:
            plan, rest = planned
            plan.advance()
            plan.sgd(rest, **options)
            return

        buffers = []
        for param in originals:
            state = self.state[param]
            state["step"] += 1
            if momentum != 0.0:
                buffers.append(as_real(state["momentum_buffer"]))
        if group["foreach"] is False:
            implementation = _update.sgd_for_loop
        else:
            implementation = _update.sgd_foreach
        implementation(params, grads, buffers, **options)


class SGD(_SGDCore):
    r"""SGD with momentum and L2 regularization (Algorithm 1, "SGD").

    .. math::

        m_t = \beta_1 m_{t-1} + \eta_t \alpha (\nabla f_t(\theta_{t-1})
        + \lambda \theta_{t-1}), \qquad \theta_t = \theta_{t-1} - m_t

    ``weight_decay`` is the L2 factor :math:`\lambda`. Departure from
    ``torch.optim.SGD``: the momentum buffer stores :math:`m_t` with the
    learning rate inside, as in the paper, and ``momentum`` defaults to 0.9.
    While ``lr`` is constant the two agree (PyTorch's ``dampening=0``);
    while it changes, PyTorch rescales old momentum by the new rate and this
    class does not. Nesterov momentum uses
    :math:`\theta_t = \theta_{t-1} - (\beta_1 m_t + \eta_t \alpha g_t)`.

    Args:
        params: parameters or parameter groups.
        lr: base learning rate :math:`\alpha`; must be > 0.
        momentum: :math:`\beta_1` in [0, 1).
        weight_decay: the L2 factor :math:`\lambda`.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        maximize: ascend instead of descend.
        foreach: use the multi-tensor path (default) or, with False, the
            per-tensor loop.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    """

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            momentum,
            weight_decay,
            nesterov,
            maximize=maximize,
            foreach=foreach,
            decay_scaling="none",
        )


class SGDW(_SGDCore):
    r"""SGD with momentum and decoupled weight decay (Algorithm 1, "SGDW").

    .. math::

        m_t = \beta_1 m_{t-1} + \eta_t \alpha \nabla f_t(\theta_{t-1}),
        \qquad \theta_t = \theta_{t-1} - m_t - \eta_t \lambda \theta_{t-1}

    The decay uses the old weights and is scaled by :math:`\eta_t` but not
    by :math:`\alpha`. ``decay_scaling`` chooses the units of
    ``weight_decay``: ``"schedule"`` (default, the paper: per-step decay
    :math:`\eta_t \lambda`), ``"lr"`` (PyTorch's convention: per-step decay
    ``group["lr"] * weight_decay``) or ``"none"`` (constant :math:`\lambda`).
    Without momentum and at a constant rate, SGDW with :math:`\lambda`
    equals :class:`SGD` with L2 factor :math:`\lambda / \alpha`.

    Args:
        params: parameters or parameter groups.
        lr: base learning rate :math:`\alpha`; must be > 0.
        momentum: :math:`\beta_1` in [0, 1).
        weight_decay: :math:`\lambda`, in the units set by ``decay_scaling``.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        maximize: ascend instead of descend.
        foreach: use the multi-tensor path (default) or, with False, the
            per-tensor loop.
        decay_scaling: ``"schedule"``, ``"lr"`` or ``"none"``.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SGDW(model.parameters(), lr=0.1, weight_decay=1e-4)
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        decay_scaling: str = "schedule",
    ) -> None:
        super().__init__(
            params,
            lr,
            momentum,
            weight_decay,
            nesterov,
            maximize=maximize,
            foreach=foreach,
            decay_scaling=decay_scaling,
        )
