"""Schedule multipliers, warm restarts (SGDR) and AdamWR / SGDWR.

A schedule is a pure function from a position, in epochs since the start of
training (fractional), to a multiplier ``eta_t`` in [0, 1]. The optimizers
of this package use ``eta_t = group["lr"] / group["initial_lr"]`` for both
the gradient step and the decoupled decay, so one multiplier drives both.

Cosine annealing with warm restarts (Loshchilov & Hutter, SGDR):

.. math::

    \\eta_t = \\eta_{min} + (1 - \\eta_{min})
              \\frac{1 + \\cos(\\pi T_{cur} / T_i)}{2}

``T_cur`` is the number of epochs since the last restart and ``T_i`` the
length of the current run: ``T_i = T_0 * T_mult**i`` for run ``i`` (counted
from 0). Run ``i`` starts at ``E_i = T_0 * (T_mult**i - 1) / (T_mult - 1)``
(``E_i = i * T_0`` when ``T_mult == 1``); with ``T_0 = 100, T_mult = 2``
the runs end at epochs 100, 300, 700, 1500. A position exactly on ``E_i``
starts run ``i`` with multiplier 1.0.

Exactness: positions and the parameters ``T_0``, ``T_mult``, milestones and
warmup lengths are converted to :class:`fractions.Fraction` -- ints and
fractions as they are, a float as the shortest decimal that prints as it
(``0.1`` is exactly 1/10) -- and the run index comes from a logarithm as a
first guess, corrected by exact comparisons with the run starts ``E_i``.
So the run index and ``T_cur`` carry no rounding, at any position; only the
final cosine is evaluated in floating point.

Normalized weight decay: a parameter group that carries
``"weight_decay_norm"`` gets, from :class:`WarmRestarts`, the decay

.. math:: \\lambda = \\lambda_{norm} \\sqrt{b / (B T_i)}

with batch size ``b``, training-set size ``B`` and the current run length
``T_i``, set at construction and again at every restart.

AdamWR / SGDWR are factories returning ``(optimizer, scheduler)``; the
same in two lines::

    opt = AdamW(model.parameters(), lr=1e-3)
    sched = WarmRestarts(opt, T_0=10, T_mult=2, steps_per_epoch=len(loader))

Call ``opt.step()`` and then ``sched.step()`` once per batch.
"""

from __future__ import annotations

import bisect
import dataclasses
import decimal
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from weightdecay.decay import normalized_weight_decay

if TYPE_CHECKING:
    from weightdecay.adam import AdamW
    from weightdecay.sgd import SGDW

__all__ = [
    "AdamWR",
    "RestartRun",
    "SGDWR",
    "Schedule",
    "WarmRestarts",
    "constant",
    "cosine",
    "linear_warmup",
    "step_drop",
    "warm_restart_run",
    "warm_restarts",
]

logger = logging.getLogger(__name__)

Real = int | float | Fraction
Schedule = Callable[[Real], float]
"""A multiplier as a function of the position in epochs."""


# ---------------------------------------------------------------------------
# Exact arithmetic helpers


