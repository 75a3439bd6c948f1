"""The small Fashion-MNIST models of the reproduction.

* ``"mlp_bn"`` (default): 784-128-BN-128-BN-10 with ReLU. Its hidden weight
  matrices are followed by BatchNorm, so they are scale-invariant: decay
  changes their effective learning rate rather than the function.
* ``"mlp"``: the same without BatchNorm.
* ``"cnn"``: conv(1->16, 5x5)-ReLU-maxpool-conv(16->32, 5x5)-ReLU-maxpool-
  linear(1568->10).
"""

from __future__ import annotations

from torch import nn

__all__ = ["MODELS", "make_model"]

MODELS = ("mlp_bn", "mlp", "cnn")


def make_model(name: str) -> nn.Module:
    """Build the model called ``name`` (one of ``MODELS``) on the CPU.

    Raises:
        ValueError: ``name`` is not one of ``MODELS``.
    """
    if name == "mlp_bn":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 10),
        )
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
