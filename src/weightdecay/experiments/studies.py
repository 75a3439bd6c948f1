"""The four studies of the reproduction and their profiles.

* ``grid`` (claim a): for SGD, SGDW, Adam and AdamW, a grid of learning rate
  x weight decay in powers of two (decay 0 included) in each regime (epochs
  x training-set size). The decay ranges differ per optimizer because the
  units differ: an L2 factor for SGD and Adam, the paper's per-step lambda for
  SGDW and AdamW.
* ``seeds`` (claim b): the best validation cell of each optimizer in each
  regime, rerun with fresh seeds. It depends on the grid's results.
* ``budget`` (claim c): AdamW at one learning rate over budgets of
  ``T, 2T, 4T`` epochs on a half-octave grid of raw lambda.
* ``restarts`` (claim d): AdamWR (cosine with warm restarts) against AdamW
  with one cosine run of the same length, same lr and lambda.

:func:`plan` turns settings (every number is a command-line flag) into
configurations; given the same settings, data and stored grid results it
always returns the same list, so a report can be rebuilt from the store.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

from weightdecay.experiments.train import config_key, make_config

__all__ = [
    "PROFILES",
    "STUDIES",
    "best_cells",
    "grid_configs",
    "plan",
    "profile_settings",
]

STUDIES = ("grid", "seeds", "budget", "restarts")
GRID_OPTIMIZERS = ("SGD", "SGDW", "Adam", "AdamW")

# Learning rates and decays are ranges of exponents of two, inclusive. The
# ranges come from pilots on the full Fashion-MNIST (5,000 training images,
# mlp_bn, 6 and 16 epochs; see the reference report): each optimizer's best
# cell lies inside its range, and the ranges differ because the units do
# (an L2 factor for SGD and Adam, the paper's per-step lambda for SGDW/AdamW).
_DEFAULT = {
    "studies": list(STUDIES),
    "model": "mlp_bn",
    "batch_size": 128,
    "val_size": 5000,
    "regimes": {"short": [6, 5000], "long": [16, 5000]},
    "grid_optimizers": list(GRID_OPTIMIZERS),
    "grid_lrs": {
        "SGD": [-8, -3],
        "SGDW": [-8, -3],
        "Adam": [-13, -8],
        "AdamW": [-13, -8],
    },
    "grid_decays": {
        "SGD": [-12, -4],
        "SGDW": [-12, -4],
        "Adam": [-12, -5],
        "AdamW": [-12, -4],
    },
    "grid_test_eval": "final",
    "seed": 0,
    "seeds_count": 3,
    "seeds_regimes": ["short", "long"],
    "budget_lr": 2**-10,
    "budget_epochs": [4, 8, 16],
    "budget_decays": [-10, -4],
    "budget_train_size": 5000,
    "restarts_lr": 2**-10,
    "restarts_decay": 2**-6,
    "restarts_T_0": 1.0,
    "restarts_T_mult": 2.0,
    "restarts_epochs": 15,
    "restarts_train_size": 5000,
}

# A smoke test of every study in a few minutes: one short regime on 2,000
# images, 4 x 6 grids around the default ranges' centres.
_QUICK = copy.deepcopy(_DEFAULT) | {
    "val_size": 2000,
    "regimes": {"short": [5, 2000]},
    "grid_lrs": {
        "SGD": [-7, -4],
        "SGDW": [-7, -4],
        "Adam": [-12, -9],
        "AdamW": [-12, -9],
    },
    "grid_decays": {
        "SGD": [-10, -6],
        "SGDW": [-11, -7],
        "Adam": [-11, -7],
        "AdamW": [-11, -7],
    },
    "seeds_count": 2,
    "seeds_regimes": ["short"],
    "budget_epochs": [2, 4, 8],
    "budget_decays": [-10, -6],
    "budget_train_size": 2000,
    "restarts_epochs": 7,
    "restarts_train_size": 2000,
}

PROFILES: dict[str, dict[str, Any]] = {"quick": _QUICK, "default": _DEFAULT}


def profile_settings(name: str) -> dict[str, Any]:
    """A fresh copy of the settings of profile ``name``.

    Raises:
        ValueError: unknown profile.
    """
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {name!r}")
    return copy.deepcopy(PROFILES[name])


def powers_of_two(lo: int, hi: int, step: float = 1.0) -> list[float]:
    """``2**lo, 2**(lo + step), ..., 2**hi`` (inclusive)."""
    count = int(round((hi - lo) / step)) + 1
    return [2.0 ** (lo + i * step) for i in range(count)]


def _common(settings: Mapping[str, Any], data: str) -> dict[str, Any]:
    return {
        "model": settings["model"],
        "batch_size": settings["batch_size"],
        "val_size": settings["val_size"],
        "data": data,
    }


def grid_configs(settings: Mapping[str, Any], data: str) -> list[dict[str, Any]]:
    """The grid study: every optimizer x regime x lr x weight decay (0 included).

    Longer regimes come first and the optimizers alternate cell by cell, so a
    sweep stopped part-way holds comparable partial grids of all optimizers.
    With ``grid_test_eval="final"`` the test set is evaluated only after the
    last epoch (the grid is scored on the validation set).
    """
    regimes = sorted(settings["regimes"].items(), key=lambda item: -item[1][0])
    configs = []
    for regime, (epochs, train_size) in regimes:
        cells = {}
        for optimizer in settings["grid_optimizers"]:
            lrs = powers_of_two(*settings["grid_lrs"][optimizer])
            decays = [0.0] + powers_of_two(*settings["grid_decays"][optimizer])
            cells[optimizer] = list(itertools.product(lrs, decays))
        for i in range(max(len(c) for c in cells.values())):
            for optimizer, optimizer_cells in cells.items():
                if i >= len(optimizer_cells):
                    continue
                lr, decay = optimizer_cells[i]
                configs.append(
                    make_config(
                        study="grid",
                        regime=regime,
                        optimizer=optimizer,
                        lr=lr,
                        weight_decay=decay,
                        epochs=epochs,
                        train_size=train_size,
                        seed=settings["seed"],
                        test_eval=settings.get("grid_test_eval", "every"),
                        **_common(settings, data),
                    )
                )
    return configs


def budget_configs(settings: Mapping[str, Any], data: str) -> list[dict[str, Any]]:
    """The budget study: AdamW over budgets x a half-octave raw-lambda grid."""
    decays = powers_of_two(*settings["budget_decays"], step=0.5)
    return [
        make_config(
            study="budget",
            optimizer="AdamW",
            lr=settings["budget_lr"],
            weight_decay=decay,
            epochs=epochs,
            train_size=settings["budget_train_size"],
            seed=settings["seed"],
            **_common(settings, data),
        )
        for epochs in settings["budget_epochs"]
        for decay in decays
    ]


def restarts_configs(settings: Mapping[str, Any], data: str) -> list[dict[str, Any]]:
    """The restarts study: AdamWR and one cosine AdamW run, same lr and lambda."""
    shared = {
        "study": "restarts",
        "lr": settings["restarts_lr"],
        "weight_decay": settings["restarts_decay"],
        "epochs": settings["restarts_epochs"],
        "train_size": settings["restarts_train_size"],
        "seed": settings["seed"],
        **_common(settings, data),
    }
    return [
        make_config(
            optimizer="AdamWR",
            schedule="warm_restarts",
            T_0=settings["restarts_T_0"],
            T_mult=settings["restarts_T_mult"],
            **shared,
        ),
        make_config(optimizer="AdamW", schedule="cosine", **shared),
    ]


def _score(record: Mapping[str, Any]) -> tuple[float, float]:
    final = record["final"]
    return (final["val_error"], final["val_loss"])


def best_cells(
    records: Iterable[Mapping[str, Any]], grid: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The best finished grid cell by validation error per (regime, optimizer).

    Ties in error are broken by validation loss. Only records whose
    configuration is in ``grid`` count; a pair without a finished run is
    absent.
    """
    wanted = {config_key(c) for c in grid}
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record["key"] not in wanted or record["status"] != "ok":
            continue
        if not all(math.isfinite(v) for v in _score(record)):
            continue
        config = record["config"]
        pair = (config["regime"], config["optimizer"])
        if pair not in best or _score(record) < _score(best[pair]):
            best[pair] = dict(record)
    return best


