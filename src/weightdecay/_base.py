"""What the four optimizers share: validation, the schedule multiplier, units."""

from __future__ import annotations

import functools
import itertools
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from weightdecay import _kernels
from weightdecay._update import as_real

try:  # the hooks of every optimizer, and the C++ RecordFunction bindings
    from torch._C._autograd import (
        _record_function_with_args_enter,
        _record_function_with_args_exit,
    )
    from torch.optim.optimizer import (
        _global_optimizer_post_hooks,
        _global_optimizer_pre_hooks,
    )
except ImportError:  # another layout: keep torch's own step wrapper
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = None

__all__ = ["DECAY_SCALINGS", "WeightDecayUnitsWarning", "ScheduledOptimizer"]

DECAY_SCALINGS = ("schedule", "lr", "none")

# A per-step decay this large is PyTorch-sized: 0.01 removes 1% of every
# weight per step, a half-life of about 69 steps.
_SUSPICIOUS_DECAY = 1e-2


class WeightDecayUnitsWarning(UserWarning):
    """A ``weight_decay`` that is probably in the wrong units."""


def check_nonnegative(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0."""
    if isinstance(value, Tensor):
        raise ValueError(f"{name} must be a Python number, got a Tensor: {value!r}")
    try:
        ok = math.isfinite(value) and value >= 0.0
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1``."""
    try:
        ok = 0.0 <= value < 1.0
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def warn_if_torch_sized(weight_decay: float, decay_scaling: str) -> None:
    """Warn when a decay in paper units looks like a PyTorch-sized value."""
    if decay_scaling == "lr" or weight_decay < _SUSPICIOUS_DECAY:
        return
    half_life = math.log(0.5) / math.log1p(-weight_decay) if weight_decay < 1 else 0
    warnings.warn(
        f"weight_decay={weight_decay!r} with decay_scaling={decay_scaling!r} removes "
        f"{weight_decay:.2%} of every decayed weight per step at full schedule "
        f"(half-life {half_life:.0f} steps). PyTorch's AdamW multiplies weight_decay "
        "by the learning rate; for its convention pass decay_scaling='lr', or use "
        "weight_decay = lr * your_value in the paper's units.",
        WeightDecayUnitsWarning,
        stacklevel=_user_stacklevel(),
    )


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's line.

    Counts the frames of this package and of ``torch.optim`` between the
    caller of ``warnings.warn`` and the first frame outside them, so the
    warning names the constructor call or ``add_param_group`` call that the
    user wrote, whichever path led here.
    """
    frame = sys._getframe(1)  # the function that calls warnings.warn
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("weightdecay.", "torch.optim")
    ):
        frame = frame.f_back
        level += 1
    return level


class ScheduledOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose groups carry ``initial_lr``.

    The schedule multiplier of a group is ``eta_t = lr / initial_lr``.
    ``initial_lr`` is recorded when the group is added unless a scheduler set
    it first, so any ``torch.optim.lr_scheduler`` (or a loop writing
    ``group["lr"]``) scales the step and the decoupled decay together.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        group.setdefault("initial_lr", group["lr"])
        initial_lr = group["initial_lr"]
        check_nonnegative("initial_lr", initial_lr)
        if initial_lr == 0.0:
            raise ValueError(
                "lr must be > 0 when a parameter group is created, got 0.0: the "
                "schedule multiplier eta_t = lr / initial_lr would be undefined"
            )

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step.

        Parameters whose ``grad`` is ``None`` are skipped entirely: their
        state is untouched and they are not decayed.

        Args:
            closure: re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # As torch.no_grad(), which as a decorator costs several microseconds.
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            for group in self.param_groups:
                self._step_group(group)
        finally:
            torch.set_grad_enabled(grad_enabled)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        """Update the parameters of one group that have a gradient."""
        raise NotImplementedError

    if _global_optimizer_pre_hooks is not None:

        @staticmethod
        def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
            """Wrap ``step`` as ``torch.optim.Optimizer`` does, at less cost.

            The hooks run as in PyTorch: the global and this optimizer's
            pre-hooks (which may replace the arguments), the step, the
            profiler's ``_optimizer_step_code`` entry, the post-hooks, all
            inside the ``Optimizer.step#<class>.step`` label that profilers
            and execution-trace observers record. The label is entered
            through the C++ ``RecordFunction`` bindings directly, at about
            half the cost of the ``record_function`` context manager that
            ``torch.optim`` uses (which costs tens of microseconds per step
            here even when nothing records it). PyTorch's faster
            ``_RecordFunctionFast`` is not used: it records only while a
            profiler runs, so an ``ExecutionTraceObserver`` alone misses it.
            """

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                label = _record_function_with_args_enter(
                    f"Optimizer.step#{type(args[0]).__name__}.step"
                )
                try:
                    return _hooked(func, args, kwargs)
                finally:
                    _record_function_with_args_exit(label)

            return wrapper

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("lr", group["lr"])
        check_nonnegative("weight_decay", group["weight_decay"])
        scaling = group.get("decay_scaling", "schedule")
        if scaling not in DECAY_SCALINGS:
            raise ValueError(
                f"decay_scaling must be one of {DECAY_SCALINGS}, got {scaling!r}"
            )
        if group.get("foreach") and group.get("fused"):
            raise ValueError("foreach=True and fused=True cannot both be set")

    @staticmethod
    def schedule_multiplier(group: dict[str, Any]) -> float:
        """``eta_t = lr / initial_lr`` for this group."""
        return float(group["lr"]) / float(group["initial_lr"])

    @staticmethod
    def decoupled_decay(group: dict[str, Any]) -> float:
        """The fraction of each weight that decoupled decay removes this step."""
        weight_decay = float(group["weight_decay"])
        scaling = group["decay_scaling"]
        if scaling == "schedule":
            return ScheduledOptimizer.schedule_multiplier(group) * weight_decay
        if scaling == "lr":
            return float(group["lr"]) * weight_decay
        return weight_decay

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict and unpickling arrive here with new state tensors:
        # drop the kernel plans, which hold the old ones.
        super().__setstate__(state)
        self._plans = {}
        for group in self.param_groups:
            self._complete_loaded_group(group)

    def _complete_loaded_group(self, group: dict[str, Any]) -> None:
        """Give a loaded group the options that its saver did not write.

        A state dict saved by ``torch.optim`` has no ``decay_scaling`` and,
        without a scheduler, no ``initial_lr``. Its ``weight_decay`` is in
        PyTorch's units, so a decoupled optimizer reads it with
        ``decay_scaling="lr"`` (and warns where it was built with other
        units); the schedule multiplier starts at 1 from the loaded ``lr``;
        other options take this optimizer's defaults.
        """
        if "decay_scaling" not in group and getattr(self, "_decoupled", False):
            group["decay_scaling"] = "lr"
            if self.defaults["decay_scaling"] != "lr":
                warnings.warn(
                    "a loaded parameter group has no decay_scaling (it was saved "
                    "by torch.optim?): its weight_decay="
                    f"{group.get('weight_decay')!r} is read in PyTorch's units, "
                    "decay_scaling='lr'",
                    WeightDecayUnitsWarning,
                    stacklevel=_user_stacklevel(),
                )
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group.setdefault("initial_lr", group["lr"])

    def _planned(
        self, group: dict[str, Any], keys: tuple[str, ...]
    ) -> tuple[_kernels.Plan, list[Tensor]] | None:
        """The group's kernel plan and the gradients it leaves to ``foreach``,
        where the plan of an earlier step still describes the group."""
        plans = self.__dict__.get("_plans", {})
        plan = plans.get(id(group))
        if (
            plan is None
            or plan.group is not group
            or plan.keys != keys
            or len(plans) > len(self.param_groups)
        ):
            return None
        rest = plan.refresh(group, self.state)
        if rest is None:
            del plans[id(group)]  # the step rebuilds it if the kernels apply
            return None
        return plan, rest

    def _new_plan(
        self, group: dict[str, Any], keys: tuple[str, ...], height: int
    ) -> tuple[_kernels.Plan, list[Tensor]]:
        """Inspect the group for the kernels and keep the plan for later steps.

        The state of every parameter with a gradient must exist already.
        """
        plans = self.__dict__.setdefault("_plans", {})
        # Forget the plans of groups that have left param_groups.
        current = {id(g) for g in self.param_groups}
        for stale in [key for key in plans if key not in current]:
            del plans[stale]
        plan = _kernels.Plan(group, self.state, keys, height)
        rest = plan.refresh(group, self.state)
        # The inspection that built the plan checks all that refresh checks.
        assert rest is not None
        plans[id(group)] = plan
        return plan, rest

    def _gather(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The group's parameters that have a gradient.

        Returns real views of the parameters and of their gradients (complex
        tensors as pairs of reals), and the parameters themselves, which key
        the optimizer state.
        """
        params, grads, originals = [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(parameter of shape {tuple(param.shape)}); use a dense "
                    "gradient or torch.optim.SparseAdam"
                )
            params.append(as_real(param))
            grads.append(as_real(param.grad))
            originals.append(param)
        return params, grads, originals


def _hooked(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)`` between the step hooks of ``args[0]``."""
    optimizer = args[0]
    if _global_optimizer_pre_hooks or optimizer._optimizer_step_pre_hooks:
        for pre_hook in itertools.chain(
            _global_optimizer_pre_hooks.values(),
            optimizer._optimizer_step_pre_hooks.values(),
        ):
            result = pre_hook(optimizer, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"the step pre-hook {pre_hook!r} returned {result!r}; a "
                        "pre-hook returns None or a pair (args, kwargs)"
                    )
                args, kwargs = result
    out = func(*args, **kwargs)
    optimizer._optimizer_step_code()
    if optimizer._optimizer_step_post_hooks or _global_optimizer_post_hooks:
        for post_hook in itertools.chain(
            optimizer._optimizer_step_post_hooks.values(),
            _global_optimizer_post_hooks.values(),
        ):
            post_hook(optimizer, args, kwargs)
    return out
