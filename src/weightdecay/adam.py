r"""Adam with L2 regularization and AdamW with decoupled weight decay.

Both follow Algorithm 2 of Loshchilov & Hutter (2019). With base learning
rate :math:`\alpha` (``lr`` at construction), schedule multiplier
:math:`\eta_t` = ``group["lr"] / group["initial_lr"]``, decay factor
:math:`\lambda` (``weight_decay``), ``betas`` :math:`(\beta_1, \beta_2)`:

.. math::

    g_t &= \nabla f_t(\theta_{t-1}) \;[+\, \lambda \theta_{t-1}
           \text{ (Adam only)}] \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    \hat m_t &= m_t / (1 - \beta_1^t), \quad \hat v_t = v_t / (1 - \beta_2^t) \\
    \theta_t &= \theta_{t-1} - \eta_t \big(\alpha \hat m_t / (\sqrt{\hat v_t}
               + \epsilon) \;[+\, \lambda \theta_{t-1} \text{ (AdamW only)}]\big)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from weightdecay import _kernels, _update
from weightdecay._base import (
    ScheduledOptimizer,
    as_real,
    check_nonnegative,
    check_unit_interval,
    warn_if_torch_sized,
)

__all__ = ["Adam", "AdamW"]

# The state tensors of a parameter, without and with amsgrad.
_STATE_KEYS = {
    False: ("exp_avg", "exp_avg_sq"),
    True: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
}
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


class _AdamCore(ScheduledOptimizer):
    """Algorithm 2; ``_decoupled`` chooses AdamW over Adam with L2."""

    _decoupled: bool

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        decay_scaling: str = "schedule",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            decay_scaling=decay_scaling,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_nonnegative("eps", group["eps"])
        betas = group["betas"]
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of floats, got {betas!r}")
        check_unit_interval("betas[0]", betas[0])
        check_unit_interval("betas[1]", betas[1])
        if self._decoupled:
            warn_if_torch_sized(group["weight_decay"], group["decay_scaling"])

    def _init_state(self, param: Tensor, amsgrad: bool) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            # The step count is a Python int: exact at any length.
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(
                param, memory_format=torch.preserve_format
            )
            state["exp_avg_sq"] = torch.zeros_like(
                param, memory_format=torch.preserve_format
            )
        _update.settle_state(state)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(
                param, memory_format=torch.preserve_format
            )
        return state

    def _implementation(
        self, group: dict[str, Any], params: list[Tensor], lr: float, decay: float
    ) -> Callable[..., None]:
        """Pick the per-tensor, multi-tensor or fused path for this group.

        The fused kernels express decoupled decay as ``lr * (decay / lr)``, so
        a step with ``lr == 0`` and decay left (``decay_scaling="none"``) runs
        on the multi-tensor path, which computes the same update. By default
        CPU parameters in float32/float64 run on ``_kernels`` (one parallel
        pass over all tensors) where numba is installed: then the result is
        ``_kernels.Plan``, which the step builds for the group.
        """
        fused, foreach = group["fused"], group["foreach"]
        if fused is None and foreach is None and _kernels.applies(params):
            return _kernels.Plan
        fusable = all(
            p.dtype in _FUSED_DTYPES
            and p.device.type in _FUSED_DEVICES
            and not _is_dtensor(p)
            for p in params
        )
        if fused and not fusable:
            raise RuntimeError(
                f"{type(self).__name__}(fused=True) needs floating-point parameters "
                f"on one of {_FUSED_DEVICES} that are not DTensors; use foreach=True"
            )
        if lr == 0.0 and decay != 0.0:
            return _update.adam_foreach
        if fused or (fused is None and foreach is None and fusable):
            return _update.adam_fused
        if foreach is False:
            return _update.adam_for_loop
        return _update.adam_foreach

    def _step_group(self, group: dict[str, Any]) -> None:
        amsgrad = group["amsgrad"]
        # Paper units: step size alpha * eta_t; decay per the chosen units.
        lr = float(group["lr"])
        decay = self.decoupled_decay(group) if self._decoupled else 0.0
        beta1, beta2 = group["betas"]
        options = dict(
            lr=lr,
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            l2=0.0 if self._decoupled else float(group["weight_decay"]),
            decay=decay,
            amsgrad=amsgrad,
            maximize=group["maximize"],
        )
        keys = _STATE_KEYS[amsgrad]
        planned = self._planned(group, keys)
        if planned is None:
            params, grads, originals = self._gather(group)
            if not params:
                return
            for param in originals:
                self._init_state(param, amsgrad)
            implementation = self._implementation(group, params, lr, decay)
            if implementation is _kernels.Plan:
                planned = self._new_plan(group, keys, _kernels.ADAM_ROWS)
        if planned is not None:
            plan, rest = planned
            plan.adam(rest, plan.advance(), **options)
            return

        exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], []
        for param in originals:
            state = self.state[param]
            state["step"] += 1
            steps.append(state["step"])
            exp_avgs.append(as_real(state["exp_avg"]))
            exp_avg_sqs.append(as_real(state["exp_avg_sq"]))
            if amsgrad:
                max_exp_avg_sqs.append(as_real(state["max_exp_avg_sq"]))
        implementation(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, **options
        )


def _is_dtensor(tensor: Tensor) -> bool:
    return type(tensor).__name__ == "DTensor"


class Adam(_AdamCore):
    r"""Adam with L2 regularization (Algorithm 2, "Adam").

    ``weight_decay`` is the L2 factor :math:`\lambda` added to the gradient,
    :math:`g_t = \nabla f_t + \lambda \theta_{t-1}`, so it is then divided by
    :math:`\sqrt{\hat v_t}` like the rest of the gradient: weights with large
    gradients are barely regularized. The step is
    :math:`\theta_t = \theta_{t-1} - \eta_t \alpha \hat m_t / (\sqrt{\hat v_t}
    + \epsilon)` with :math:`\eta_t \alpha` = ``group["lr"]``.

    This is exactly ``torch.optim.Adam`` (same arguments, same state keys),
    under any learning-rate schedule.

    Args:
        params: parameters or parameter groups.
        lr: base learning rate :math:`\alpha`; must be > 0.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon`, added after the square root of :math:`\hat v_t`.
        weight_decay: the L2 factor :math:`\lambda`.
        amsgrad: use the running maximum of :math:`v_t` (as PyTorch does).
        maximize: ascend instead of descend.
        foreach: force (True) or forbid (False) the multi-tensor path.
        fused: force (True) or forbid (False) PyTorch's fused kernels.
            With both ``None`` the fused kernels are used where they apply.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    """

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            decay_scaling="none",
        )


class AdamW(_AdamCore):
    r"""Adam with decoupled weight decay (Algorithm 2, "AdamW").

    .. math::

        \theta_t = \theta_{t-1} - \eta_t \big(\alpha \hat m_t /
        (\sqrt{\hat v_t} + \epsilon) + \lambda \theta_{t-1}\big)

    The decay uses the old weights and is scaled by the schedule multiplier
    :math:`\eta_t` = ``group["lr"] / group["initial_lr"]`` but **not** by
    :math:`\alpha`, so the best ``weight_decay`` does not move with ``lr``.

    Where it departs from ``torch.optim.AdamW``: PyTorch removes
    ``lr_t * weight_decay`` of each weight per step, i.e. its decay is also
    multiplied by :math:`\alpha`. ``decay_scaling`` chooses the units:

    * ``"schedule"`` (default, the paper): per-step decay
      :math:`\eta_t \lambda`.
    * ``"lr"`` (PyTorch): per-step decay ``group["lr"] * weight_decay``;
      then this class reproduces ``torch.optim.AdamW``.
    * ``"none"``: a constant per-step decay :math:`\lambda`.

    ``weight_decay.decay.paper_from_torch`` converts between the first two.
    In paper units a PyTorch-sized value such as 0.01 (1% of every weight
    per step) triggers a ``WeightDecayUnitsWarning``.

    Args:
        params: parameters or parameter groups.
        lr: base learning rate :math:`\alpha`; must be > 0.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon`, added after the square root of :math:`\hat v_t`.
        weight_decay: :math:`\lambda`, in the units set by ``decay_scaling``.
        amsgrad: use the running maximum of :math:`v_t` (as PyTorch does).
        maximize: ascend instead of descend.
        foreach: force (True) or forbid (False) the multi-tensor path.
        fused: force (True) or forbid (False) PyTorch's fused kernels.
        decay_scaling: ``"schedule"``, ``"lr"`` or ``"none"``, see above.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        decay_scaling: str = "schedule",
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            decay_scaling=decay_scaling,
        )