def seeds_configs(
    settings: Mapping[str, Any],
    data: str,
    records: Iterable[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The seeds study: each best grid cell rerun with ``seeds_count`` new seeds.

    The new seeds are ``seed + 1, ..., seed + seeds_count``.
    """
    best = best_cells(records, grid_configs(settings, data))
    configs = []
    for (regime, _), record in sorted(best.items()):
        if regime not in settings["seeds_regimes"]:
            continue
        for i in range(1, settings["seeds_count"] + 1):
            config = dict(record["config"])
            config.pop("test_eval", None)  # fresh seeds get full test curves
            config["study"] = "seeds"
            config["seed"] = settings["seed"] + i
            configs.append(make_config(**config))
    return configs


def plan(
    settings: Mapping[str, Any],
    data: str,
    records: Iterable[Mapping[str, Any]] = (),
    *,
    stage: str = "all",
) -> list[dict[str, Any]]:
    """The configurations the settings ask for.

    Args:
        settings: a profile's settings, possibly changed by flags.
        data: ``"embedded"`` or ``"fashion-mnist"``.
        records: stored records (the seeds study is planned from them).
        stage: ``"independent"`` (grid, budget, restarts), ``"seeds"``, or
            ``"all"`` (both).
    """
    studies = settings["studies"]
    configs: list[dict[str, Any]] = []
    if stage in ("independent", "all"):
        # The small studies first, so an interrupted sweep has them complete.
        if "restarts" in studies:
            configs += restarts_configs(settings, data)
        if "budget" in studies:
            configs += budget_configs(settings, data)
        if "grid" in studies:
            configs += grid_configs(settings, data)
    if stage in ("seeds", "all") and "seeds" in studies:
        configs += seeds_configs(settings, data, records)
    return configs
