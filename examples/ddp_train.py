"""Data-parallel training of the reproduction's MLP with AdamW on CPU.

Run on one machine with two processes (gloo backend)::

    torchrun --nproc_per_node=2 examples/ddp_train.py [--epochs 5]

Every process holds the whole model (784-128-BN-128-BN-10) and trains on
its share of each global batch; DistributedDataParallel averages the
gradients, so every rank applies the same AdamW step. The schedule is one
cosine run (``WarmRestarts`` with ``T_0 = epochs``) stepped per batch, and
the decoupled decay is normalized, ``lambda = lambda_norm * sqrt(b / (B T))``
with ``b`` the *global* batch size: one step consumes the global batch, so
the same ``lambda_norm`` means the same per-epoch decay on any number of
processes. BatchNorm normalizes each rank's share with its own statistics
(DDP copies rank 0's running statistics to the others every step).

With ``--checkpoint FILE`` the run saves model, optimizer and scheduler at
the end of every epoch (rank 0 writes a temporary file and renames it into
place) and, if the file exists, resumes from it (read with
``weights_only=True``). Rank 0 prints one line per epoch.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from weightdecay import AdamW, param_groups
from weightdecay.experiments.data import find_data, load_data, make_split
from weightdecay.experiments.models import make_model
from weightdecay.schedules import WarmRestarts

EVAL_BATCH = 5000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--batch-size", type=int, default=128, help="global batch size (all ranks)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's alpha")
    parser.add_argument(
        "--weight-decay-norm",
        type=float,
        default=0.05,
        help="normalized decay lambda_norm of the weight matrices",
    )
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--val-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="folder of the IDX files")
    parser.add_argument("--checkpoint", type=Path, default=None, help="resume file")
    parser.add_argument(
        "--init-method",
        default="env://",
        help="where the ranks meet: env:// (torchrun's store, the default) or "
        "file:///PATH (a file on storage all ranks share; no network port)",
    )
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def init_distributed(init_method: str) -> tuple[int, int]:
    """Join the process group of the ranks torchrun describes in the environment."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit("run me with torchrun, e.g. torchrun --nproc_per_node=2 ...")
    if os.environ.get("LOCAL_WORLD_SIZE") == os.environ["WORLD_SIZE"]:
        # All ranks on this machine: keep gloo's sockets on loopback.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` (in eval mode) misclassifies."""
    model.eval()
    wrong = sum(
        int((model(x[i : i + EVAL_BATCH]).argmax(1) != y[i : i + EVAL_BATCH]).sum())
        for i in range(0, len(x), EVAL_BATCH)
    )
    model.train()
    return wrong / len(x)


def save_atomically(state: dict, path: Path) -> None:
    """Write ``state`` next to ``path``, then rename it into place."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def main() -> None:
    args = parse_args()
    rank, world_size = init_distributed(args.init_method)
    if args.batch_size % world_size:
        raise SystemExit(
            f"--batch-size {args.batch_size} must be a multiple of the "
            f"{world_size} processes"
        )
    share = args.batch_size // world_size

    # Data: every rank reads the same split; batches are drawn by index.
    source = find_data(args.data_dir)
    split = make_split(*load_data(source), args.train_size, args.val_size)
    steps_per_epoch = len(split.train_x) // args.batch_size

    # Model, AdamW on decayed matrices and undecayed biases and BN weights.
    torch.manual_seed(args.seed)
    model = make_model("mlp_bn")
    groups = param_groups(model, 0.0, weight_decay_norm=args.weight_decay_norm)
    optimizer = AdamW(groups, lr=args.lr)
    scheduler = WarmRestarts(
        optimizer,
        T_0=args.epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=args.batch_size,
        dataset_size=steps_per_epoch * args.batch_size,
    )
    start_epoch = 0
    if args.checkpoint is not None and args.checkpoint.exists():
        state = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"]
    ddp = DDP(model)

    if rank == 0:
        print(
            f"{world_size} processes, data {source.source} ({source.origin}), "
            f"{len(split.train_x)} train / {len(split.val_x)} val / "
            f"{len(split.test_x)} test, global batch {args.batch_size} "
            f"({share} per rank), {steps_per_epoch} steps per epoch",
            flush=True,
        )
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()

        # The same permutation on every rank; rank r takes its slice.
        generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(split.train_x), generator=generator)
        loss_sum = torch.zeros(())
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            mine = batch[rank * share : (rank + 1) * share]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(split.train_x[mine]), split.train_y[mine])
            loss.backward()
            optimizer.step()
            # The rate and decay this step used, before the scheduler moves on.
            lr, decay = (optimizer.param_groups[0][k] for k in ("lr", "weight_decay"))
            scheduler.step()
            loss_sum += loss.detach()

        # The mean training loss over all ranks; errors of rank 0's replica.
        dist.all_reduce(loss_sum)
        train_loss = loss_sum.item() / (steps_per_epoch * world_size)
        if not math.isfinite(train_loss):
            raise SystemExit(f"epoch {epoch + 1}: training loss {train_loss}")
        if args.checkpoint is not None and rank == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
            }
            save_atomically(state, args.checkpoint)
        if rank == 0:
            val_error = error_rate(model, split.val_x, split.val_y)
            test_error = error_rate(model, split.test_x, split.test_y)
            print(
                f"epoch {epoch + 1:3d}/{args.epochs}  train loss {train_loss:.4f}  "
                f"val error {val_error:.2%}  test error {test_error:.2%}  "
                f"last lr {lr:.2e}  decay {decay:.2e}  "
                f"{time.perf_counter() - started:.1f}s",
                flush=True,
            )
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
