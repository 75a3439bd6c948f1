"""Units of decay, normalized decay and parameter groups."""

from __future__ import annotations

import logging
import math

import pytest
from torch import nn

from weightdecay import decay


def test_paper_and_torch_units_round_trip():
    assert decay.paper_from_torch(0.01, lr=1e-3) == pytest.approx(1e-5, rel=1e-15)
    assert decay.torch_from_paper(1e-5, lr=1e-3) == pytest.approx(0.01, rel=1e-12)
    for wd in (0.0, 3e-4, 0.5):
        back = decay.torch_from_paper(decay.paper_from_torch(wd, 2e-3), 2e-3)
        assert back == pytest.approx(wd, rel=1e-12)


def test_normalized_decay_check_value():
    """b=128, B=50000, T=100, lambda_norm=0.025 gives 1.2649e-4 (the paper's)."""
    value = decay.normalized_weight_decay(0.025, 128, 50_000, 100)
    assert value == pytest.approx(1.2649e-4, abs=1e-8)
    assert value == pytest.approx(0.025 * math.sqrt(128 / 5e6), rel=1e-15)


def test_ema_timescale():
    assert decay.ema_timescale_steps(1e-4) == pytest.approx(1e4)
    assert decay.ema_timescale_steps(1e-4, eta=0.5) == pytest.approx(2e4)
    assert decay.ema_timescale_steps(0.0) == math.inf
    assert decay.ema_timescale_epochs(1e-3, steps_per_epoch=40) == pytest.approx(25.0)
    torch_units = decay.paper_from_torch(0.1, lr=1e-3)
    assert decay.ema_timescale_steps(torch_units) == pytest.approx(1e4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decay.paper_from_torch(-1.0, 1e-3), "weight_decay must be"),
        (lambda: decay.paper_from_torch(0.1, 0.0), "lr must be finite and > 0"),
        (lambda: decay.normalized_weight_decay(0.05, 0, 10, 1), "batch_size must"),
        (lambda: decay.normalized_weight_decay(0.05, 1, 0, 1), "dataset_size must"),
        (lambda: decay.normalized_weight_decay(0.05, 1, 10, 0), "epochs must"),
        (lambda: decay.ema_timescale_epochs(1e-3, 0), "steps_per_epoch must"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 6, 3)
        self.norm = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 2)
        self.ln = nn.LayerNorm(2)


def test_param_groups_decay_matrices_and_kernels_only(caplog):
    net = _Net()
    with caplog.at_level(logging.INFO, logger="weightdecay.decay"):
        groups = decay.param_groups(net, 1e-4, lr=0.1)
    decayed, others = groups
    assert {id(p) for p in decayed["params"]} == {
        id(net.conv.weight),
        id(net.head.weight),
    }
    assert decayed["weight_decay"] == 1e-4 and others["weight_decay"] == 0.0
    assert decayed["lr"] == 0.1 and others["lr"] == 0.1
    expected_others = {
        net.embed.weight,
        net.conv.bias,
        net.norm.weight,
        net.norm.bias,
        net.head.bias,
        net.ln.weight,
        net.ln.bias,
    }
    assert {id(p) for p in others["params"]} == {id(p) for p in expected_others}
    n_decayed = net.conv.weight.numel() + net.head.weight.numel()
    assert f"2 tensors ({n_decayed} elements) decay" in caplog.text


def test_param_groups_overrides_and_sharing():
    net = _Net()
    shared = nn.Sequential(net.head, net.head)
    groups = decay.param_groups(shared, 1e-4, weight_decay_norm=0.05)
    assert len(groups[0]["params"]) == 1 and groups[0]["weight_decay_norm"] == 0.05
    assert "weight_decay_norm" not in groups[1]
    groups = decay.param_groups(net, 1e-4, no_decay_names=["head.weight"])
    assert [p.shape for p in groups[0]["params"]] == [net.conv.weight.shape]
    groups = decay.param_groups(net, 1e-4, decays=lambda m, n, p: n == "embed.weight")
    assert groups[0]["params"] == [net.embed.weight]