def _exact(name: str, value: object) -> Fraction:
    """``value`` as an exact fraction; a float is read as its shortest decimal."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, numbers.Rational):
        return Fraction(value.numerator, value.denominator)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{name} must be finite, got {value!r}")
        return Fraction(value)
    if isinstance(value, numbers.Real):
        as_float = float(value)
        if not math.isfinite(as_float):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return Fraction(repr(as_float))
    raise ValueError(f"{name} must be a real number, got {value!r}")


def _position(value: object) -> Fraction:
    position = _exact("position", value)
    if position < 0:
        raise ValueError(f"position must be >= 0, got {value!r}")
    return position


def _positive(name: str, value: object) -> Fraction:
    exact = _exact(name, value)
    if exact <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return exact


def _unit_float(name: str, value: object) -> float:
    """A float in [0, 1], or ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a real number in [0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _log1p(x: Fraction) -> float:
    """``log(1 + x)`` for an exact ``x >= 0``, accurate near 0 and far out."""
    try:
        return math.log1p(float(x))
    except OverflowError:
        return math.log(x.numerator) - math.log(x.denominator)


def _cosine_multiplier(fraction: float, eta_min: float) -> float:
    """``eta_min + (1 - eta_min) (1 + cos(pi f)) / 2`` for ``f`` in [0, 1].

    Evaluated as ``cos(pi f / 2)**2``, the same value without the
    cancellation of ``1 + cos`` near ``f = 1``; exactly 1.0 at ``f = 0``
    and exactly ``eta_min`` at ``f = 1``.
    """
    if fraction >= 1:
        return eta_min
    c = math.cos(0.5 * math.pi * fraction) ** 2
    return min(1.0, max(eta_min, eta_min + (1.0 - eta_min) * c))


# ---------------------------------------------------------------------------
# Warm-restart bookkeeping


class RestartRun(NamedTuple):
    """Where a position falls in a warm-restart schedule (all exact).

    Attributes:
        index: the run ``i``, counted from 0.
        T_cur: epochs since the start of run ``i``, in ``[0, T_i)``.
        T_i: the length of run ``i``, ``T_0 * T_mult**i``.
        start: the epoch at which run ``i`` starts, ``E_i``.
    """

    index: int
    T_cur: Fraction
    T_i: Fraction
    start: Fraction


def _run_start(index: int, T_0: Fraction, T_mult: Fraction) -> Fraction:
    """``E_i``, the sum of the lengths of runs ``0 .. i-1``."""
    if T_mult == 1:
        return T_0 * index
    return T_0 * (T_mult**index - 1) / (T_mult - 1)


def _locate(position: Fraction, T_0: Fraction, T_mult: Fraction) -> RestartRun:
    if T_mult == 1:
        index = int(position // T_0)
    else:
        # E_i <= position  <=>  T_mult**i <= 1 + position (T_mult - 1) / T_0;
        # the logarithm gives a guess, exact comparisons settle it.
        ratio = position * (T_mult - 1) / T_0
        index = max(0, math.floor(_log1p(ratio) / _log1p(T_mult - 1)))
        while index > 0 and _run_start(index, T_0, T_mult) > position:
            index -= 1
        while _run_start(index + 1, T_0, T_mult) <= position:
            index += 1
    start = _run_start(index, T_0, T_mult)
    return RestartRun(index, position - start, T_0 * T_mult**index, start)


def _check_restart_args(T_0: object, T_mult: object) -> tuple[Fraction, Fraction]:
    exact_T_0 = _positive("T_0", T_0)
    exact_T_mult = _exact("T_mult", T_mult)
    if exact_T_mult < 1:
        raise ValueError(f"T_mult must be >= 1, got {T_mult!r}")
    return exact_T_0, exact_T_mult


def warm_restart_run(position: Real, T_0: Real, T_mult: Real = 1) -> RestartRun:
    """The run index, ``T_cur`` and ``T_i`` of a position, exactly.

    Args:
        position: epochs since the start of training, ``>= 0``.
        T_0: length of the first run in epochs, ``> 0``.
        T_mult: factor by which each run is longer than the one before,
            any real ``>= 1``.

    Returns:
        The :class:`RestartRun` containing ``position``; a position exactly
        on a run boundary belongs to the run that starts there.

    Example:
        >>> run = warm_restart_run(300, T_0=100, T_mult=2)
        >>> run.index, run.T_cur, run.T_i
        (2, Fraction(0, 1), Fraction(400, 1))
    """
    exact_T_0, exact_T_mult = _check_restart_args(T_0, T_mult)
    return _locate(_position(position), exact_T_0, exact_T_mult)


# ---------------------------------------------------------------------------
# Schedules: picklable callables ``position -> multiplier``


@dataclasses.dataclass(frozen=True)
class _Constant:
    def __call__(self, position: Real) -> float:
        _position(position)
        return 1.0


@dataclasses.dataclass(frozen=True)
class _StepDrop:
    milestones: tuple[Fraction, ...]
    factor: float

    def __call__(self, position: Real) -> float:
        drops = bisect.bisect_right(self.milestones, _position(position))
        return self.factor**drops


@dataclasses.dataclass(frozen=True)
class _Cosine:
    T: Fraction
    eta_min: float

    def __call__(self, position: Real) -> float:
        fraction = min(_position(position) / self.T, Fraction(1))
        return _cosine_multiplier(float(fraction), self.eta_min)


@dataclasses.dataclass(frozen=True)
class _WarmRestarts:
    T_0: Fraction
    T_mult: Fraction
    eta_min: float

    def run(self, position: Real) -> RestartRun:
        """The :class:`RestartRun` containing ``position``."""
        return _locate(_position(position), self.T_0, self.T_mult)

    def __call__(self, position: Real) -> float:
        run = self.run(position)
        return _cosine_multiplier(float(run.T_cur / run.T_i), self.eta_min)


@dataclasses.dataclass(frozen=True)
class _LinearWarmup:
    warmup_epochs: Fraction
    schedule: Schedule

    def __call__(self, position: Real) -> float:
        exact = _position(position)
        if exact >= self.warmup_epochs:
            return self.schedule(exact - self.warmup_epochs)
        return float(exact / self.warmup_epochs) * self.schedule(0)


def constant() -> Schedule:
    """The multiplier 1.0 at every position (no schedule)."""
    return _Constant()


def step_drop(milestones: Sequence[Real], factor: float) -> Schedule:
    """Multiply by ``factor`` at each milestone: ``factor**k`` after ``k``.

    .. math:: \\eta_t = \\text{factor}^{|\\{m \\in \\text{milestones}: m \\le t\\}|}

    Args:
        milestones: strictly increasing epochs ``>= 0`` at which the
            multiplier drops; a position on a milestone is already dropped.
        factor: the drop factor, in [0, 1].

    Example:
        >>> schedule = step_drop([30, 60], factor=0.1)
        >>> schedule(29.5), schedule(30), round(schedule(60), 12)
        (1.0, 0.1, 0.01)
    """
    if isinstance(milestones, str | bytes) or not isinstance(milestones, Iterable):
        raise ValueError(f"milestones must be a sequence of epochs, got {milestones!r}")
    exact = tuple(_exact("milestones", m) for m in milestones)
    if any(m < 0 for m in exact):
        raise ValueError(f"milestones must be >= 0, got {list(milestones)!r}")
    if any(b <= a for a, b in zip(exact, exact[1:], strict=False)):
        raise ValueError(
            f"milestones must be strictly increasing, got {list(milestones)!r}"
        )
    return _StepDrop(exact, _unit_float("factor", factor))


def cosine(T: Real, eta_min: float = 0.0) -> Schedule:
    """One cosine annealing run of ``T`` epochs, then ``eta_min``.

    .. math:: \\eta_t = \\eta_{min} + (1 - \\eta_{min})
              \\frac{1 + \\cos(\\pi \\min(t, T) / T)}{2}

    Args:
        T: length of the run in epochs, ``> 0``.
        eta_min: the final multiplier, in [0, 1].

    Example:
        >>> schedule = cosine(100)
        >>> schedule(0), round(schedule(50), 12), schedule(100)
        (1.0, 0.5, 0.0)
    """
    return _Cosine(_positive("T", T), _unit_float("eta_min", eta_min))


def warm_restarts(T_0: Real, T_mult: Real = 1, eta_min: float = 0.0) -> Schedule:
    """Cosine annealing with warm restarts (SGDR).

    .. math:: \\eta_t = \\eta_{min} + (1 - \\eta_{min})
              \\frac{1 + \\cos(\\pi T_{cur} / T_i)}{2},
              \\qquad T_i = T_0 T_{mult}^i

    The returned schedule also has ``.run(position)``, the exact
    :class:`RestartRun` (see :func:`warm_restart_run`).

    Args:
        T_0: length of the first run in epochs, ``> 0``.
        T_mult: growth factor of the run length, any real ``>= 1``.
        eta_min: the multiplier approached at the end of every run, in [0, 1].

    Example:
        >>> schedule = warm_restarts(T_0=100, T_mult=2)
        >>> schedule(0), round(schedule(200), 12), schedule(300)
        (1.0, 0.5, 1.0)
    """
    exact_T_0, exact_T_mult = _check_restart_args(T_0, T_mult)
    return _WarmRestarts(exact_T_0, exact_T_mult, _unit_float("eta_min", eta_min))


def linear_warmup(warmup_epochs: Real, schedule: Schedule) -> Schedule:
    """A linear ramp from 0 to ``schedule(0)``, then ``schedule`` delayed.

    .. math:: \\eta_t = \\begin{cases}
              (t / w)\\, s(0) & t < w \\\\ s(t - w) & t \\ge w \\end{cases}

    Args:
        warmup_epochs: the ramp length ``w`` in epochs, ``>= 0`` (0: no ramp).
        schedule: the schedule ``s`` that follows, itself unchanged.

    Example:
        >>> schedule = linear_warmup(5, cosine(100))
        >>> schedule(0), schedule(2.5), schedule(5)
        (0.0, 0.5, 1.0)
    """
    exact = _exact("warmup_epochs", warmup_epochs)
    if exact < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
    if not callable(schedule):
        raise ValueError(f"schedule must be callable, got {schedule!r}")
    return _LinearWarmup(exact, schedule)


# ---------------------------------------------------------------------------
# The torch scheduler


def _check_count(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _set_group_value(group: dict[str, Any], key: str, value: float) -> None:
    """Write ``value`` into ``group[key]``, in place when that is a tensor."""
    if isinstance(group.get(key), torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


_EXACT_STATE_KEYS = ("T_0", "T_mult", "warmup_epochs")


class _StepWindow(NamedTuple):
    """Steps ``first <= k < stop`` of one run (or of the warmup).

    Inside, ``T_cur / T_i`` (or the warmup fraction) is ``(k - offset) /
    scale`` with exact rationals ``offset`` (the first position in steps)
    and ``scale`` (the length in steps), evaluated in integers.
    """

    first: int
    stop: int
    offset: Fraction
    scale: Fraction
    warmup: bool
    T_i: Fraction

    def fraction(self, step: int) -> float:
        offset, scale = self.offset, self.scale
        numerator = (step * offset.denominator - offset.numerator) * scale.denominator
        return numerator / (offset.denominator * scale.numerator)


class WarmRestarts(LRScheduler):
    """Cosine annealing with warm restarts, stepped once per batch.

    Sets ``group["lr"] = group["initial_lr"] * eta_t`` with the SGDR
    multiplier of :func:`warm_restarts`, optionally after a linear warmup
    (:func:`linear_warmup`). After ``k`` calls of :meth:`step` the position
    is exactly ``k / steps_per_epoch`` epochs (an integer step counter,
    ``last_epoch``, with exact rational positions), so a scheduler resumed
    from :meth:`state_dict` continues with exactly the same values.

    Normalized decay: every parameter group that carries
    ``"weight_decay_norm"`` (not ``None``) gets
    ``group["weight_decay"] = lambda_norm * sqrt(batch_size /
    (dataset_size * T_i))`` at construction, at every restart and on
    :meth:`load_state_dict` (a ``weight_decay_norm`` changed in between
    takes effect at the next of these). The value is the paper's
    ``lambda``, the unit of this package's optimizers (decay
    ``eta_t * lambda`` per step). A group whose ``"decay_scaling"`` is
    ``"lr"`` -- PyTorch's unit, decay ``lr_t * weight_decay`` per step --
    gets ``lambda / initial_lr`` instead, the same decay per step; put
    ``"decay_scaling": "lr"`` into a group of ``torch.optim.AdamW`` to drive
    it this way.

    Unlike ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``,
    ``eta_min`` is a fraction of the initial learning rate (the paper's
    multiplier), not an absolute learning rate.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        T_0: length of the first run in epochs, ``> 0``.
        T_mult: growth factor of the run length, any real ``>= 1``.
        eta_min: multiplier approached at the end of every run, in [0, 1].
        steps_per_epoch: calls of :meth:`step` per epoch (batches per epoch).
        warmup_epochs: epochs of linear warmup from 0 before the first run;
            during the warmup ``run_index`` is 0 and ``T_cur`` is 0.
        batch_size: ``b`` of the normalized decay.
        dataset_size: ``B`` of the normalized decay.
        last_epoch: the number of steps already taken, or -1 to start.

    Raises:
        ValueError: for a bad argument, or when a group carries
            ``"weight_decay_norm"`` and ``batch_size`` or ``dataset_size``
            is missing.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sched = WarmRestarts(opt, T_0=1, T_mult=2, steps_per_epoch=4)
        >>> for _ in range(6):
        ...     opt.step()
        ...     sched.step()
        >>> sched.run_index, sched.T_cur, sched.T_i
        (1, Fraction(1, 2), Fraction(2, 1))
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: Real,
        T_mult: Real = 1,
        eta_min: float = 0.0,
        *,
        steps_per_epoch: int,
        warmup_epochs: Real = 0,
        batch_size: int | None = None,
        dataset_size: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.T_0, self.T_mult = _check_restart_args(T_0, T_mult)
        self.eta_min = _unit_float("eta_min", eta_min)
        _check_count("steps_per_epoch", steps_per_epoch)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = _exact("warmup_epochs", warmup_epochs)
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
        _check_count("batch_size", batch_size, optional=True)
        _check_count("dataset_size", dataset_size, optional=True)
        self.batch_size = batch_size
        self.dataset_size = dataset_size
        ok = isinstance(last_epoch, numbers.Integral) and not isinstance(
            last_epoch, bool
        )
        if not ok or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        if isinstance(optimizer, Optimizer):
            self._check_normalized(optimizer.param_groups)
        self._decay_window = -1
        super().__init__(optimizer, int(last_epoch))

    def _check_normalized(self, groups: list[dict[str, Any]]) -> tuple[int, int]:
        """``(batch_size, dataset_size)``, required when a group normalizes."""
        uses_norm = any(g.get("weight_decay_norm") is not None for g in groups)
        if self.batch_size is not None and self.dataset_size is not None:
            return self.batch_size, self.dataset_size
        if uses_norm:
            raise ValueError(
                "batch_size and dataset_size are required when a parameter group "
                f"carries weight_decay_norm, got batch_size={self.batch_size!r}, "
                f"dataset_size={self.dataset_size!r}"
            )
        return 0, 0

    # Position -----------------------------------------------------------

    @property
    def position(self) -> Fraction:
        """Epochs since the start, exactly ``last_epoch / steps_per_epoch``."""
        return Fraction(max(self.last_epoch, 0), self.steps_per_epoch)

    def run(self) -> RestartRun:
        """The current :class:`RestartRun` (run 0 at ``T_cur = 0`` in warmup)."""
        inside = max(self.position - self.warmup_epochs, Fraction(0))
        return _locate(inside, self.T_0, self.T_mult)

    def _window(self) -> _StepWindow:
        """The steps of the current run, found again only when it is left."""
        step = max(self.last_epoch, 0)
        window = self.__dict__.get("_window_cache")
        if window is not None and window.first <= step < window.stop:
            return window
        spe = self.steps_per_epoch
        warmup_steps = self.warmup_epochs * spe
        if step < warmup_steps:
            window = _StepWindow(
                0, math.ceil(warmup_steps), Fraction(0), warmup_steps, True, self.T_0
            )
        else:
            run = self.run()
            offset = (self.warmup_epochs + run.start) * spe
            scale = run.T_i * spe
            stop = math.ceil(offset + scale)
            window = _StepWindow(math.ceil(offset), stop, offset, scale, False, run.T_i)
        self.__dict__["_window_cache"] = window
        return window

    @property
    def run_index(self) -> int:
        """The current run ``i``, counted from 0."""
        return self.run().index

    @property
    def T_cur(self) -> Fraction:
        """Epochs since the last restart."""
        return self.run().T_cur

    @property
    def T_i(self) -> Fraction:
        """The length of the current run in epochs."""
        return self.run().T_i

    def multiplier(self) -> float:
        """The schedule multiplier ``eta_t`` at the current position."""
        window = self._window()
        fraction = window.fraction(max(self.last_epoch, 0))
        if window.warmup:
            return fraction
        return _cosine_multiplier(fraction, self.eta_min)

    # LRScheduler interface ----------------------------------------------

    def get_lr(self) -> list[float | torch.Tensor]:
        """``initial_lr * eta_t`` for every parameter group."""
        eta = self.multiplier()
        return [base_lr * eta for base_lr in self.base_lrs]

    _get_closed_form_lr = get_lr

    def step(self, epoch: int | None = None) -> None:
        """Advance one batch; at a restart, also renew normalized decay."""
        super().step(epoch)
        if self._window().first != self._decay_window:
            self._apply_weight_decay()

    def _apply_weight_decay(self) -> None:
        """Set ``weight_decay`` of the normalized groups for the current run."""
        window = self._window()
        self._decay_window = window.first
        groups = [
            g
            for g in self.optimizer.param_groups
            if g.get("weight_decay_norm") is not None
        ]
        if not groups:
            return
        batch_size, dataset_size = self._check_normalized(groups)
        for group in groups:
            decay = normalized_weight_decay(
                group["weight_decay_norm"], batch_size, dataset_size, float(window.T_i)
            )
            if group.get("decay_scaling") == "lr":
                decay = decay / float(group["initial_lr"])
            _set_group_value(group, "weight_decay", decay)
        logger.info(
            "step %d: run of T_i=%s epochs, weight_decay=%s",
            window.first,
            window.T_i,
            [g["weight_decay"] for g in groups],
        )

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: plain numbers, loadable with weights_only."""
        state = super().state_dict()
        state.pop("_window_cache", None)
        for key in _EXACT_STATE_KEYS:
            state[key] = str(state[key])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state and write its lr and decay into the optimizer.

        The optimizer's ``lr`` and (normalized) ``weight_decay`` are set for
        the restored step, so resuming is exact whether the optimizer's own
        state was loaded before or after this call.
        """
        state = dict(state_dict)
        for key in _EXACT_STATE_KEYS:
            state[key] = Fraction(state[key])
        self.__dict__.update(state)
        self.__dict__.pop("_window_cache", None)
        self._check_normalized(self.optimizer.param_groups)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
            for g in self.optimizer.param_groups
        ]
        self._apply_weight_decay()


# ---------------------------------------------------------------------------
# AdamWR / SGDWR


def _groups_with_norm(
    params: Iterable[Any], weight_decay: float, weight_decay_norm: float | None
) -> list[Any]:
    """Give every group without its own decay setting ``weight_decay_norm``."""
    params = list(params)
    if weight_decay_norm is None:
        return params
    if weight_decay != 0:
        raise ValueError(
            "pass weight_decay or weight_decay_norm, not both, got "
            f"weight_decay={weight_decay!r}, weight_decay_norm={weight_decay_norm!r}"
        )
    if params and all(isinstance(p, dict) for p in params):
        groups = []
        for group in params:
            group = dict(group)
            if "weight_decay" not in group:
                group.setdefault("weight_decay_norm", weight_decay_norm)
            groups.append(group)
        return groups
    return [{"params": params, "weight_decay_norm": weight_decay_norm}]


def AdamWR(
    params: Iterable[Any],
    *,
    lr: float,
    T_0: Real,
    T_mult: Real = 1,
    steps_per_epoch: int,
    eta_min: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_norm: float | None = None,
    batch_size: int | None = None,
    dataset_size: int | None = None,
    warmup_epochs: Real = 0,
    **adamw_kwargs: Any,
) -> tuple[AdamW, WarmRestarts]:
    """AdamW driven by cosine annealing with warm restarts (AdamWR).

    .. math:: \\theta_t = \\theta_{t-1} - \\eta_t (\\alpha \\hat m_t /
              (\\sqrt{\\hat v_t} + \\epsilon) + \\lambda \\theta_{t-1})

    with ``eta_t`` the SGDR multiplier of :class:`WarmRestarts` and, when
    ``weight_decay_norm`` is given, ``lambda = weight_decay_norm *
    sqrt(batch_size / (dataset_size * T_i))`` renewed at every restart.

    Args:
        params: parameters or parameter groups. ``weight_decay_norm`` applies
            to every group that sets neither ``weight_decay`` nor
            ``weight_decay_norm`` itself.
        lr: the base learning rate ``alpha``.
        T_0: length of the first run in epochs.
        T_mult: growth factor of the run length, any real ``>= 1``.
        steps_per_epoch: batches per epoch (``scheduler.step()`` calls).
        eta_min: multiplier approached at the end of every run.
        weight_decay: a fixed ``lambda`` (paper units); exclusive with
            ``weight_decay_norm``.
        weight_decay_norm: ``lambda_norm`` of the normalized decay.
        batch_size: ``b``, required with ``weight_decay_norm``.
        dataset_size: ``B``, required with ``weight_decay_norm``.
        warmup_epochs: epochs of linear warmup before the first run.
        **adamw_kwargs: passed to :class:`weightdecay.AdamW` (``betas``,
            ``eps``, ``amsgrad``, ``foreach``, ...).

    Returns:
        ``(optimizer, scheduler)``; call ``optimizer.step()`` then
        ``scheduler.step()`` once per batch.
    """
    from weightdecay.adam import AdamW

    groups = _groups_with_norm(params, weight_decay, weight_decay_norm)
    optimizer = AdamW(groups, lr=lr, weight_decay=weight_decay, **adamw_kwargs)
    scheduler = WarmRestarts(
        optimizer,
        T_0,
        T_mult,
        eta_min,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=warmup_epochs,
        batch_size=batch_size,
        dataset_size=dataset_size,
    )
    return optimizer, scheduler


def SGDWR(
    params: Iterable[Any],
    *,
    lr: float,
    T_0: Real,
    T_mult: Real = 1,
    steps_per_epoch: int,
    eta_min: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_norm: float | None = None,
    batch_size: int | None = None,
    dataset_size: int | None = None,
    warmup_epochs: Real = 0,
    **sgdw_kwargs: Any,
) -> tuple[SGDW, WarmRestarts]:
    """SGDW driven by cosine annealing with warm restarts (SGDWR).

    .. math:: m_t = \\beta_1 m_{t-1} + \\eta_t \\alpha g_t, \\qquad
              \\theta_t = \\theta_{t-1} - m_t - \\eta_t \\lambda \\theta_{t-1}

    Arguments as for :func:`AdamWR`; ``**sgdw_kwargs`` go to
    :class:`weightdecay.SGDW` (``momentum``, ``nesterov``, ...).

    Returns:
        ``(optimizer, scheduler)``; call ``optimizer.step()`` then
        ``scheduler.step()`` once per batch.
    """
    from weightdecay.sgd import SGDW

    groups = _groups_with_norm(params, weight_decay, weight_decay_norm)
    optimizer = SGDW(groups, lr=lr, weight_decay=weight_decay, **sgdw_kwargs)
    scheduler = WarmRestarts(
        optimizer,
        T_0,
        T_mult,
        eta_min,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=warmup_epochs,
        batch_size=batch_size,
        dataset_size=dataset_size,
    )
    return optimizer, scheduler
