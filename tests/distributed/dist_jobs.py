"""What the distributed tests run: a tiny model, fixed batches, the jobs.

Every job trains the same tiny MLP on the same global batches, split evenly
over the ranks, for each optimizer configuration in ``SPECS``, and returns
the full parameters, so the tests can compare ranks with each other and
with ``reference_params``, the single-process run on the whole batches.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from dist_harness import WeightsOnlyLoadPlanner, listening_addresses
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

import weightdecay
from weightdecay import _kernels, _update

with warnings.catch_warnings():
    # torch.distributed.optim compiles its functional optimizers with
    # TorchScript on import, which torch deprecates; nothing here uses them.
    warnings.filterwarnings(
        "ignore",
        message=r".*torch\.jit\.\w+. is deprecated",
        category=DeprecationWarning,
    )
    from torch.distributed.optim import ZeroRedundancyOptimizer
from weightdecay.schedules import WarmRestarts

GLOBAL_BATCH = 8
STEPS = 6
RESUME_AT = 3
FEATURES, HIDDEN, CLASSES = 6, 8, 3
# Two epochs of three batches: WarmRestarts with T_0 = 1/3 epoch and
# T_mult = 2 restarts after steps 1, 3 (and 7), renewing the decay each time.
STEPS_PER_EPOCH = 3
DATASET_SIZE = GLOBAL_BATCH * STEPS_PER_EPOCH
WEIGHT_DECAY_NORM = 0.05


def _decayed(step: int) -> float:
    return 1.0 / (1.0 + 0.5 * step)


# name -> (optimizer class, keyword arguments, schedule)
SPECS: dict[str, tuple[str, dict[str, Any], str]] = {
    "adamw": ("AdamW", dict(lr=1e-2, weight_decay=5e-3), "lambda"),
    "adamw_foreach": (
        "AdamW",
        dict(lr=1e-2, weight_decay=5e-3, foreach=True),
        "lambda",
    ),
    "adamw_loop": ("AdamW", dict(lr=1e-2, weight_decay=5e-3, foreach=False), "lambda"),
    "adamw_amsgrad": (
        "AdamW",
        dict(lr=1e-2, weight_decay=5e-3, amsgrad=True),
        "lambda",
    ),
    "adamw_torch_units": (
        "AdamW",
        dict(lr=1e-2, weight_decay=0.5, decay_scaling="lr"),
        "lambda",
    ),
    "adamw_constant_decay": (
        "AdamW",
        dict(lr=1e-2, weight_decay=5e-3, decay_scaling="none"),
        "lambda",
    ),
    "adam_l2": ("Adam", dict(lr=1e-2, weight_decay=1e-2), "lambda"),
    "sgdw": ("SGDW", dict(lr=0.1, weight_decay=5e-3, nesterov=True), "lambda"),
    "sgd_l2": ("SGD", dict(lr=0.1, weight_decay=1e-2), "lambda"),
    "adamwr_normalized": ("AdamW", dict(lr=1e-2), "restarts"),
    "sgdwr_normalized": ("SGDW", dict(lr=0.1), "restarts"),
}


@contextlib.contextmanager
def recording_paths() -> Iterator[set[str]]:
    """Collect the names of the step implementations called inside.

    Those are the functions named ``adam_*`` and ``sgd_*`` in ``_update``
    (per-tensor loop, multi-tensor, PyTorch's fused kernels) and in
    ``_kernels`` (the numba kernels, called directly or through a group's
    ``Plan``, recorded as ``adam_kernel_plan``/``sgd_kernel_plan``): it tells
    which path each optimizer chose without depending on how it chooses.
    """
    called: set[str] = set()
    originals = [
        (module, name, name, function)
        for module in (_update, _kernels)
        for name, function in vars(module).items()
        if callable(function) and name.startswith(("adam_", "sgd_"))
    ]
    originals += [
        (_kernels.Plan, name, f"{name}_kernel_plan", getattr(_kernels.Plan, name))
        for name in ("adam", "sgd")
    ]

    def recorder(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            called.add(name)
            return function(*args, **kwargs)

        return record

    for owner, name, label, function in originals:
        setattr(owner, name, recorder(label, function))
    try:
        yield called
    finally:
        for owner, name, _, function in originals:
            setattr(owner, name, function)


def make_model(seed: int = 0) -> nn.Module:
    """The tiny MLP every job trains, initialized from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, CLASSES),
    )


