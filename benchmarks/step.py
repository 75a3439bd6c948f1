"""Time one optimizer step against PyTorch and against the memory bound.

One run measures, on this machine and with torch's default thread count:

* the bandwidth of an in-place triad ``a += s * b`` over buffers larger than
  the caches (12 bytes per element: read a, read b, write a);
* for each model size and number of tensors, the median step time of our
  Adam, AdamW, SGD and SGDW in each implementation (per-tensor loop,
  ``foreach``, ``fused`` on PyTorch's kernels, and the default, which on the
  CPU is the multi-tensor kernel) and of ``torch.optim.AdamW``/``Adam``/``SGD``
  with ``foreach=True`` and ``fused=True``;
* the peak extra memory of one step (sizes up to ``--memory-max-size``): the
  live bytes of the tensors that the step allocates (counted by a
  ``TorchDispatchMode`` that records every new output storage of every aten
  op until it is freed) plus the peak of the Python and numpy heap
  (``tracemalloc``). It is measured on a separate, untimed step.

Ratios are taken round by round: every variant of a family (and from
``--triad-min-size`` the triad) takes one step per round in a shuffled
order, and a ratio is the median over rounds of the two times of one round,
so that the shared machine's slow minutes cancel. The per-tensor loops and
the ``foreach`` steps, several times slower, have a rotation of their own
with its own ``torch fused`` baseline, so that they do not leave the fast
steps only a few rounds.

The bound of a step is the bytes it must move divided by the triad's
bandwidth: fp32 Adam(W) reads parameter, gradient and both moments and writes
three back (28 bytes per parameter, 36 with amsgrad); SGD(W) with momentum
reads parameter, gradient and buffer and writes two back (20). From 1e7
parameters (``--triad-min-size``) the triad is timed in turn with the steps
and the bound uses its bandwidth at those moments; smaller shapes use the
best triad of the run, and the last column gives every row against it.

``--device cuda`` runs the same table on a GPU: parameters, gradients and
the triad's buffers live there, and every timed step (the triad too) is
bracketed by ``torch.cuda.synchronize()``, so a time covers the launch on
the host and the work on the device. Our optimizers take PyTorch's fused
Adam kernels there (with the paper's scalars) and ``foreach`` SGD.

Example:
    python benchmarks/step.py                      # the full table (~10 min)
    python benchmarks/step.py --sizes 1e5,1e6 --tensors 1,8 --seconds 0.3
    python benchmarks/step.py --device cuda        # the same on a GPU
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import weightdecay as wd
from weightdecay import _kernels

LR = 1e-3
# Per-step decays of the same size in both conventions: torch's lr * wd
# equals the paper's eta * lambda at eta = 1.
PAPER_DECAY = 1e-5
TORCH_DECAY = PAPER_DECAY / LR
L2 = 1e-4
MOMENTUM = 0.9


@dataclass(frozen=True)
class Variant:
    """One optimizer configuration to time."""

    family: str  # "adamw", "adam", "sgdw" or "sgd"
    name: str
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    ours: bool


BYTES_PER_PARAM = {"adamw": 28, "adam": 28, "sgdw": 20, "sgd": 20}


def variants() -> list[Variant]:
    """Every configuration, ours and PyTorch's, by family."""
    impls = {
        "loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
        "default": {},
    }
    out = []
    for name, kw in impls.items():
        loop_kw = {**kw, "fused": False} if name == "loop" else kw
        out.append(
            Variant(
                "adamw",
                name,
                lambda ps, kw=loop_kw: wd.AdamW(
                    ps, lr=LR, weight_decay=PAPER_DECAY, **kw
                ),
                True,
            )
        )
    out.append(
        Variant(
            "adamw",
            "default, torch units",
            lambda ps: wd.AdamW(
                ps, lr=LR, weight_decay=TORCH_DECAY, decay_scaling="lr"
            ),
            True,
        )
    )
    for name, kw in impls.items():
        loop_kw = {**kw, "fused": False} if name == "loop" else kw
        out.append(
            Variant(
                "adam",
                name,
                lambda ps, kw=loop_kw: wd.Adam(ps, lr=LR, weight_decay=L2, **kw),
                True,
            )
        )
    for family, cls, decay in (("sgdw", wd.SGDW, PAPER_DECAY), ("sgd", wd.SGD, L2)):
        for name, kw in impls.items():
            if name == "fused":
                continue
            out.append(
                Variant(
                    family,
                    name,
                    lambda ps, cls=cls, decay=decay, kw=kw: cls(
                        ps, lr=LR, momentum=MOMENTUM, weight_decay=decay, **kw
                    ),
                    True,
                )
            )
    for mode in ("foreach", "fused"):
        kw = {mode: True}
        out += [
            Variant(
                "adamw",
                f"torch {mode}",
                lambda ps, kw=kw: torch.optim.AdamW(
                    ps, lr=LR, weight_decay=TORCH_DECAY, **kw
                ),
                False,
            ),
            Variant(
                "adam",
                f"torch {mode}",
                lambda ps, kw=kw: torch.optim.Adam(ps, lr=LR, weight_decay=L2, **kw),
                False,
            ),
            # torch's SGD has no decoupled decay: its L2 form moves the same
            # bytes and is the baseline for both SGD and SGDW.
            Variant(
                "sgd",
                f"torch {mode}",
                lambda ps, kw=kw: torch.optim.SGD(
                    ps, lr=LR, momentum=MOMENTUM, weight_decay=L2, **kw
                ),
                False,
            ),
        ]
    return out


