"""WeightsOnlyLoadPlanner: DCP's non-tensor values unpickled safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from dist_harness import WeightsOnlyLoadPlanner

# DCP warns that it runs in one process, which is the point here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled:UserWarning"
)


class Payload:
    """A picklable object that weights-only unpickling must refuse."""

    def __init__(self) -> None:
        self.value = 1


def test_loads_python_numbers_and_containers(tmp_path: Path) -> None:
    saved = {"w": torch.arange(3.0), "step": 7, "betas": (0.9, 0.999), "name": "a"}
    dcp.save(saved, checkpoint_id=tmp_path, no_dist=True)
    loaded = {"w": torch.zeros(3), "step": 0, "betas": (0.0, 0.0), "name": ""}
    dcp.load(
        loaded, checkpoint_id=tmp_path, planner=WeightsOnlyLoadPlanner(), no_dist=True
    )
    assert torch.equal(loaded["w"], saved["w"])
    assert type(loaded["step"]) is int and loaded["step"] == 7
    assert loaded["betas"] == (0.9, 0.999) and loaded["name"] == "a"


def test_refuses_arbitrary_objects(tmp_path: Path) -> None:
    dcp.save(
        {"w": torch.ones(2), "extra": Payload()}, checkpoint_id=tmp_path, no_dist=True
    )
    loaded = {"w": torch.zeros(2), "extra": None}
    # DCP gathers each rank's error into a CheckpointException, which
    # derives from BaseException.
    with pytest.raises(dcp.CheckpointException, match="Weights only load failed"):
        dcp.load(
            loaded,
            checkpoint_id=tmp_path,
            planner=WeightsOnlyLoadPlanner(),
            no_dist=True,
        )
    assert loaded["extra"] is None
