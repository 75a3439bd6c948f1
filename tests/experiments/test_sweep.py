"""Executors, the resumable sweep, its progress bar, and the study plans."""

import concurrent.futures
import functools
import io
import math
import textwrap
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest

from weightdecay.experiments.store import Store
from weightdecay.experiments.sweep import (
    InlineExecutor,
    LocalExecutor,
    Progress,
    make_executor,
    run_sweep,
)
from weightdecay.experiments.train import make_config

# Run functions for the pool live in a module of their own, written at test
# time: spawned workers import them by name.
HELPERS = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from weightdecay.experiments.train import config_key


    def fake(config):
        return {
            "key": config_key(config), "config": dict(config), "status": "ok",
            "diverged_step": None,
            "final": {"train_loss": 0.1, "val_loss": 0.2, "val_error": 0.3,
                      "test_loss": 0.2, "test_error": config["seed"] / 100},
            "curves": {"epoch": [1]}, "wall_s": 0.0,
        }


    def die_on_13(config, marker=None):
        # Kill the worker for seed 13: every time, or once if marker is given.
        if config["seed"] == 13:
            if marker is None or not Path(marker).exists():
                if marker is not None:
                    Path(marker).touch()
                os._exit(3)
        return fake(config)


    def raise_on_13(config):
        if config["seed"] == 13:
            raise RuntimeError("bad configuration 13")
        return fake(config)
    """
)


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    (tmp_path / "sweep_helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import sweep_helpers

    return sweep_helpers


def configs(seeds):
    return [
        make_config(optimizer="AdamW", lr=1e-3, weight_decay=0.0, epochs=1, seed=s)
        for s in seeds
    ]


def test_inline_sweep_stores_each_run_once_and_skips_stored_ones(tmp_path, helpers):
    stream = io.StringIO()
    with Store(tmp_path / "out") as store:
        first = run_sweep(
            configs([1, 2, 2]), store, InlineExecutor(), helpers.fake, stream=stream
        )
        assert (first.requested, first.skipped, first.ok) == (2, 0, 2)
        second = run_sweep(
            configs([1, 2, 3]), store, InlineExecutor(), helpers.fake, stream=stream
        )
        assert (second.requested, second.skipped, second.ok) == (3, 2, 1)
        assert sorted(r["config"]["seed"] for r in store.records()) == [1, 2, 3]
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/2] grid AdamW lr=0.001 wd=0 ep=1 seed=1: val 30.00%")
    assert lines[-1].startswith("[1/1] ") and "seed=3" in lines[-1]


def test_a_raising_run_is_failed_and_the_sweep_goes_on(tmp_path, helpers):
    with Store(tmp_path) as store:
        summary = run_sweep(
            configs([1, 13, 2]),
            store,
            InlineExecutor(),
            helpers.raise_on_13,
            progress=False,
        )
        assert (summary.ok, summary.failed) == (2, 1)
        failed = store.records("failed")
    assert failed[0]["config"]["seed"] == 13
    assert "bad configuration 13" in failed[0]["error"]


def test_pool_retries_a_run_whose_worker_died_once(tmp_path, helpers):
    fn = functools.partial(helpers.die_on_13, marker=str(tmp_path / "died"))
    outcomes = list(LocalExecutor(2).run(fn, configs([1, 13, 2, 3])))
    by_seed = {o.config["seed"]: o for o in outcomes}
    assert sorted(by_seed) == [1, 2, 3, 13]
    assert all(o.record is not None for o in outcomes)
    assert by_seed[13].attempts == 2
    assert (tmp_path / "died").exists()


class _DyingPool:
    """A stand-in pool, run in this process: a run of seed 13 on its first
    attempt kills its worker. The pool notices at its next submit (or after
    0.2 s with none), as a process pool does when a worker dies between two
    waits: that submit raises and every pending future fails."""

    def __init__(self, attempts: dict[int, int]) -> None:
        self.attempts = attempts
        self.pending: list[concurrent.futures.Future] = []
        self.broken = False
        self.lock = threading.Lock()

    def submit(self, fn, config):
        with self.lock:
            if self.pending or self.broken:
                self._break()
                raise BrokenProcessPool("a worker died")
            future: concurrent.futures.Future = concurrent.futures.Future()
            seed = config["seed"]
            self.attempts[seed] = self.attempts.get(seed, 0) + 1
            if seed == 13 and self.attempts[seed] == 1:
                self.pending.append(future)
                threading.Timer(0.2, self._break_now).start()
            else:
                future.set_result(fn(config))
            return future

    def _break_now(self) -> None:
        with self.lock:
            self._break()

    def _break(self) -> None:
        self.broken = True
        for future in self.pending:
            if not future.done():
                future.set_exception(BrokenProcessPool("a worker died"))
        self.pending.clear()

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_pool_found_broken_at_submit_retries_only_the_run_that_died(helpers):
    # Seed 1 finishes, seed 13's worker dies, and the submit of seed 2 is the
    # first to learn of it: seed 2 is not charged an attempt.
    attempts: dict[int, int] = {}
    pools: list[_DyingPool] = []

    class Executor(LocalExecutor):
        def _pool(self):
            pools.append(_DyingPool(attempts))
            return pools[-1]

    outcomes = list(Executor(2).run(helpers.fake, configs([1, 13, 2, 3])))
    by_seed = {o.config["seed"]: o for o in outcomes}
    assert sorted(by_seed) == [1, 2, 3, 13]
    assert all(o.record is not None and o.error is None for o in outcomes)
    assert {s: o.attempts for s, o in by_seed.items()} == {1: 1, 13: 2, 2: 1, 3: 1}
    assert attempts == {1: 1, 13: 2, 2: 1, 3: 1}
    assert len(pools) == 2


def test_pool_gives_up_after_the_retry_and_the_sweep_goes_on(tmp_path, helpers):
    with Store(tmp_path) as store:
        summary = run_sweep(
            configs([13, 1, 2]),
            store,
            LocalExecutor(2),
            helpers.die_on_13,
            progress=False,
        )
        assert (summary.ok, summary.failed) == (2, 1)
        (failed,) = store.records("failed")
    assert failed["config"]["seed"] == 13
    assert "worker died during attempt 2" in failed["error"]


def test_progress_bar_counts_and_estimates():
    stream = io.StringIO()
    bar = Progress(4, stream, width=8)
    assert bar.bar().startswith("[--------] 0/4   0% 00:00 < --:--")
    bar.update("run a")
    bar.update("run b")
    assert bar.bar().startswith("[####----] 2/4  50% ")
    assert stream.getvalue() == "[1/4] run a\n[2/4] run b\n"


def test_executor_names_and_worker_counts_are_checked():
    assert make_executor("local", 3).workers == 3
    assert isinstance(make_executor("inline"), InlineExecutor)
    with pytest.raises(ValueError, match="executor must be one of .* got 'dask'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        LocalExecutor(0)


def test_default_plan_sizes_ranges_and_order():
    from weightdecay.experiments.studies import plan, profile_settings

    settings = profile_settings("default")
    configs = plan(settings, "embedded")
    grid = [c for c in configs if c["study"] == "grid"]
    for regime in ("short", "long"):
        for optimizer in ("SGD", "SGDW", "Adam", "AdamW"):
            cells = [
                (c["lr"], c["weight_decay"])
                for c in grid
                if c["regime"] == regime and c["optimizer"] == optimizer
            ]
            lrs = {lr for lr, _ in cells}
            decays = {d for _, d in cells}
            assert len(cells) == len(lrs) * len(decays) >= 6 * 9
            assert 0.0 in decays
            assert all(math.log2(x).is_integer() for x in lrs | (decays - {0.0}))
    # Small studies first, then the longest regime, optimizers alternating.
    assert [c["study"] for c in configs[:2]] == ["restarts", "restarts"]
    assert grid[0]["regime"] == "long"
    assert [c["optimizer"] for c in grid[:4]] == ["SGD", "SGDW", "Adam", "AdamW"]
    budget = [c for c in configs if c["study"] == "budget"]
    steps = {round(2 * math.log2(c["weight_decay"]), 9) for c in budget}
    assert all(s.is_integer() for s in steps) and len(steps) == 13
    assert sorted({c["epochs"] for c in budget}) == [4, 8, 16]


def test_seeds_rerun_each_best_validation_cell_with_new_seeds():
    from weightdecay.experiments.studies import grid_configs, plan, profile_settings
    from weightdecay.experiments.train import config_key

    settings = profile_settings("quick")
    records = []
    for i, config in enumerate(grid_configs(settings, "embedded")):
        # A made-up landscape: each optimizer's best cell is its 7th.
        error = 0.1 if i // 4 == 7 else 0.2 + 0.001 * i
        records.append(
            {
                "key": config_key(config),
                "config": config,
                "status": "ok",
                "final": {"val_error": error, "val_loss": 1.0},
            }
        )
    seeds = plan(settings, "embedded", records, stage="seeds")
    assert len(seeds) == 4 * settings["seeds_count"]
    assert sorted({c["seed"] for c in seeds}) == [1, 2]
    winners = {
        (r["config"]["optimizer"], r["config"]["lr"], r["config"]["weight_decay"])
        for i, r in enumerate(records)
        if i // 4 == 7
    }
    assert {(c["optimizer"], c["lr"], c["weight_decay"]) for c in seeds} == winners
    assert all(c["study"] == "seeds" and "test_eval" not in c for c in seeds)
