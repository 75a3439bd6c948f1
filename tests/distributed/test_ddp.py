"""Our optimizers under DistributedDataParallel, two gloo ranks on CPU."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import torch
from dist_harness import assert_relative_close, run_job
from dist_jobs import RESUME_AT, SPECS, ddp_job, make_model, reference_params

from weightdecay import _kernels

Ranks = list[dict[str, Any]]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Ranks:
    return run_job(ddp_job, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("name", SPECS)
def test_every_rank_holds_identical_parameters(ranks: Ranks, name: str) -> None:
    first, second = (rank["params"][name] for rank in ranks)
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("name", SPECS)
def test_equals_single_process_on_the_global_batches(ranks: Ranks, name: str) -> None:
    expected = reference_params(name)
    initial = make_model().state_dict()
    assert any(not torch.allclose(expected[k], initial[k]) for k in initial)
    assert_relative_close(ranks[0]["params"][name], expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adamw_amsgrad", "adam_l2", "sgdw"])
def test_default_path_is_a_fast_one(ranks: Ranks, name: str) -> None:
    # Plain CPU tensors under DDP: the numba kernels where numba is
    # installed, else PyTorch's fused Adam (SGD: the multi-tensor path).
    fast = "kernel" if _kernels.available() else "fused"
    if name == "sgdw" and fast == "fused":
        fast = "foreach"
    for rank in ranks:
        assert any(fast in path for path in rank["paths"][name]), rank["paths"]


def test_loop_path_is_used_when_asked_for(ranks: Ranks) -> None:
    for rank in ranks:
        assert rank["paths"]["adamw_loop"] == ["adam_for_loop"]


@pytest.mark.parametrize("name", ["adamw", "sgdw", "adamwr_normalized"])
def test_dcp_checkpoint_resumes_identically(ranks: Ranks, name: str) -> None:
    for rank in ranks:
        resume = rank["resume"][name]
        for key, value in resume["straight"].items():
            assert torch.equal(resume["resumed"][key], value), key


@pytest.mark.parametrize("name", ["adamw", "sgdw", "adamwr_normalized"])
def test_step_survives_dcp_as_a_python_int(ranks: Ranks, name: str) -> None:
    resume = ranks[0]["resume"][name]
    assert resume["step_types"] == ["int"]
    assert resume["steps"] == [RESUME_AT] * len(resume["steps"])


def test_ranks_listen_on_loopback_only(ranks: Ranks) -> None:
    for rank in ranks:
        assert rank["listening"], "gloo listens for its peers"
        for address in rank["listening"]:
            host = address.rsplit(":", 1)[0]
            assert ipaddress.ip_address(host).is_loopback, address
