"""The arithmetic of one optimizer step, over lists of real tensors.

Nothing here knows about parameter groups, schedules or units: the optimizer
classes turn those into three numbers per step and call these functions.

* ``lr``: the scheduled step size ``alpha * eta_t``.
* ``l2``: the L2 factor added to the gradient (0 for decoupled decay).
* ``decay``: the fraction of every weight removed by decoupled decay this
  step (0 for L2); ``eta_t * lambda`` in the paper's units.

Each algorithm comes in a per-tensor loop (the readable reference), a
multi-tensor version built on ``torch._foreach_*`` and, for Adam, a fused
version that hands the same arithmetic to PyTorch's fused kernels. All three
compute the same expressions in the same order, so they agree to rounding.
Complex tensors must be passed as ``torch.view_as_real`` views.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "as_real",
    "adam_foreach",
    "adam_for_loop",
    "adam_fused",
    "group_by_device_dtype_step",
    "sgd_foreach",
    "sgd_for_loop",
]


def settle_state(state: dict[str, Any]) -> None:
    """Bring one parameter's state to the form the step functions take.

    In place: the step count becomes a Python int (see
    :func:`whole_step_count`), and a state tensor that is a lazy negation
    (``Tensor.is_neg``) is materialized, because PyTorch's multi-tensor
    kernels cannot write through one.
    """
    whole_step_count(state)
    for key, value in state.items():
        if isinstance(value, Tensor) and value.is_neg():
            state[key] = value.resolve_neg()


def whole_step_count(state: dict[str, Any]) -> None:
    """Make a step count that is not a Python int one, in place.

    ``torch.optim`` keeps the count as a float32 tensor, so a state copied or
    loaded from it brings one. The bias corrections are computed from the
    count in double precision, as ``torch.optim`` computes them from its
    value.

    Raises:
        ValueError: the count is not a whole number >= 0.
    """
    step = state.get("step")
    if step is None or type(step) is int:
        return
    value = step.item() if isinstance(step, Tensor) else step
    whole = (
        isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
        and value == int(value)
    )
    if not whole:
        raise ValueError(
            f"state['step'] must be a whole number of steps >= 0, got {step!r}"
        )
    state["step"] = int(value)


def as_real(tensor: Tensor) -> Tensor:
    """A real view of a complex tensor; real tensors pass through."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def group_by_device_dtype_step(
    steps: Sequence[int], *tensor_lists: Sequence[Tensor]
) -> dict[tuple[torch.device, torch.dtype, int], list[list[Tensor]]]:
    """Bucket parallel lists by (device, dtype, step) of the first list.

    The multi-tensor kernels need one device and dtype per call, and one step
    count so that the bias corrections are scalars.
    """
    buckets: dict[tuple[torch.device, torch.dtype, int], list[list[Tensor]]]
    buckets = defaultdict(lambda: [[] for _ in tensor_lists])
    for i, step in enumerate(steps):
        first = tensor_lists[0][i]
        bucket = buckets[(first.device, first.dtype, step)]
        for out, tensors in zip(bucket, tensor_lists, strict=True):
            if tensors:
                out.append(tensors[i])
    return dict(buckets)