def global_batches(steps: int = STEPS, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    """``steps`` global batches of ``GLOBAL_BATCH`` examples."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(GLOBAL_BATCH, FEATURES, generator=generator),
            torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=generator),
        )
        for _ in range(steps)
    ]


def make_optimizer(
    name: str, model: nn.Module, *, zero: bool | dict[str, Any] = False
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """The optimizer and per-batch scheduler of ``SPECS[name]`` for ``model``.

    With ``zero`` the optimizer class is wrapped in ZeroRedundancyOptimizer
    (given a dict, with those options).
    The normalized specs decay matrices only, with ``weight_decay_norm`` set
    by WarmRestarts from the global batch size.
    """
    class_name, kwargs, schedule = SPECS[name]
    optimizer_class = getattr(weightdecay, class_name)
    if schedule == "restarts":
        params: Any = weightdecay.param_groups(
            model, 0.0, weight_decay_norm=WEIGHT_DECAY_NORM
        )
    else:
        params = list(model.parameters())
    if zero:
        options = zero if isinstance(zero, dict) else {}
        optimizer: torch.optim.Optimizer = ZeroRedundancyOptimizer(
            params, optimizer_class=optimizer_class, **options, **kwargs
        )
    else:
        optimizer = optimizer_class(params, **kwargs)
    if schedule == "restarts":
        scheduler: LRScheduler = WarmRestarts(
            optimizer,
            T_0=1 / 3,
            T_mult=2,
            steps_per_epoch=STEPS_PER_EPOCH,
            batch_size=GLOBAL_BATCH,
            dataset_size=DATASET_SIZE,
        )
    else:
        scheduler = LambdaLR(optimizer, _decayed)
    return optimizer, scheduler


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    batches: list[tuple[Tensor, Tensor]],
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """One step per global batch on this rank's contiguous share of it."""
    share = GLOBAL_BATCH // world_size
    for x, y in batches:
        x, y = (
            x[rank * share : (rank + 1) * share],
            y[rank * share : (rank + 1) * share],
        )
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def full_params(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter, gathered whole (DTensors included), detached copies."""
    module = model.module if isinstance(model, DDP) else model
    out = {}
    for name, value in module.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[name] = value.detach().clone()
    return out


def reference_params(name: str, steps: int = STEPS) -> dict[str, Tensor]:
    """The single-process run of ``SPECS[name]`` on the whole global batches."""
    model = make_model()
    optimizer, scheduler = make_optimizer(name, model)
    train(model, optimizer, scheduler, global_batches(steps))
    return full_params(model)


def _steps(optimizer: torch.optim.Optimizer) -> list[Any]:
    inner = (
        optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    )
    return [state["step"] for state in inner.state.values()]


def _atomic_dcp_save(state: dict[str, Any], directory: Path) -> None:
    """Save with DCP into a sibling folder, then rename it into place."""
    partial = directory.with_name(directory.name + ".partial")
    dcp.save(state, checkpoint_id=partial)
    dist.barrier()
    if dist.get_rank() == 0:
        os.replace(partial, directory)
    dist.barrier()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


Build = Callable[[int], tuple[nn.Module, torch.optim.Optimizer, LRScheduler]]


def _resume_dcp(
    build: Build, directory: Path, rank: int, world_size: int
) -> dict[str, Any]:
    """Train, save with DCP at ``RESUME_AT``, resume a fresh copy, compare.

    The fresh model starts from other weights, so only a correct load can
    make the two runs agree.
    """
    batches = global_batches()
    model, optimizer, scheduler = build(0)
    train(model, optimizer, scheduler, batches[:RESUME_AT], rank, world_size)
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {
        "model": model_state,
        "optim": optim_state,
        "sched": scheduler.state_dict(),
    }
    _atomic_dcp_save(state, directory)
    train(model, optimizer, scheduler, batches[RESUME_AT:], rank, world_size)

    fresh, fresh_optimizer, fresh_scheduler = build(123)
    model_state, optim_state = get_state_dict(fresh, fresh_optimizer)
    loaded = {
        "model": model_state,
        "optim": optim_state,
        "sched": fresh_scheduler.state_dict(),
    }
    dcp.load(loaded, checkpoint_id=directory, planner=WeightsOnlyLoadPlanner())
    set_state_dict(
        fresh,
        fresh_optimizer,
        model_state_dict=loaded["model"],
        optim_state_dict=loaded["optim"],
    )
    fresh_scheduler.load_state_dict(loaded["sched"])
    steps = _steps(fresh_optimizer)
    train(
        fresh, fresh_optimizer, fresh_scheduler, batches[RESUME_AT:], rank, world_size
    )
    return {
        "straight": full_params(model),
        "resumed": full_params(fresh),
        "step_types": sorted({type(s).__name__ for s in steps}),
        "steps": steps,
    }


# --- DistributedDataParallel ------------------------------------------------


def _ddp_build(name: str) -> Build:
    def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, LRScheduler]:
        # DDP broadcasts rank 0's weights; every rank builds the same ones.
        model = make_model(seed)
        optimizer, scheduler = make_optimizer(name, model)
        return DDP(model, gradient_as_bucket_view=True), optimizer, scheduler

    return build


def ddp_job(rank: int, world_size: int, workdir: Path) -> dict[str, Any]:
    """Every spec under DDP, and a DCP save/resume for two of them."""
    batches = global_batches()
    params, paths = {}, {}
    for name in SPECS:
        model, optimizer, scheduler = _ddp_build(name)(0)
        with recording_paths() as called:
            train(model, optimizer, scheduler, batches, rank, world_size)
        params[name], paths[name] = full_params(model), sorted(called)
    resume = {
        name: _resume_dcp(_ddp_build(name), workdir / f"ddp-{name}", rank, world_size)
        for name in ("adamw", "sgdw", "adamwr_normalized")
    }
    return {
        "params": params,
        "paths": paths,
        "resume": resume,
        "listening": listening_addresses(os.getpid()),
    }


# --- ZeroRedundancyOptimizer -------------------------------------------------

ZERO_SPECS = ("adamw", "adamw_loop", "adam_l2", "sgdw", "adamwr_normalized")


def _zero_build(
    name: str, seed: int, **zero_options: Any
) -> tuple[nn.Module, ZeroRedundancyOptimizer, LRScheduler]:
    model = make_model(seed)
    optimizer, scheduler = make_optimizer(name, model, zero=zero_options or True)
    assert isinstance(optimizer, ZeroRedundancyOptimizer)
    return DDP(model), optimizer, scheduler


def _resume_zero(name: str, path: Path, rank: int, world_size: int) -> dict[str, Any]:
    """Consolidate ZeRO's state on rank 0, save it, load it on a fresh copy."""
    batches = global_batches()
    model, optimizer, scheduler = _zero_build(name, 0)
    train(model, optimizer, scheduler, batches[:RESUME_AT], rank, world_size)
    optimizer.consolidate_state_dict(to=0)
    if rank == 0:
        state = {
            "model": model.module.state_dict(),
            "optim": optimizer.state_dict(),
            "sched": scheduler.state_dict(),
        }
        _atomic_torch_save(state, path)
    dist.barrier()
    train(model, optimizer, scheduler, batches[RESUME_AT:], rank, world_size)

    fresh, fresh_optimizer, fresh_scheduler = _zero_build(name, 123)
    state = torch.load(path, weights_only=True)
    fresh.module.load_state_dict(state["model"])
    fresh_optimizer.load_state_dict(state["optim"])
    fresh_scheduler.load_state_dict(state["sched"])
    steps = _steps(fresh_optimizer)
    train(
        fresh, fresh_optimizer, fresh_scheduler, batches[RESUME_AT:], rank, world_size
    )
    return {
        "straight": full_params(model),
        "resumed": full_params(fresh),
        "step_types": sorted({type(s).__name__ for s in steps}),
        "steps": steps,
    }


def zero_job(rank: int, world_size: int, workdir: Path) -> dict[str, Any]:
    """ZeRO-sharded optimizer state under DDP, and a consolidated resume."""
    batches = global_batches()
    params, local_states = {}, {}
    for name in ZERO_SPECS:
        model, optimizer, scheduler = _zero_build(name, 0)
        train(model, optimizer, scheduler, batches, rank, world_size)
        params[name] = full_params(model)
        local_states[name] = len(optimizer.optim.state)
    # ZeRO can keep each rank's parameters as views into one flat bucket.
    model, optimizer, scheduler = _zero_build(
        "adamw", 0, parameters_as_bucket_view=True
    )
    train(model, optimizer, scheduler, batches, rank, world_size)
    bucket_view = full_params(model)
    resume = {
        name: _resume_zero(name, workdir / f"zero-{name}.pt", rank, world_size)
        for name in ("adamw", "adamwr_normalized")
    }
    return {
        "params": params,
        "bucket_view": bucket_view,
        "local_states": local_states,
        "total_params": len(list(make_model().parameters())),
        "resume": resume,
    }


# --- FSDP2 (fully_shard, DTensor parameters) ---------------------------------

FSDP_SPECS = (
    "adamw",
    "adamw_loop",
    "adamw_constant_decay",
    "adam_l2",
    "sgdw",
    "adamwr_normalized",
)


def _shard(model: nn.Module) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp_build(name: str, **overrides: Any) -> Build:
    def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, LRScheduler]:
        model = _shard(make_model(seed))
        optimizer, scheduler = make_optimizer(name, model)
        for group in optimizer.param_groups:
            group.update(overrides)
        return model, optimizer, scheduler

    return build


def _sharded(model: nn.Module) -> bool:
    return all(isinstance(p, DTensor) for p in model.parameters())


def _fused_error() -> str:
    model = _shard(make_model())
    optimizer = weightdecay.AdamW(model.parameters(), lr=1e-2, fused=True)
    model(global_batches(1)[0][0][:1]).sum().backward()
    try:
        optimizer.step()
    except RuntimeError as error:
        return str(error)
    return ""


def _load_order(
    rank: int, world_size: int, workdir: Path, optimizer_first: bool
) -> dict[str, Any]:
    """Weights after loading full state dicts into a never-stepped optimizer.

    With no optimizer state yet, ``set_optimizer_state_dict`` first steps the
    optimizer once with zero gradients and ``lr = 0``; a constant per-step
    decay (``decay_scaling="none"``) still decays the weights in that step,
    so loading the model before the optimizer leaves them decayed.
    """
    options = StateDictOptions(full_state_dict=True)
    build = _fsdp_build("adamw_constant_decay")
    model, optimizer, scheduler = build(0)
    train(model, optimizer, scheduler, global_batches(1), rank, world_size)
    state = {
        "model": get_model_state_dict(model, options=options),
        "optim": get_optimizer_state_dict(model, optimizer, options=options),
    }
    path = workdir / f"full-state-{optimizer_first}.pt"
    if rank == 0:
        _atomic_torch_save(state, path)
    dist.barrier()

    fresh, fresh_optimizer, _ = build(123)
    state = torch.load(path, weights_only=True)
    if optimizer_first:
        set_optimizer_state_dict(
            fresh, fresh_optimizer, state["optim"], options=options
        )
        set_model_state_dict(fresh, state["model"], options=options)
    else:
        set_model_state_dict(fresh, state["model"], options=options)
        set_optimizer_state_dict(
            fresh, fresh_optimizer, state["optim"], options=options
        )
    return {"saved": full_params(model), "loaded": full_params(fresh)}


def fsdp_job(rank: int, world_size: int, workdir: Path) -> dict[str, Any]:
    """FSDP2 with DTensor parameters: specs, DCP resume, fused fallback."""
    batches = global_batches()
    params, paths, sharded = {}, {}, {}
    for name in FSDP_SPECS:
        model, optimizer, scheduler = _fsdp_build(name)(0)
        sharded[name] = _sharded(model)
        with recording_paths() as called:
            train(model, optimizer, scheduler, batches, rank, world_size)
        params[name], paths[name] = full_params(model), sorted(called)
    resume = {
        name: _resume_dcp(_fsdp_build(name), workdir / f"fsdp-{name}", rank, world_size)
        for name in ("adamw", "sgdw", "adamwr_normalized")
    }
    return {
        "params": params,
        "paths": paths,
        "sharded": sharded,
        "resume": resume,
        "fused_error": _fused_error(),
        "load_model_first": _load_order(rank, world_size, workdir, False),
        "load_optimizer_first": _load_order(rank, world_size, workdir, True),
    }
