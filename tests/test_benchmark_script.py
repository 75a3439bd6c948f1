"""``benchmarks/step.py`` runs end to end and prints a complete table.

Nothing here is timed: a tiny run checks that every variant gets a row with
its ratios, that the triad timed in turn gives those rows their bound, and
that the ratio columns agree with the times printed beside them.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

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


def test_tiny_run_prints_every_variant_with_consistent_ratios(
    step_benchmark, capsys, tmp_path
):
    markdown = tmp_path / "table.md"
    code = step_benchmark.main(
        [
            "--sizes=2e4",
            "--tensors=1,8",
            "--seconds=0.01",
            "--repeats=3",
            "--triad-min-size=2e4",
            "--triad-elements=65536",
            "--memory-max-size=2e4",
            f"--markdown={markdown}",
        ]
    )
    assert code == 0
    header, *table = rows(capsys.readouterr().out)
    assert header[:2] == ["size", "tensors"] and header[-1] == "/ best bound"
    variants = step_benchmark.variants()
    assert len(table) == 2 * len(variants)  # every variant at both shapes
    names = {(row[2], row[3]) for row in table}
    assert names == {(v.family, v.name) for v in variants}
    for size, _count, family, name, ms, fused, bound, mb, gbs, best in table:
        moved = step_benchmark.BYTES_PER_PARAM[family] * float(size)
        # / bound is the time against the bytes at the triad's bandwidth.
        assert float(bound) == pytest.approx(
            float(ms) * 1e-3 * float(gbs) * 1e9 / moved, rel=0.06, abs=0.006
        )
        assert float(best) > 0 and float(mb) >= 0
        if name == "torch fused":
            assert fused == "1.00"
    assert markdown.read_text().count("\n| ") == len(table) + 1
