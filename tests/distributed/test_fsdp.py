"""Our optimizers on FSDP2 (fully_shard) DTensor parameters, two gloo ranks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from dist_harness import assert_relative_close, run_job
from dist_jobs import FSDP_SPECS, RESUME_AT, fsdp_job, reference_params

Ranks = list[dict[str, Any]]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Ranks:
    return run_job(fsdp_job, tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize("name", FSDP_SPECS)
def test_parameters_are_sharded_dtensors(ranks: Ranks, name: str) -> None:
    assert all(rank["sharded"][name] for rank in ranks)


@pytest.mark.parametrize("name", FSDP_SPECS)
def test_every_rank_gathers_identical_parameters(ranks: Ranks, name: str) -> None:
    first, second = (rank["params"][name] for rank in ranks)
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("name", FSDP_SPECS)
def test_equals_single_process_on_the_global_batches(ranks: Ranks, name: str) -> None:
    assert_relative_close(ranks[0]["params"][name], reference_params(name), rtol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adam_l2", "sgdw"])
def test_default_path_falls_back_to_multi_tensor_on_dtensors(
    ranks: Ranks, name: str
) -> None:
    # Neither PyTorch's fused kernels nor the numba kernels take DTensors.
    for rank in ranks:
        paths = rank["paths"][name]
        assert paths and all(path.endswith("_foreach") for path in paths), paths


def test_forcing_fused_on_dtensors_is_a_clear_error(ranks: Ranks) -> None:
    for rank in ranks:
        assert "DTensor" in rank["fused_error"]
        assert "foreach=True" in rank["fused_error"]


@pytest.mark.parametrize("name", ["adamw", "sgdw", "adamwr_normalized"])
def test_dcp_checkpoint_resumes_identically(ranks: Ranks, name: str) -> None:
    for rank in ranks:
        resume = rank["resume"][name]
        for key, value in resume["straight"].items():
            assert torch.equal(resume["resumed"][key], value), key
        assert resume["step_types"] == ["int"]
        assert resume["steps"] == [RESUME_AT] * len(resume["steps"])


def test_loading_optimizer_before_model_keeps_constant_decay_weights(
    ranks: Ranks,
) -> None:
    result = ranks[0]["load_optimizer_first"]
    for key, value in result["saved"].items():
        assert torch.equal(result["loaded"][key], value), key


@pytest.mark.xfail(
    strict=True,
    reason="set_optimizer_state_dict initializes an empty optimizer with one "
    "lr=0 step; decay_scaling='none' decays the already loaded weights in it",
)
def test_loading_model_before_optimizer_keeps_constant_decay_weights(
    ranks: Ranks,
) -> None:
    result = ranks[0]["load_model_first"]
    for key, value in result["saved"].items():
        assert torch.equal(result["loaded"][key], value), key
