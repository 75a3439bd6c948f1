"""Sweeps on Ray: the process pool's rows, its faults handling, loopback only.

One local Ray instance (two CPUs) serves the whole module; starting it and
its first workers is most of the time taken.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from weightdecay.experiments.data import EMBEDDED_DIR
from weightdecay.experiments.store import Store
from weightdecay.experiments.sweep import LocalExecutor, run_sweep
from weightdecay.experiments.train import config_key, make_config, run_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
import sweep_faults  # noqa: E402
from dist_harness import listening_addresses  # noqa: E402

from weightdecay.experiments.ray_executor import (  # noqa: E402
    INSTALL_HINT,
    RayExecutor,
    RayNotInstalledError,
)

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason=f"ray is not installed ({INSTALL_HINT})"
)


def _small(optimizer: str, lr: float, weight_decay: float) -> dict[str, Any]:
    return make_config(
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        epochs=1,
        train_size=256,
        val_size=256,
        batch_size=32,
        data="embedded",
    )


# Four ordinary runs and one that reaches a non-finite loss at once.
GRID = [
    _small("AdamW", 1e-3, 0.0),
    _small("AdamW", 1e-3, 1e-3),
    _small("SGDW", 0.05, 0.0),
    _small("SGDW", 0.05, 1e-3),
    _small("SGDW", 1e8, 0.0),
]
DIVERGING = config_key(GRID[-1])
RUN = functools.partial(run_config, data_dir=str(EMBEDDED_DIR))


def _seeds(seeds: list[int]) -> list[dict[str, Any]]:
    return [
        make_config(optimizer="AdamW", lr=1e-3, weight_decay=0.0, epochs=1, seed=s)
        for s in seeds
    ]


def _comparable(record: dict[str, Any]) -> str:
    # Everything but the wall time; JSON so that NaN compares equal to NaN.
    fields = ("config", "status", "diverged_step", "final", "curves")
    return json.dumps({k: record[k] for k in fields}, sort_keys=True)


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[RayExecutor]:
    if not HAVE_RAY:
        pytest.skip(f"ray is not installed ({INSTALL_HINT})")
    # The executor imports Ray first: only then can it keep it on loopback.
    executor = RayExecutor(workers=2)
    import ray

    # Task functions from this test tree are not importable on Ray's workers.
    ray.cloudpickle.register_pickle_by_value(sweep_faults)
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def grid(
    ray_executor: RayExecutor, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Any, dict[str, dict[str, Any]]]]:
    """The grid swept once on Ray and once on the process pool."""
    results = {}
    for name, executor in (("ray", ray_executor), ("local", LocalExecutor(2))):
        with Store(tmp_path_factory.mktemp(name)) as store:
            summary = run_sweep(GRID, store, executor, RUN, progress=False)
            results[name] = (summary, {r["key"]: r for r in store.records()})
    return results


@needs_ray
def test_ray_rows_match_the_process_pool_row_for_row(grid: dict) -> None:
    (_, on_ray), (_, on_pool) = grid["ray"], grid["local"]
    assert on_ray.keys() == on_pool.keys() == {config_key(c) for c in GRID}
    for key, record in on_pool.items():
        assert _comparable(on_ray[key]) == _comparable(record)
    assert all(r["curves"]["train_loss"] for k, r in on_ray.items() if k != DIVERGING)


@needs_ray
def test_a_diverging_run_is_recorded_and_the_ray_sweep_goes_on(grid: dict) -> None:
    summary, records = grid["ray"]
    assert (summary.ok, summary.diverged, summary.failed) == (len(GRID) - 1, 1, 0)
    diverged = records[DIVERGING]
    assert diverged["status"] == "diverged"
    assert diverged["diverged_step"] >= 1
    assert math.isnan(diverged["final"]["val_error"])


@needs_ray
def test_a_rerun_on_ray_skips_every_stored_run(grid: dict, tmp_path: Path) -> None:
    # A store filled by the process pool, resumed on Ray: nothing runs twice.
    with Store(tmp_path) as store:
        for record in grid["local"][1].values():
            store.add(record)
        summary = run_sweep(GRID, store, RayExecutor(workers=2), RUN, progress=False)
        assert (summary.requested, summary.skipped) == (len(GRID), len(GRID))
        assert len(store) == len(GRID)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces; the parent follows ") S ".
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@needs_ray
def test_the_local_instance_listens_on_loopback_only(grid: dict) -> None:
    import ray

    assert ray.is_initialized()
    addresses = []
    for pid in _descendants(os.getpid()):
        try:
            addresses += listening_addresses(pid)
        except OSError:
            continue
    assert addresses, "Ray's servers listen somewhere"
    for address in addresses:
        host = address.rsplit(":", 1)[0]
        assert ipaddress.ip_address(host).is_loopback, address


@needs_ray
def test_a_ray_task_whose_worker_was_killed_is_retried(
    ray_executor: RayExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "died"
    fn = functools.partial(sweep_faults.kill_on_seed, seed=13, marker=str(marker))
    with caplog.at_level(logging.WARNING, "weightdecay.experiments.ray_executor"):
        outcomes = list(ray_executor.run(fn, _seeds([1, 13, 2])))
    by_seed = {o.config["seed"]: o for o in outcomes}
    assert sorted(by_seed) == [1, 2, 13] and marker.exists()
    assert by_seed[13].attempts == 2 and by_seed[1].attempts == 1
    assert by_seed[13].record == sweep_faults.fake(by_seed[13].config)
    assert "worker died during attempt 1" in caplog.text


@pytest.mark.parametrize(
    "executor_name", ["local", pytest.param("ray", marks=needs_ray)]
)
def test_a_run_killed_every_time_fails_and_a_rerun_completes_it_once(
    executor_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if executor_name == "ray":
        executor: Any = request.getfixturevalue("ray_executor")
    else:
        executor = LocalExecutor(2)
    configs = _seeds([1, 13, 2, 3])
    dying = functools.partial(sweep_faults.kill_on_seed, seed=13)
    with Store(tmp_path) as store:
        first = run_sweep(configs, store, executor, dying, progress=False)
        assert (first.ok, first.failed) == (3, 1)
        (failed,) = store.records("failed")
        assert failed["config"]["seed"] == 13
        assert "worker died during attempt 2" in failed["error"]

        second = run_sweep(configs, store, executor, sweep_faults.fake, progress=False)
        assert (second.requested, second.skipped, second.ok) == (4, 3, 1)
        records = store.records()
    assert sorted(r["key"] for r in records) == sorted(config_key(c) for c in configs)
    assert all(r["status"] == "ok" for r in records)


def test_without_ray_the_executor_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes ``import ray`` raise ImportError.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayNotInstalledError, match=r"pip install 'weightdecay\[ray\]'"):
        RayExecutor(workers=1)


@pytest.mark.parametrize(
    ("workers", "retries", "message"),
    [(0, 1, "workers must be >= 1, got 0"), (1, -1, "retries must be >= 0, got -1")],
)
def test_bad_arguments_are_named(workers: int, retries: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RayExecutor(workers=workers, retries=retries)


def test_command_line_sweep_on_ray_matches_inline(
    ray_executor: RayExecutor, tmp_path: Path
) -> None:
    """`weightdecay sweep --executor ray` stores the rows an inline sweep stores."""
    from weightdecay.cli import main

    grid = ["--optimizers", "AdamW,SGDW", "--lrs", "0.001", "--weight-decays"]
    grid += ["0,0.001", "--seeds", "0", "--epochs", "1", "--train-size", "200"]
    grid += ["--val-size", "200", "--data-dir", str(EMBEDDED_DIR), "--no-report"]
    rows = {}
    for name in ("ray", "inline"):
        out = tmp_path / name
        assert main(["sweep", "--out", str(out), "--executor", name, *grid]) == 0
        with Store(out) as store:
            rows[name] = {r["key"]: r["final"] for r in store.records()}
    assert len(rows["ray"]) == 4
    assert rows["ray"] == rows["inline"]


def test_command_line_names_the_missing_extra(monkeypatch, tmp_path: Path) -> None:
    """Without Ray, --executor ray exits with the install hint."""
    from weightdecay.cli import main
    from weightdecay.experiments import sweep

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise RayNotInstalledError(f"install it with: {INSTALL_HINT}")

    monkeypatch.setattr(sweep, "make_executor", no_ray)
    argv = ["sweep", "--out", str(tmp_path), "--executor", "ray", "--epochs", "1"]
    argv += ["--data-dir", str(EMBEDDED_DIR)]
    with pytest.raises(SystemExit, match=r"--executor ray: .*weightdecay\[ray\]"):
        main(argv)
