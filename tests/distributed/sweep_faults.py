"""Run functions that misbehave on purpose, for the executor fault tests.

Workers import them by name (this folder is on ``sys.path`` before any pool
starts); Ray tasks get them pickled by value.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from weightdecay.experiments.train import config_key

Config = Mapping[str, Any]


def fake(config: Config) -> dict[str, Any]:
    """A finished record at once, its numbers a function of the config."""
    return {
        "key": config_key(config),
        "config": dict(config),
        "status": "ok",
        "diverged_step": None,
        "final": {
            "train_loss": config["lr"],
            "val_loss": config["weight_decay"],
            "val_error": config["seed"] / 100,
            "test_loss": math.log1p(config["seed"]),
            "test_error": config["seed"] / 200,
        },
        "curves": {"epoch": [1]},
        "wall_s": 0.0,
    }


def kill_on_seed(
    config: Config,
    *,
    seed: int,
    fn: Callable[[Config], dict[str, Any]] = fake,
    marker: str | None = None,
) -> dict[str, Any]:
    """Kill this worker (SIGKILL) while it runs ``seed``, else run ``fn``.

    With ``marker`` (a path) only the first time: the file records the death.
    """
    if config["seed"] == seed:
        if marker is None or not Path(marker).exists():
            if marker is not None:
                Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return fn(config)
