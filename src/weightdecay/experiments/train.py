"""One training run: a configuration dict in, a record dict out.

A configuration names everything that determines a run (optimizer, lr,
weight_decay in the optimizer's own units, epochs, seed, model, data sizes,
schedule); its key is the sha256 of its canonical JSON. The record holds the
final numbers and per-epoch curves of training loss and of validation and
test loss and error (errors are fractions), the wall time and the CPU time
(``cpu_s``, one thread: a measure of cost that other load barely changes).

The schedule multiplier ``eta_t`` changes every batch: cosine annealing over
the whole run (``"cosine"``) or cosine with warm restarts
(``"warm_restarts"``, ``T_0`` and ``T_mult`` in epochs). A non-finite
training loss stops the run with status ``"diverged"`` and the global step
(from 1) where it happened.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from weightdecay import SGD, SGDW, Adam, AdamW, WeightDecayUnitsWarning
from weightdecay.decay import param_groups
from weightdecay.experiments.data import Split, find_data, load_data, make_split
from weightdecay.experiments.models import MODELS, make_model
from weightdecay.schedules import WarmRestarts

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "config_key",
    "canonical_json",
    "evaluate",
    "make_config",
    "run_config",
    "train",
]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("SGD", "SGDW", "Adam", "AdamW", "AdamWR")
SCHEDULES = ("cosine", "warm_restarts")
TEST_EVALS = ("every", "final")
SPLIT_SEED = 0
SGD_MOMENTUM = 0.9
EVAL_BATCH = 5000
CURVES = ("epoch", "train_loss", "val_loss", "val_error", "test_loss", "test_error")


def make_config(
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    epochs: int,
    study: str = "grid",
    regime: str = "",
    seed: int = 0,
    model: str = "mlp_bn",
    train_size: int = 5000,
    val_size: int = 5000,
    batch_size: int = 128,
    schedule: str | None = None,
    T_0: float | None = None,
    T_mult: float | None = None,
    data: str = "embedded",
    weight_decay_norm: float | None = None,
    test_eval: str = "every",
) -> dict[str, Any]:
    """A complete, validated run configuration with the fields of a record.

    ``schedule`` defaults to ``"warm_restarts"`` for AdamWR and ``"cosine"``
    otherwise; ``T_0``/``T_mult`` are required for warm restarts and ``None``
    for cosine. ``test_eval="final"`` evaluates the test set only after the
    last epoch (earlier entries of the test curves are NaN); it is stored as
    a ``"test_eval"`` field only then, so the default leaves keys unchanged.

    Raises:
        ValueError: a field is out of range; the message names it and its value.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}"
        )
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if schedule is None:
        schedule = "warm_restarts" if optimizer == "AdamWR" else "cosine"
    if test_eval not in TEST_EVALS:
        raise ValueError(
            f"test_eval must be one of {', '.join(TEST_EVALS)}, got {test_eval!r}"
        )
    if schedule not in SCHEDULES:
        raise ValueError(
            f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
        )
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay!r}")
    for name, value in (
        ("epochs", epochs),
        ("train_size", train_size),
        ("val_size", val_size),
        ("batch_size", batch_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if schedule == "warm_restarts":
        if T_0 is None or not T_0 > 0:
            raise ValueError(f"T_0 must be > 0 for warm restarts, got {T_0!r}")
        if T_mult is None or not T_mult >= 1:
            raise ValueError(f"T_mult must be >= 1 for warm restarts, got {T_mult!r}")
        T_0, T_mult = float(T_0), float(T_mult)
    else:
        T_0 = T_mult = None
        if weight_decay_norm is not None:
            raise ValueError(
                "weight_decay_norm needs schedule='warm_restarts' (it sets lambda "
                f"at every restart), got schedule={schedule!r}"
            )
    config = {
        "study": study,
        "regime": regime,
        "optimizer": optimizer,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "weight_decay_norm": (
            None if weight_decay_norm is None else float(weight_decay_norm)
        ),
        "epochs": epochs,
        "seed": int(seed),
        "model": model,
        "train_size": train_size,
        "val_size": val_size,
        "batch_size": batch_size,
        "schedule": schedule,
        "T_0": T_0,
        "T_mult": T_mult,
        "data": data,
    }
    if test_eval != "every":
        config["test_eval"] = test_eval
    return config


def canonical_json(config: Mapping[str, Any]) -> str:
    """The configuration as JSON with sorted keys and no spaces."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def config_key(config: Mapping[str, Any]) -> str:
    """The sha256 hex digest of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def cosine_multiplier(position: float, length: float) -> float:
    """``eta`` at ``position`` epochs into a cosine run of ``length`` epochs."""
    return 0.5 * (1.0 + math.cos(math.pi * min(position / length, 1.0)))


def _make_optimizer(
    config: Mapping[str, Any], model: nn.Module
) -> torch.optim.Optimizer:
    """This package's optimizer for ``config``; only matrices and kernels decay."""
    name = config["optimizer"]
    options = {}
    if config["weight_decay_norm"] is not None:
        options["weight_decay_norm"] = config["weight_decay_norm"]
    groups = param_groups(model, config["weight_decay"], **options)
    with warnings.catch_warnings():
        # The grids span large decays on purpose; the unit warning is for users.
        warnings.simplefilter("ignore", WeightDecayUnitsWarning)
        if name in ("SGD", "SGDW"):
            cls = SGD if name == "SGD" else SGDW
            return cls(groups, lr=config["lr"], momentum=SGD_MOMENTUM)
        cls = Adam if name == "Adam" else AdamW
        return cls(groups, lr=config["lr"])


def _make_scheduler(
    config: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per batch; batch ``k`` (from 0) uses ``eta(k)``."""
    if config["schedule"] == "warm_restarts":
        return WarmRestarts(
            optimizer,
            T_0=config["T_0"],
            T_mult=config["T_mult"],
            steps_per_epoch=steps_per_epoch,
            batch_size=config["batch_size"],
            dataset_size=config["train_size"],
        )
    epochs = config["epochs"]

    def eta(k: int) -> float:
        return cosine_multiplier(k / steps_per_epoch, epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, eta)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and error fraction of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, wrong = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])
        target = y[start : start + EVAL_BATCH]
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        wrong += int((logits.argmax(1) != target).sum())
    model.train(was_training)
    return loss_sum / len(x), wrong / len(x)


def _nan_final() -> dict[str, float]:
    keys = ("train_loss", "val_loss", "val_error", "test_loss", "test_error")
    return dict.fromkeys(keys, math.nan)


def train(config: Mapping[str, Any], split: Split) -> dict[str, Any]:
    """Train one model as ``config`` says on ``split`` and return its record.

    Deterministic for a given configuration and split: the model is built
    after ``torch.manual_seed(config["seed"])`` and the batches come from a
    generator seeded with the same seed.
    """
    started = time.perf_counter()
    cpu_started = time.process_time()
    config = dict(config)
    n = len(split.train_x)
    if n != config["train_size"] or len(split.val_x) != config["val_size"]:
        raise ValueError(
            f"split has {n} train / {len(split.val_x)} val images, config asks "
            f"{config['train_size']} / {config['val_size']}"
        )

    # Model, optimizer and a per-batch schedule, all from one seed.
    torch.manual_seed(config["seed"])
    generator = torch.Generator().manual_seed(config["seed"])
    model = make_model(config["model"])
    optimizer = _make_optimizer(config, model)
    batch = config["batch_size"]
    steps_per_epoch = math.ceil(n / batch)
    scheduler = _make_scheduler(config, optimizer, steps_per_epoch)
    train_x = split.train_x.flatten(1) if config["model"] != "cnn" else split.train_x

    curves: dict[str, list[float]] = {k: [] for k in CURVES}
    status, diverged_step, step = "ok", None, 0
    every_test = config.get("test_eval", "every") == "every"
    for epoch in range(1, config["epochs"] + 1):
        # One pass over a fresh permutation; stop at the first non-finite loss.
        order = torch.randperm(n, generator=generator)
        loss_sum = 0.0
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            step += 1
            loss = nn.functional.cross_entropy(model(train_x[idx]), split.train_y[idx])
            value = loss.item()
            if not math.isfinite(value):
                status, diverged_step = "diverged", step
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += value * len(idx)
        if status == "diverged":
            logger.info("%s diverged at step %d", _describe(config), step)
            break

        # Evaluation on the validation set (and test set) after every epoch.
        val_loss, val_error = evaluate(model, split.val_x, split.val_y)
        test_loss = test_error = math.nan
        if every_test or epoch == config["epochs"]:
            test_loss, test_error = evaluate(model, split.test_x, split.test_y)
        for k, v in (
            ("epoch", epoch),
            ("train_loss", loss_sum / n),
            ("val_loss", val_loss),
            ("val_error", val_error),
            ("test_loss", test_loss),
            ("test_error", test_error),
        ):
            curves[k].append(v)
        logger.debug(
            "%s epoch %d train %.4f val %.4f/%.2f%% test %.2f%%",
            _describe(config),
            epoch,
            loss_sum / n,
            val_loss,
            100 * val_error,
            100 * test_error,
        )

    if status == "ok":
        final = {k: curves[k][-1] for k in curves if k != "epoch"}
    else:
        final = _nan_final()
    return {
        "key": config_key(config),
        "config": config,
        "status": status,
        "diverged_step": diverged_step,
        "final": final,
        "curves": curves,
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu_started,
    }


def _describe(config: Mapping[str, Any]) -> str:
    return (
        f"{config['optimizer']} lr={config['lr']:.3g} wd={config['weight_decay']:.3g}"
        f" seed={config['seed']}"
    )


def failed_record(config: Mapping[str, Any], error: str) -> dict[str, Any]:
    """The record of a run that could not finish (its worker died or raised)."""
    return {
        "key": config_key(config),
        "config": dict(config),
        "status": "failed",
        "diverged_step": None,
        "final": _nan_final(),
        "curves": {k: [] for k in CURVES},
        "wall_s": 0.0,
        "error": error,
    }


@functools.lru_cache(maxsize=2)
def _load(data_dir: str | None) -> tuple[str, tuple[np.ndarray, ...]]:
    source = find_data(data_dir)
    return source.source, load_data(source)


@functools.lru_cache(maxsize=4)
def load_split(data_dir: str | None, train_size: int, val_size: int) -> Split:
    """The split for these sizes, read once per process and cached.

    ``data_dir`` is the directory :func:`find_data` chose (or ``None`` to
    locate the data again).
    """
    _, arrays = _load(data_dir)
    return make_split(*arrays, train_size, val_size, seed=SPLIT_SEED)


def run_config(
    config: Mapping[str, Any], data_dir: str | None = None
) -> dict[str, Any]:
    """Train one configuration with one torch thread (a worker's entry point).

    Raises:
        ValueError: the data found in ``data_dir`` is not the ``data`` the
            configuration names.
    """
    torch.set_num_threads(1)
    source, _ = _load(data_dir)
    if source != config["data"]:
        raise ValueError(
            f"config asks for data {config['data']!r}, {data_dir} holds {source!r}"
        )
    split = load_split(data_dir, config["train_size"], config["val_size"])
    return train(config, split)
