"""Plot each schedule multiplier of ``weightdecay.schedules`` into docs/schedules/.

Usage::

    python scripts/plot_schedules.py [--out docs/schedules] [--steps-per-epoch 20]

Each schedule is sampled once per batch (``k / steps_per_epoch`` epochs) as
the :class:`~weightdecay.schedules.WarmRestarts` scheduler would step it, and
written as one small PNG.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from weightdecay.schedules import (  # noqa: E402
    Schedule,
    cosine,
    linear_warmup,
    step_drop,
    warm_restarts,
)

# file stem -> (title, schedule, epochs shown, restart epochs to mark)
SCHEDULES: dict[str, tuple[str, Schedule, int, list[float]]] = {
    "cosine": ("cosine(T=100)", cosine(100), 100, []),
    "warm_restarts_T_mult_1": (
        "warm_restarts(T_0=20, T_mult=1)",
        warm_restarts(20, 1),
        100,
        [20, 40, 60, 80],
    ),
    "warm_restarts_T_mult_2": (
        "warm_restarts(T_0=10, T_mult=2)",
        warm_restarts(10, 2),
        150,
        [10, 30, 70],
    ),
    "step_drop": (
        "step_drop(milestones=[30, 60, 80], factor=0.1)",
        step_drop([30, 60, 80], 0.1),
        100,
        [],
    ),
    "warmup_cosine": (
        "linear_warmup(5, cosine(T=95, eta_min=0.05))",
        linear_warmup(5, cosine(95, eta_min=0.05)),
        100,
        [5],
    ),
}


def plot(
    stem: str,
    title: str,
    schedule: Schedule,
    epochs: int,
    marks: list[float],
    out: Path,
    steps_per_epoch: int,
) -> Path:
    """Draw one schedule and write ``out / f"{stem}.png"``."""
    steps = range(epochs * steps_per_epoch)
    positions = [Fraction(k, steps_per_epoch) for k in steps]
    values = [schedule(p) for p in positions]

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.plot([float(p) for p in positions], values, lw=1.4, color="tab:blue")
    for epoch in marks:
        ax.axvline(epoch, color="0.75", lw=0.8, ls="--")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"multiplier $\eta_t$")
    ax.set_xlim(0, epochs)
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()

    path = out / f"{stem}.png"
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/schedules"))
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    args = parser.parse_args(argv)
    if args.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, (title, schedule, epochs, marks) in SCHEDULES.items():
        path = plot(
            stem, title, schedule, epochs, marks, args.out, args.steps_per_epoch
        )
        print(f"{path}  {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
