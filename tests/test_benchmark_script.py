"""``benchmarks/step.py`` runs end to end and prints a complete table.

Nothing here is timed: a tiny run checks that every variant gets a row with
its ratios, that the triad timed in turn gives those rows their bound, and
that every printed figure follows from the raw times of the rounds.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import statistics
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"


@pytest.fixture(scope="module")
def step_benchmark():
    spec = importlib.util.spec_from_file_location("step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclasses
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_paired_ratio_is_the_median_of_each_rounds_ratio(step_benchmark):
    # Round ratios 1, 0.5, 2: the median is 1, the ratio of medians 2.
    assert step_benchmark.paired([1.0, 10.0, 2.0], [1.0, 20.0, 1.0]) == 1.0
    assert step_benchmark.paired([3.0, 1.0], [1.0, 1.0]) == 2.0
    with pytest.raises(ValueError, match="3 times, 2 baselines"):
        step_benchmark.paired([1.0, 2.0, 3.0], [1.0, 2.0])


def test_tiny_run_prints_every_variant_with_consistent_ratios(
    step_benchmark, capsys, tmp_path
):
    markdown = tmp_path / "table.md"
    raw_file = tmp_path / "rounds.json"
    code = step_benchmark.main(
        [
            "--sizes=2e4",
            "--tensors=1,8",
            "--seconds=0.01",
            "--repeats=3",
            "--triad-min-size=2e4",
            "--triad-elements=65536",
            "--memory-max-size=2e4",
            "--device=cpu",
            f"--markdown={markdown}",
            f"--raw={raw_file}",
        ]
    )
    assert code == 0
    header, *table = rows(capsys.readouterr().out)
    assert header[:2] == ["size", "tensors"] and header[-1] == "/ best bound"
    variants = step_benchmark.variants()
    assert len(table) == 2 * len(variants)  # every variant at both shapes
    names = {(row[2], row[3]) for row in table}
    assert names == {(v.family, v.name) for v in variants}
    raw = json.loads(raw_file.read_text())
    best_triad = raw["best_triad_bytes_per_second"]
    shapes = {
        (shape["size"], shape["tensors"]): {
            (v["family"], v["name"]): v for v in shape["variants"]
        }
        for shape in raw["shapes"]
    }
    for size, count, family, name, ms, fused, bound, mb, gbs, best in table:
        row = shapes[(int(float(size)), int(count))][(family, name)]
        times, baseline = row["seconds"], row["fused_seconds"]
        bandwidths = row["triad_bytes_per_second"]
        assert len(times) == len(baseline) == len(bandwidths) >= 3
        moved = step_benchmark.BYTES_PER_PARAM[family] * float(size)
        assert float(ms) == pytest.approx(statistics.median(times) * 1e3, abs=6e-4)
        # Per round: this step against torch fused and against the bound at
        # the triad's bandwidth of that round; the medians are printed.
        ratios = [t / f for t, f in zip(times, baseline, strict=True)]
        assert float(fused) == pytest.approx(statistics.median(ratios), abs=6e-3)
        bounds = [t * b / moved for t, b in zip(times, bandwidths, strict=True)]
        assert float(bound) == pytest.approx(statistics.median(bounds), abs=6e-3)
        assert float(gbs) == pytest.approx(
            statistics.median(bandwidths) / 1e9, abs=0.06
        )
        median = statistics.median(times)
        assert float(best) == pytest.approx(median * best_triad / moved, abs=6e-3)
        assert float(mb) >= 0
        # The slow implementations have a rotation, and a baseline, of their own.
        slow = name in step_benchmark.SLOW
        fast_fused = shapes[(int(float(size)), int(count))][
            ("sgd" if family == "sgdw" else family, "torch fused")
        ]["seconds"]
        assert (baseline == fast_fused) is not slow
        if name == "torch fused":
            assert fused == "1.00"
    assert markdown.read_text().count("\n| ") == len(table) + 1



def test_every_timed_step_runs_between_two_synchronizations(step_benchmark):
    """On a GPU a step's call returns before its kernels finish: each time
    must start on an idle device and end when the step's work has."""
    events: list[str] = []
    times = step_benchmark.time_interleaved(
        [lambda: events.append("a"), lambda: events.append("b")],
        seconds=0.0,
        repeats=3,
        sync=lambda: events.append("sync"),
    )
    assert [len(t) for t in times] == [3, 3]
    # An untimed warm-up round, then a round that sets the count and three
    # timed rounds: eight calls, each between two synchronizations.
    assert events[:2] == ["a", "b"]
    calls = [events[i : i + 3] for i in range(2, len(events), 3)]
    assert len(calls) == 8
    assert all(c[0] == c[2] == "sync" and c[1] in ("a", "b") for c in calls)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "--device 'gpu' is not a device (cpu or cuda[:N])"),
        ("meta", "--device 'meta': only cpu and cuda are timed"),
        pytest.param(
            "cuda",
            "--device 'cuda': torch.cuda.is_available() is False here",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="CUDA is available here"
            ),
        ),
    ],
)
def test_a_device_that_cannot_run_is_refused_by_name(
    step_benchmark, capsys, device, message
):
    with pytest.raises(SystemExit) as exit_info:
        step_benchmark.main([f"--device={device}", "--sizes=1e3"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