def bias_corrections(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """``1 - beta1^t`` and ``1 - beta2^t`` in double precision, for any step."""
    return 1.0 - beta1**step, 1.0 - beta2**step


def adam_for_loop(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    l2: float,
    decay: float,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """Algorithm 2, one tensor at a time. ``steps`` are counts after this step."""
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, steps[i])

        # L2: the decay enters the gradient, g_t + lambda * theta_{t-1}.
        if l2 != 0.0:
            grad = grad.add(param, alpha=l2)

        # Moments: m_t = b1 m + (1 - b1) g, v_t = b2 v + (1 - b2) g^2.
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

        # Decoupled decay on the old weights: theta *= 1 - eta_t * lambda.
        if decay != 0.0:
            param.mul_(1.0 - decay)

        # theta -= lr * mhat / (sqrt(vhat) + eps), the corrections folded in.
        second = exp_avg_sq
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            second = max_exp_avg_sqs[i]
        denom = (second.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def adam_foreach(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    l2: float,
    decay: float,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """Algorithm 2 with ``torch._foreach_*``: the same expressions as the loop."""
    buckets = group_by_device_dtype_step(
        steps, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
    )
    for (_, _, step), (ps, gs, ms, vs, maxs) in buckets.items():
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)

        # The gradient, negated for maximization, plus the L2 term.
        if maximize:
            gs = torch._foreach_neg(gs)
        if l2 != 0.0:
            gs = torch._foreach_add(gs, ps, alpha=l2)

        # Moments.
        torch._foreach_lerp_(ms, gs, 1.0 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1.0 - beta2)

        # Decoupled decay on the old weights.
        if decay != 0.0:
            torch._foreach_mul_(ps, 1.0 - decay)

        # The bias-corrected step.
        second = vs
        if amsgrad:
            torch._foreach_maximum_(maxs, vs)
            second = maxs
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, math.sqrt(bias_correction2))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(ps, ms, denom, value=-lr / bias_correction1)


def adam_fused(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    l2: float,
    decay: float,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """Algorithm 2 through PyTorch's fused Adam kernels.

    The kernels compute ``theta *= 1 - lr' * wd'`` (AdamW) or add
    ``wd' * theta`` to the gradient (Adam). Decoupled decay in any units is
    the first with ``lr' = lr`` and ``wd' = decay / lr``; L2 is the second
    with ``wd' = l2``. Callers must not use this path when ``lr == 0`` and
    ``decay != 0`` (the ratio is undefined) or with both ``l2`` and ``decay``.
    """
    if l2 != 0.0 and decay != 0.0:
        raise ValueError("adam_fused takes L2 or decoupled decay, not both")
    if decay != 0.0 and lr == 0.0:
        raise ValueError("adam_fused cannot apply decay with lr=0")

    # The fused kernels walk memory linearly: a row with a non-contiguous
    # tensor would be updated at the wrong elements (PyTorch 2.13, CPU), so
    # such rows take the multi-tensor path, which computes the same update.
    rows = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] * amsgrad)
    dense = [all(t.is_contiguous() for t in row) for row in zip(*rows, strict=True)]
    if not all(dense):

        def pick(items: Sequence, keep: bool) -> list:
            return [x for x, ok in zip(items, dense, strict=True) if ok is keep]

        adam_foreach(
            *(pick(ts, False) for ts in rows[:4]),
            pick(max_exp_avg_sqs, False) if amsgrad else [],
            pick(steps, False),
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            l2=l2,
            decay=decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )
        params, grads, exp_avgs, exp_avg_sqs = (pick(ts, True) for ts in rows[:4])
        max_exp_avg_sqs = pick(max_exp_avg_sqs, True) if amsgrad else []
        steps = pick(steps, True)
    decoupled = decay != 0.0
    weight_decay = decay / lr if decoupled else l2
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    buckets = group_by_device_dtype_step(
        steps, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
    )
    for (device, _, step), (ps, gs, ms, vs, maxs) in buckets.items():
        # One step tensor shared by the whole bucket: the kernel only reads it.
        step_tensor = torch.full((), float(step), dtype=torch.float32, device=device)
        kernel(
            ps,
            gs,
            ms,
            vs,
            maxs,
            [step_tensor] * len(ps),
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            eps=eps,
            amsgrad=amsgrad,
            maximize=maximize,
            grad_scale=None,
            found_inf=None,
        )


def sgd_for_loop(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    l2: float,
    decay: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    """Algorithm 1, one tensor at a time; the learning rate sits in the buffer."""
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]

        # L2: g_t + lambda * theta_{t-1}.
        if l2 != 0.0:
            grad = grad.add(param, alpha=l2)

        # m_t = beta1 m_{t-1} + eta_t alpha g_t; Nesterov looks one step ahead.
        if momentum != 0.0:
            buf = momentum_buffers[i]
            buf.mul_(momentum).add_(grad, alpha=lr)
            update = buf.mul(momentum).add_(grad, alpha=lr) if nesterov else buf
        else:
            update = grad.mul(lr)

        # Decoupled decay on the old weights, then theta -= m_t.
        if decay != 0.0:
            param.mul_(1.0 - decay)
        param.sub_(update)


def sgd_foreach(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    l2: float,
    decay: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    """Algorithm 1 with ``torch._foreach_*``: the same expressions as the loop."""
    steps = [0] * len(params)
    buckets = group_by_device_dtype_step(steps, params, grads, momentum_buffers)
    for ps, gs, bufs in buckets.values():
        # The gradient, negated for maximization, plus the L2 term.
        if maximize:
            gs = torch._foreach_neg(gs)
        if l2 != 0.0:
            gs = torch._foreach_add(gs, ps, alpha=l2)

        # The momentum buffer holds the scheduled step: m = b m + lr g.
        if momentum != 0.0:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, gs, alpha=lr)
            if nesterov:
                updates = torch._foreach_mul(bufs, momentum)
                torch._foreach_add_(updates, gs, alpha=lr)
            else:
                updates = bufs
        else:
            updates = torch._foreach_mul(gs, lr)

        # Decoupled decay on the old weights, then the step.
        if decay != 0.0:
            torch._foreach_mul_(ps, 1.0 - decay)
        torch._foreach_sub_(ps, updates)
