"""Our optimizers as ZeroRedundancyOptimizer's optimizer_class under DDP."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from dist_harness import assert_relative_close, run_job
from dist_jobs import RESUME_AT, ZERO_SPECS, reference_params, zero_job

Ranks = list[dict[str, Any]]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Ranks:
    return run_job(zero_job, tmp_path_factory.mktemp("zero"))


@pytest.mark.parametrize("name", ZERO_SPECS)
def test_every_rank_holds_identical_parameters(ranks: Ranks, name: str) -> None:
    first, second = (rank["params"][name] for rank in ranks)
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("name", ZERO_SPECS)
def test_equals_single_process_on_the_global_batches(ranks: Ranks, name: str) -> None:
    assert_relative_close(ranks[0]["params"][name], reference_params(name), rtol=1e-6)


def test_parameters_as_bucket_views_give_the_same_steps(ranks: Ranks) -> None:
    for rank in ranks:
        assert_relative_close(rank["bucket_view"], reference_params("adamw"), rtol=1e-6)


@pytest.mark.parametrize("name", ZERO_SPECS)
def test_each_rank_keeps_state_for_its_shard_only(ranks: Ranks, name: str) -> None:
    held = [rank["local_states"][name] for rank in ranks]
    assert all(0 < count < ranks[0]["total_params"] for count in held)
    assert sum(held) == ranks[0]["total_params"]


@pytest.mark.parametrize("name", ["adamw", "adamwr_normalized"])
def test_consolidated_state_resumes_identically(ranks: Ranks, name: str) -> None:
    for rank in ranks:
        resume = rank["resume"][name]
        for key, value in resume["straight"].items():
            assert torch.equal(resume["resumed"][key], value), key
        assert resume["step_types"] == ["int"]
        assert resume["steps"] == [RESUME_AT] * len(resume["steps"])
