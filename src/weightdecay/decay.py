"""Units of weight decay, normalized decay, and which parameters decay.

Three units of ``weight_decay`` are in use for decoupled decay. With base
learning rate ``alpha`` (``lr`` at construction) and schedule multiplier
``eta_t``, the fraction of every weight removed at step ``t`` is

* paper units (``decay_scaling="schedule"``): ``eta_t * lambda``
* PyTorch units (``decay_scaling="lr"``): ``alpha * eta_t * lambda_torch``
* constant (``decay_scaling="none"``): ``lambda``

so ``lambda_paper = alpha * lambda_torch``. Under decoupled decay the
weights are an exponential moving average of the updates with timescale
``1 / (eta_t * lambda_paper)`` steps (Wang & Aitchison, 2024).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = [
    "ema_timescale_epochs",
    "ema_timescale_steps",
    "normalized_weight_decay",
    "paper_from_torch",
    "param_groups",
    "torch_from_paper",
]

logger = logging.getLogger(__name__)


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")


def paper_from_torch(weight_decay: float, lr: float) -> float:
    """Convert PyTorch's ``weight_decay`` to the paper's ``lambda``.

    ``torch.optim.AdamW`` removes ``lr_t * weight_decay`` of each weight per
    step, the paper ``eta_t * lambda``; with ``lr_t = lr * eta_t`` the two
    agree when ``lambda = lr * weight_decay``.

    Example:
        >>> paper_from_torch(0.01, lr=1e-3)
        1e-05
    """
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    _check_positive("lr", lr)
    return lr * weight_decay


def torch_from_paper(weight_decay: float, lr: float) -> float:
    """Convert the paper's ``lambda`` to PyTorch's ``weight_decay``.

    The inverse of :func:`paper_from_torch`: ``lambda_torch = lambda / lr``.
    """
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    _check_positive("lr", lr)
    return weight_decay / lr


def ema_timescale_steps(weight_decay: float, eta: float = 1.0) -> float:
    """Steps over which decoupled decay averages the updates into the weights.

    With per-step decay ``eta * lambda`` (paper units) the weights are an
    exponential moving average with timescale ``tau = 1 / (eta * lambda)``
    steps. For PyTorch units pass ``paper_from_torch(weight_decay, lr)``.
    Returns ``inf`` when there is no decay.
    """
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    _check_positive("eta", eta, allow_zero=True)
    rate = eta * weight_decay
    return math.inf if rate == 0 else 1.0 / rate


def ema_timescale_epochs(
    weight_decay: float, steps_per_epoch: int, eta: float = 1.0
) -> float:
    """The EMA timescale of :func:`ema_timescale_steps` in epochs."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}")
    return ema_timescale_steps(weight_decay, eta) / steps_per_epoch


def normalized_weight_decay(
    lambda_norm: float, batch_size: int, dataset_size: int, epochs: float
) -> float:
    """The paper's normalized weight decay.

    .. math:: \\lambda = \\lambda_{norm} \\sqrt{b / (B T)}

    with batch size ``b``, training-set size ``B`` and run length ``T`` in
    epochs (with warm restarts, the length ``T_i`` of the current run).

    Example:
        >>> round(normalized_weight_decay(0.025, 128, 50_000, 100), 8)
        0.00012649
    """
    _check_positive("lambda_norm", lambda_norm, allow_zero=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size!r}")
    _check_positive("epochs", epochs)
    return lambda_norm * math.sqrt(batch_size / (dataset_size * epochs))


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _default_decays(module: nn.Module, name: str, param: torch.Tensor) -> bool:
    """Matrices and convolution kernels decay; everything else does not."""
    if isinstance(module, _NORM_TYPES + _EMBEDDING_TYPES):
        return False
    return param.ndim >= 2


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decays: Callable[[nn.Module, str, torch.Tensor], bool] | None = None,
    no_decay_names: Iterable[str] = (),
    **group_options: object,
) -> list[dict[str, object]]:
    """Split a model's parameters into a decayed and a non-decayed group.

    By default weight matrices and convolution kernels (``ndim >= 2``) decay;
    biases, normalization weights and embeddings do not. Pass ``decays`` to
    replace the rule (called as ``decays(module, name, param)``), or
    ``no_decay_names`` to exempt parameters by their full name. Extra keyword
    arguments are copied into both groups (``lr``, ...), except those
    whose name starts with ``weight_decay`` (``weight_decay_norm``, ...),
    which go to the decayed group only. Shared parameters are counted
    once. The counts of tensors and elements in each group are logged at
    INFO level.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay, ...},
        {"params": others, "weight_decay": 0.0}]``, empty groups dropped.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        >>> [len(g["params"]) for g in param_groups(model, 1e-4)]
        [1, 3]
    """
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    rule = decays or _default_decays
    exempt = set(no_decay_names)
    decayed: list[nn.Parameter] = []
    others: list[nn.Parameter] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            if full_name not in exempt and rule(module, full_name, param):
                decayed.append(param)
            else:
                others.append(param)

    logger.info(
        "param_groups: %d tensors (%d elements) decay, %d tensors (%d elements) do not",
        len(decayed),
        sum(p.numel() for p in decayed),
        len(others),
        sum(p.numel() for p in others),
    )
    # Options such as ``lr`` apply to both groups; decay options only to the
    # decayed one.
    shared = {
        k: v for k, v in group_options.items() if not k.startswith("weight_decay")
    }
    groups: list[dict[str, object]] = []
    if decayed:
        groups.append(
            {"params": decayed, "weight_decay": weight_decay, **group_options}
        )
    if others:
        groups.append({"params": others, "weight_decay": 0.0, **shared})
    return groups
