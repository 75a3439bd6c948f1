"""examples/ddp_train.py trains on two processes and resumes from its file.

The two ranks get torchrun's environment (RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE) but meet through a file, so the test opens no TCP store.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from dist_harness import run_script

from weightdecay.experiments.data import EMBEDDED_DIR

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_train.py"
EPOCH_LINE = re.compile(
    r"epoch +(\d+)/(\d+)  train loss ([\d.]+)  val error ([\d.]+)%  test error"
)


def _launch(workdir: Path, *args: str) -> str:
    """Run the example on two ranks; return rank 0's output."""
    argv = [
        "--data-dir",
        str(EMBEDDED_DIR),
        "--train-size",
        "512",
        "--val-size",
        "256",
        "--batch-size",
        "64",
        "--init-method",
        f"file://{workdir / 'store'}",
        *args,
    ]
    first, second = run_script(EXAMPLE, argv, workdir)
    assert second == "", "only rank 0 prints"
    return first


def test_trains_two_epochs_then_resumes_after_them(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.pt"
    output = _launch(tmp_path / "a", "--epochs", "2", "--checkpoint", str(checkpoint))
    assert output.startswith("2 processes, data embedded")
    epochs = [m.groups() for m in map(EPOCH_LINE.match, output.splitlines()[1:])]
    assert [(e[0], e[1]) for e in epochs] == [("1", "2"), ("2", "2")]
    first, second = (float(e[2]) for e in epochs)
    assert second < first < 2.3  # below log(10), the loss of a uniform guess
    assert float(epochs[-1][3]) < 50.0

    # The checkpoint holds plain numbers, strings and tensors only.
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 2
    assert {type(s["step"]) for s in state["optimizer"]["state"].values()} == {int}

    # Resuming at the end of the run trains no further epoch.
    again = _launch(tmp_path / "b", "--epochs", "2", "--checkpoint", str(checkpoint))
    assert again.startswith("2 processes") and "epoch" not in again.split("\n", 1)[1]
