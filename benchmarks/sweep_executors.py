"""Wall time of one small sweep: process pool vs Ray, 1 vs 2 workers.

One run measures, on this machine, the same grid of independent training
runs (the reproduction's MLP on the embedded Fashion-MNIST subset, one epoch
each) swept four times into fresh stores:

* ``LocalExecutor`` (the process pool) with 1 and with 2 worker processes;
* ``RayExecutor`` on one local Ray instance with 2 CPUs, with at most 1 and
  at most 2 tasks in flight.

Start-up is reported apart: the pool's fork server (torch preloaded) and the
Ray instance are started, each warmed with a two-run sweep, before the timed
sweeps. A timed sweep still includes each executor's per-sweep cost: the
pool forks fresh workers for every sweep (each reads the data again), while
Ray keeps its workers, and their data, between sweeps. The timed sweeps
alternate executors to spread the drift of a shared machine over both.

Example:
    python benchmarks/sweep_executors.py       # 8 runs, 5000 images, 2 epochs
    python benchmarks/sweep_executors.py --runs 4 --train-size 1000 --epochs 1
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from typing import Any

from weightdecay.experiments.data import EMBEDDED_DIR
from weightdecay.experiments.store import Store
from weightdecay.experiments.sweep import LocalExecutor, run_sweep
from weightdecay.experiments.train import make_config, run_config


def grid(runs: int, train_size: int, epochs: int, seed: int) -> list[dict[str, Any]]:
    """``runs`` AdamW configurations over a range of decays."""
    return [
        make_config(
            optimizer="AdamW",
            lr=1e-3,
            weight_decay=1e-4 * i,
            epochs=epochs,
            seed=seed,
            train_size=train_size,
            val_size=1000,
            data="embedded",
        )
        for i in range(runs)
    ]


def timed_sweep(executor: Any, configs: list[dict[str, Any]]) -> float:
    """Seconds to sweep ``configs`` into a fresh store (the executor's start too)."""
    fn = functools.partial(run_config, data_dir=str(EMBEDDED_DIR))
    with tempfile.TemporaryDirectory() as directory, Store(directory) as store:
        started = time.perf_counter()
        summary = run_sweep(configs, store, executor, fn, progress=False)
        elapsed = time.perf_counter() - started
    if summary.ok != len(configs):
        raise RuntimeError(f"sweep did not finish every run: {summary}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="runs in the grid")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.runs < 2:
        parser.error(f"--runs must be >= 2, got {args.runs}")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")

    from weightdecay.experiments.ray_executor import RayExecutor

    configs = grid(args.runs, args.train_size, args.epochs, seed=0)
    warmup = grid(2, args.train_size, 1, seed=1)

    # Start-up: the fork server and the Ray instance, then warm workers.
    started = time.perf_counter()
    pools = {n: LocalExecutor(n) for n in (1, 2)}
    timed_sweep(pools[2], warmup)
    pool_start = time.perf_counter() - started
    started = time.perf_counter()
    rays = {n: RayExecutor(workers=n) for n in (1, 2)}
    rays[2]._connect()
    ray_init = time.perf_counter() - started
    timed_sweep(rays[2], warmup)
    ray_start = time.perf_counter() - started

    # The timed sweeps, executors alternating.
    wall = {}
    for n in (1, 2):
        wall[("pool", n)] = timed_sweep(pools[n], configs)
        wall[("ray", n)] = timed_sweep(rays[n], configs)
    rays[2].close()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{args.runs} runs (AdamW, MLP, {args.train_size} train / 1000 val images, "
        f"{args.epochs} epochs) on {os.cpu_count()} CPUs, load average {load}"
    )
    print(
        f"start-up: process pool {pool_start:.1f}s (fork server + 2 warm-up runs), "
        f"Ray {ray_start:.1f}s (ray.init {ray_init:.1f}s + 2 warm-up runs)"
    )
    print(f"{'executor':<10}{'1 worker':>10}{'2 workers':>11}{'speed-up':>10}")
    for name in ("pool", "ray"):
        one, two = wall[(name, 1)], wall[(name, 2)]
        print(f"{name:<10}{one:>9.1f}s{two:>10.1f}s{one / two:>9.2f}x")
    print(
        "ray / pool: "
        f"{wall[('ray', 1)] / wall[('pool', 1)]:.2f} (1 worker), "
        f"{wall[('ray', 2)] / wall[('pool', 2)]:.2f} (2 workers)"
    )


if __name__ == "__main__":
    main()
