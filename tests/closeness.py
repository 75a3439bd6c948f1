"""Scale-relative comparison of two optimizer runs, shared by the tests.

``max |a - b| <= tol * max |b|`` per tensor; state entries that are not
tensors (the step count) must be equal. :func:`assert_same_state` is the
exact form, for round trips that must be bit-identical.
"""

from __future__ import annotations

import torch


def assert_near(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    scale = expected.abs().max().item() or 1.0
    err = (actual - expected).abs().max().item() / scale
    assert err <= tol, f"scale-relative error {err:.3e} > {tol:.0e}"


def assert_same_run(opt_a, params_a, opt_b, params_b, tol: float) -> None:
    """Parameters and every state entry of two runs agree within ``tol``."""
    for pa, pb in zip(params_a, params_b, strict=True):
        assert_near(pa.detach(), pb.detach(), tol)
        state_a, state_b = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert state_a.keys() == state_b.keys()
        for key, value in state_a.items():
            if isinstance(value, torch.Tensor):
                assert_near(value, state_b[key], tol)
            else:
                assert value == state_b[key], key


def assert_same_state(actual: dict, expected: dict) -> None:
    """Every entry of ``actual`` equals ``expected``'s, tensors bit for bit."""
    for key, value in actual.items():
        other = expected[key]
        same = torch.equal(value, other) if torch.is_tensor(value) else value == other
        assert same, key