TRIAD_ELEMENTS = 1 << 26  # two fp32 buffers of 256 MiB


class Triad:
    """An in-place triad ``a += s * b`` over two fp32 buffers of ``elements``.

    Moves 12 bytes per element (read a, read b, write a); ``bandwidth`` of
    its median time is the machine's memory bandwidth at that moment.
    """

    def __init__(
        self, elements: int = TRIAD_ELEMENTS, device: torch.device | None = None
    ) -> None:
        self.a = torch.rand(elements, device=device)
        self.b = torch.rand(elements, device=device)

    def __call__(self) -> None:
        self.a.add_(self.b, alpha=1e-7)

    def bandwidth(self, seconds: float) -> float:
        return 12 * self.a.numel() / seconds


def no_sync() -> None:
    """On the CPU a step has finished when its call returns."""


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for the work queued on ``device`` (nothing on the CPU)."""
    if device.type == "cuda":
        return functools.partial(torch.cuda.synchronize, device)
    return no_sync


def timed(step: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds from an idle device to the end of ``step``'s work on it."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def triad_bandwidth(
    triad: Triad, repeats: int = 9, sync: Callable[[], None] = no_sync
) -> float:
    """The triad's bandwidth, the median of ``repeats`` after two warm-ups."""
    times = [timed(triad, sync) for _ in range(repeats + 2)]
    return triad.bandwidth(statistics.median(times[2:]))


def split(total: int, count: int) -> list[int]:
    """``count`` sizes adding up to ``total``, as equal as possible."""
    base, extra = divmod(total, count)
    return [base + (i < extra) for i in range(count)]


def time_interleaved(
    steps: list[Callable[[], object]],
    seconds: float,
    repeats: int,
    sync: Callable[[], None] = no_sync,
) -> list[list[float]]:
    """Seconds of each step in every round, the steps taken in turn.

    Two warm-up steps each (the first creates state), then rounds in which every
    step runs once, so that all of them see the same moments of a shared
    machine and their ratios do not depend on when each was timed. Each
    round takes the steps in a new random order (seeded), so that every
    step follows each of the others about equally often: a step finds the
    caches as the step before it left them, and at small sizes that moves
    its time by a third.
    As many rounds as fit in ``seconds`` per step (at most ``repeats``) are
    timed, at least three, or two when a round takes longer than a second
    per step. Every list has one time per round, in the order of the rounds,
    so that times of one round can be compared (see :func:`paired`).
    Each time runs from an idle device to the end of the step's work
    (:func:`timed`).
    """
    for step in steps:
        step()
    # The first steps compile and allocate: a second round sets the count.
    per_round = max(sum(timed(step, sync) for step in steps), 1e-9)
    least = 3 if per_round < len(steps) else 2
    rounds = max(least, min(repeats, int(seconds * len(steps) / per_round)))
    times: list[list[float]] = [[] for _ in steps]
    order = list(range(len(steps)))
    shuffle = random.Random(len(steps)).shuffle
    for _ in range(rounds):
        shuffle(order)
        for index in order:
            times[index].append(timed(steps[index], sync))
    return times


