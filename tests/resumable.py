"""A small training loop that can stop, checkpoint and resume (for the tests)."""

from __future__ import annotations

import copy

import torch


def train_resumable(opt_factory, steps, start_state=None, seed=0):
    """Train a tiny linear network under LambdaLR for ``steps`` batches.

    Starts from ``start_state`` (a previous call's returned state) when given;
    ``seed`` only seeds the initial weights, which a resumed run overwrites.
    Returns the model and a deep-copied state to resume from.
    """
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Linear(8, 2))
    opt = opt_factory(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.05 * t))
    batches = torch.randn(2 * steps, 16, 5, generator=torch.Generator().manual_seed(1))
    first = 0
    if start_state is not None:
        model.load_state_dict(start_state["model"])
        opt.load_state_dict(start_state["opt"])
        sched.load_state_dict(start_state["sched"])
        first = start_state["k"]
    for i in range(first, first + steps):
        loss = model(batches[i]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    state = {
        "model": copy.deepcopy(model.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "sched": sched.state_dict(),
        "k": first + steps,
    }
    return model, state
