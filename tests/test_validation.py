"""Bad input is rejected with a message naming the argument and the value."""

from __future__ import annotations

import math
import re

import pytest
import torch

from weightdecay import SGD, SGDW, Adam, AdamW, WeightDecayUnitsWarning


def _params():
    return [torch.nn.Parameter(torch.ones(2))]


BAD_INPUTS = [
    (AdamW, {"lr": -1e-3}, "lr must be finite and >= 0, got -0.001"),
    (AdamW, {"lr": math.inf}, "lr must be finite and >= 0, got inf"),
    (AdamW, {"lr": math.nan}, "lr must be finite and >= 0, got nan"),
    (AdamW, {"lr": 0.0}, "lr must be > 0 when a parameter group is created, got 0.0"),
    (Adam, {"eps": -1e-8}, "eps must be finite and >= 0, got -1e-08"),
    (Adam, {"eps": math.nan}, "eps must be finite and >= 0, got nan"),
    (AdamW, {"weight_decay": -0.1}, "weight_decay must be finite and >= 0, got -0.1"),
    (Adam, {"weight_decay": math.inf}, "weight_decay must be finite and >= 0, got inf"),
    (AdamW, {"betas": (1.0, 0.999)}, "betas[0] must be in [0, 1), got 1.0"),
    (AdamW, {"betas": (0.9, -0.1)}, "betas[1] must be in [0, 1), got -0.1"),
    (Adam, {"betas": (0.9,)}, "betas must be a pair of floats, got (0.9,)"),
    (AdamW, {"decay_scaling": "torch"}, "decay_scaling must be one of"),
    (AdamW, {"foreach": True, "fused": True}, "foreach=True and fused=True"),
    (AdamW, {"lr": torch.tensor(0.1)}, "lr must be a Python number, got a Tensor"),
    (SGD, {"lr": -0.1}, "lr must be finite and >= 0, got -0.1"),
    (SGD, {"lr": 0.1, "momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
    (SGD, {"lr": 0.1, "momentum": -0.5}, "momentum must be in [0, 1), got -0.5"),
    (SGDW, {"lr": 0.1, "weight_decay": -1.0}, "weight_decay must be finite and >= 0"),
    (SGDW, {"lr": 0.1, "decay_scaling": "paper"}, "decay_scaling must be one of"),
    (SGD, {"lr": 0.1, "momentum": 0.0, "nesterov": True}, "nesterov=True requires"),
    (SGDW, {"lr": 0.0}, "lr must be > 0 when a parameter group is created"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD_INPUTS)
def test_bad_input_raises_value_error_naming_it(cls, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(_params(), **kwargs)


def test_bad_value_in_added_param_group_is_rejected():
    opt = AdamW(_params(), lr=1e-3)
    with pytest.raises(ValueError, match=re.escape("eps must be finite and >= 0")):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "eps": -1})


@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_torch_sized_decay_in_paper_units_warns_with_consequence(cls):
    with pytest.warns(WeightDecayUnitsWarning) as record:
        cls(_params(), lr=0.1, weight_decay=0.01)
    message = str(record[0].message)
    assert record[0].filename == __file__, "the warning must name the user's line"
    assert "removes 1.00% of every decayed weight per step" in message
    assert "half-life 69 steps" in message
    assert "decay_scaling='lr'" in message


@pytest.mark.parametrize("cls", [AdamW, SGDW])
def test_torch_sized_decay_in_torch_units_does_not_warn(cls):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(_params(), lr=0.1, weight_decay=0.01, decay_scaling="lr")


def test_unit_warning_from_add_param_group_names_the_callers_line():
    opt = AdamW(_params(), lr=1e-3)
    with pytest.warns(WeightDecayUnitsWarning) as record:
        opt.add_param_group(
            {"params": [torch.nn.Parameter(torch.ones(1))], "weight_decay": 0.05}
        )
    assert record[0].filename == __file__