def paired(times: list[float], baselines: list[float]) -> float:
    """The median over rounds of ``times[r] / baselines[r]``.

    Both were timed in the same rounds, so each ratio compares two steps
    taken seconds apart: a slow minute of the shared machine slows both and
    leaves their ratio, where a ratio of two medians would carry it.
    """
    if len(times) != len(baselines):
        raise ValueError(
            f"paired needs one baseline per round: {len(times)} times, "
            f"{len(baselines)} baselines"
        )
    return statistics.median(t / b for t, b in zip(times, baselines, strict=True))


class _AllocationMeter(TorchDispatchMode):
    """Peak live bytes of storages created by aten ops while active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in inputs or storage.nbytes() == 0:
                continue
            inputs.add(storage.data_ptr())
            nbytes = storage.nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._freed, nbytes)
        return out


def extra_memory(step: Callable[[], object], sync: Callable[[], None] = no_sync) -> int:
    """Peak bytes allocated during one ``step`` (torch tensors + Python heap)."""
    gc.collect()
    tracemalloc.start()
    with _AllocationMeter() as meter:
        step()
        sync()
        gc.collect()
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return meter.peak + heap_peak


# Families timed together: each is compared with the torch baseline in it.
TIMED_TOGETHER = (("adamw",), ("adam",), ("sgdw", "sgd"))
# Implementations several times slower than the rest, timed in a rotation of
# their own: beside them the fast steps would get a few rounds at most.
SLOW = ("loop", "foreach", "torch foreach")


def baseline_family(family: str) -> str:
    """The family whose ``torch fused`` step is the baseline of ``family``:
    torch's SGD has no decoupled decay, and its L2 form moves SGDW's bytes."""
    return "sgd" if family == "sgdw" else family


@dataclass(frozen=True)
class Timing:
    """One variant's rounds on one shape, and what was timed in its rounds.

    ``seconds``, ``fused`` (the baseline's ``torch fused`` step, see
    :func:`baseline_family`) and ``bandwidths`` (the triad's) have one entry
    per round of the same rotation; ``fused`` is None where the baseline was
    not chosen, ``bandwidths`` where the triad was not in the rotation.
    ``memory`` is the extra bytes of one step, -1 where not measured.
    """

    seconds: list[float]
    memory: int
    fused: list[float] | None
    bandwidths: list[float] | None


def measure(
    size: int,
    count: int,
    chosen: list[Variant],
    args: argparse.Namespace,
    triad: Triad,
) -> dict[tuple[str, str], Timing]:
    """The rounds of each variant on one model shape.

    The variants of each of ``TIMED_TOGETHER`` live at once and are timed in
    turn (see :func:`time_interleaved`), in two rotations: the implementations
    of ``SLOW`` in one, the others in the other. Each rotation has its own
    ``torch fused`` baselines, so every ratio pairs steps of the same rounds;
    the table's ``torch fused`` row is the one from the fast rotation. The
    families follow one another to bound the memory held at once. From
    ``args.triad_min_size`` parameters the triad takes its turn in each
    rotation too; below that size a triad between the steps would evict
    their data from the caches.
    """
    device = torch.device(args.device)
    sync = synchronizer(device)
    generator = torch.Generator().manual_seed(size + count)
    params = [
        torch.nn.Parameter(torch.randn(n, generator=generator).to(device))
        for n in split(size, count)
    ]
    for param in params:
        grad = torch.randn(param.shape, generator=generator) * 1e-2
        param.grad = grad.to(device)
    with_triad = size >= args.triad_min_size
    metered = args.memory and size <= args.memory_max_size
    results = {}
    for families in TIMED_TOGETHER:
        batch = [
            variant
            for variant in chosen
            if variant.family in families
            and not (variant.name == "loop" and size > args.loop_max_size)
        ]
        baselines = [v for v in batch if v.name == "torch fused"]
        timings: dict[tuple[str, str], Timing] = {}
        for slow in (False, True):
            members = [v for v in batch if (v.name in SLOW) == slow]
            if not members:
                continue
            if slow:
                members += baselines
            optimizers = [variant.make(params) for variant in members]
            steps = [optimizer.step for optimizer in optimizers]
            times = time_interleaved(
                steps + [triad] if with_triad else steps,
                args.seconds,
                args.repeats,
                sync,
            )
            bandwidths = None
            if with_triad:
                bandwidths = [triad.bandwidth(seconds) for seconds in times.pop()]
            rounds = {
                (v.family, v.name): t for v, t in zip(members, times, strict=True)
            }
            for variant, optimizer in zip(members, optimizers, strict=True):
                if slow and variant.name == "torch fused":
                    continue  # this rotation's baseline, not a row
                key = (variant.family, variant.name)
                timings[key] = Timing(
                    rounds[key],
                    extra_memory(optimizer.step, sync) if metered else -1,
                    rounds.get((baseline_family(variant.family), "torch fused")),
                    bandwidths,
                )
            del optimizers, steps
            gc.collect()
        results.update(
            (key, timings[key]) for key in ((v.family, v.name) for v in batch)
        )
    del params
    gc.collect()
    return results


def table_cells(
    results: dict[tuple[str, str], Timing], size: int, best: float
) -> list[tuple[str, str, str]]:
    """The table's cells from ``ms/step`` on, for each variant of one shape.

    ``ms/step`` is the median time. ``/ torch fused`` is the median of the
    per-round ratios to the baseline's fused step timed in the same rounds
    (:func:`paired`). ``/ bound`` is the median of the per-round ratios to
    the bound at the triad's bandwidth of the same round where the triad was
    in the rotation, else to the bound at ``best``; ``triad GB/s`` is that
    bandwidth (the median over rounds), and ``/ best bound`` the median time
    against the bound at ``best``.
    """
    cells = []
    for (family, name), timing in results.items():
        times = timing.seconds
        seconds = statistics.median(times)
        moved = BYTES_PER_PARAM[family] * size
        if timing.bandwidths is None:
            bandwidth = best
            bound = seconds * best / moved
        else:
            bandwidth = statistics.median(timing.bandwidths)
            bound = paired(times, [moved / b for b in timing.bandwidths])
        fused = "-" if timing.fused is None else f"{paired(times, timing.fused):.2f}"
        mb = f"{timing.memory / 2**20:.1f}" if timing.memory >= 0 else "-"
        cells.append(
            (
                family,
                name,
                f"{seconds * 1e3:.3f} | {fused} | {bound:.2f} | {mb} "
                f"| {bandwidth / 1e9:.1f} | {seconds * best / moved:.2f} |",
            )
        )
    return cells


def parse_device(parser: argparse.ArgumentParser, text: str) -> torch.device:
    """``--device`` as a device this run can use, or the parser's error."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        parser.error(f"--device {text!r} is not a device (cpu or cuda[:N])")
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        parser.error(f"--device {text!r}: only cpu and cuda are timed")
    if not torch.cuda.is_available():
        parser.error(f"--device {text!r}: torch.cuda.is_available() is False here")
    if device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(
            f"--device {text!r}: this machine has {torch.cuda.device_count()} "
            "CUDA device(s)"
        )
    return device


def describe(device: torch.device) -> str:
    """The table's note on where the steps ran."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    kernels = "on" if _kernels.available() else "off"
    return f"{torch.get_num_threads()} threads, numba kernels {kernels}"


def parse_sizes(text: str) -> list[int]:
    return [int(float(item)) for item in text.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="1e5,1e6,1e7,5e7,1e8",
        help="model sizes in parameters, comma-separated (default %(default)s)",
    )
    parser.add_argument(
        "--tensors",
        default="1,8,100,1000",
        help="numbers of tensors each size is split into (default %(default)s)",
    )
    parser.add_argument(
        "--families",
        default="adamw,adam,sgdw,sgd",
        help="optimizer families to time (default %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="timing budget per variant and shape; at least 3 steps are timed",
    )
    parser.add_argument(
        "--repeats", type=int, default=100, help="most steps timed per variant"
    )
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the extra-memory measurement",
    )
    parser.add_argument(
        "--memory-max-size",
        type=float,
        default=1e7,
        help="measure extra memory only up to this size (default %(default).0e)",
    )
    parser.add_argument(
        "--loop-max-size",
        type=float,
        default=1e8,
        help="time our per-tensor loops only up to this size (default %(default).0e)",
    )
    parser.add_argument(
        "--triad-min-size",
        type=float,
        default=1e7,
        help="from this size the triad is timed in turn with the steps, and the "
        "bound of those rows uses it (default %(default).0e)",
    )
    parser.add_argument(
        "--triad-elements",
        type=float,
        default=TRIAD_ELEMENTS,
        help="fp32 elements of each triad buffer, to exceed the caches "
        "(default %(default)d)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the tensors live: cpu or cuda[:N] (default %(default)s)",
    )
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument(
        "--raw", help="also write every round's times to this file (JSON)"
    )
    args = parser.parse_args(argv)
    device = parse_device(parser, args.device)
    families = args.families.split(",")
    chosen = [v for v in variants() if v.family in families]
    if "sgdw" in families and "sgd" not in families:
        chosen += [v for v in variants() if v.family == "sgd" and not v.ours]

    load_start = os.getloadavg()
    sync = synchronizer(device)
    triad = Triad(int(args.triad_elements), device)
    triads = [triad_bandwidth(triad, sync=sync)]
    print(f"triad {triads[0] / 1e9:.2f} GB/s; timing...", file=sys.stderr)
    started = time.perf_counter()
    measured = []
    for size in parse_sizes(args.sizes):
        for count in parse_sizes(args.tensors):
            if count > size:
                continue
            results = measure(size, count, chosen, args, triad)
            measured.append((size, count, results))
            triads.append(triad_bandwidth(triad, sync=sync))
            fastest = min(statistics.median(t.seconds) for t in results.values())
            print(
                f"  {size:.0e} params in {count} tensors: fastest step "
                f"{fastest * 1e3:.3f} ms, triad {triads[-1] / 1e9:.2f} GB/s",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    # Rows timed with the triad in their rotation take their bound from it:
    # the bandwidth at the same moments of this shared machine. The others
    # use the best triad of the run, the bandwidth when least disturbed, so
    # that no ratio is flattered by a slow moment; the last column gives
    # every row's ratio against that best triad.
    best = max(triads)
    lines = [
        f"torch {torch.__version__}, {describe(device)}; triad bandwidth "
        f"between shapes {best / 1e9:.2f} GB/s best of {len(triads)}, median "
        f"{statistics.median(triads) / 1e9:.2f}; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end; {elapsed:.0f} s",
        "",
        "| size | tensors | optimizer | implementation | ms/step | / torch fused "
        "| / bound | extra MB | triad GB/s | / best bound |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size, count, results in measured:
        for family, name, cells in table_cells(results, size, best):
            lines.append(f"| {size:.0e} | {count} | {family} | {name} | {cells}")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text + "\n")
    if args.raw:
        raw = {
            "best_triad_bytes_per_second": best,
            "shapes": [
                {
                    "size": size,
                    "tensors": count,
                    "variants": [
                        {
                            "family": family,
                            "name": name,
                            "seconds": timing.seconds,
                            "memory": timing.memory,
                            "fused_seconds": timing.fused,
                            "triad_bytes_per_second": timing.bandwidths,
                        }
                        for (family, name), timing in results.items()
                    ],
                }
                for size, count, results in measured
            ],
        }
        with open(args.raw, "w") as handle:
            json.dump(raw, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
