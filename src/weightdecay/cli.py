"""The ``weightdecay`` command line (also ``python -m weightdecay``).

    weightdecay reproduce [--profile quick|default] [--out DIR] [--data-dir DIR]
                          [--workers N] [--executor local] [study flags...]
    weightdecay sweep --optimizers AdamW,Adam --lrs 1e-3,2e-3 \\
                      --weight-decays 0,1e-4 --epochs 5 [...]
    weightdecay report DIR

Finished runs are stored in ``DIR/runs.sqlite``; rerunning the same command
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

logger = logging.getLogger("weightdecay.cli")

DEFAULT_OUT = Path("runs/reproduce")


# ---------------------------------------------------------------- flag types


def _fail(flag: str, value: str, why: str) -> argparse.ArgumentTypeError:
    # argparse prefixes "argument FLAG: " where it knows the flag.
    del flag
    return argparse.ArgumentTypeError(f"{why}, got {value!r}")


def _positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _fail(flag, text, "expected an integer") from None
        if value < 1:
            raise _fail(flag, text, "expected an integer >= 1")
        return value

    return parse


def _float(
    flag: str, *, minimum: float = 0.0, strict: bool = False
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _fail(flag, text, "expected a number") from None
        bad = value <= minimum if strict else value < minimum
        if bad or value != value or value in (float("inf"), float("-inf")):
            relation = ">" if strict else ">="
            raise _fail(flag, text, f"expected a finite number {relation} {minimum}")
        return value

    return parse


def _list(flag: str, item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise _fail(flag, text, "expected a comma-separated list")
        return [item(part) for part in parts]

    return parse


def _choice(flag: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise _fail(flag, text, f"expected one of {', '.join(choices)}")
        return text

    return parse


def _exp_range(flag: str) -> Callable[[str], list[int]]:
    """``LO:HI`` exponents of two, LO <= HI."""

    def parse(text: str) -> list[int]:
        try:
            lo, hi = (int(x) for x in text.split(":"))
        except ValueError:
            raise _fail(flag, text, "expected LO:HI (integer exponents of 2)") from None
        if lo > hi:
            raise _fail(flag, text, "expected LO <= HI")
        return [lo, hi]

    return parse


def _per_optimizer(flag: str) -> Callable[[str], tuple[str, list[int]]]:
    """``OPT=LO:HI``, e.g. ``SGD=-8:-3``."""
    from weightdecay.experiments.studies import GRID_OPTIMIZERS

    def parse(text: str) -> tuple[str, list[int]]:
        name, sep, rest = text.partition("=")
        if not sep or name not in GRID_OPTIMIZERS:
            raise _fail(
                flag,
                text,
                f"expected OPT=LO:HI with OPT in {', '.join(GRID_OPTIMIZERS)}",
            )
        return name, _exp_range(flag)(rest)

    return parse


def _regime(text: str) -> tuple[str, list[int]]:
    """``NAME=EPOCHSxTRAIN_SIZE``, e.g. ``long=16x5000``."""
    name, sep, rest = text.partition("=")
    try:
        epochs, size = (int(x) for x in rest.lower().split("x"))
    except ValueError:
        epochs = size = 0
    if not sep or not name or epochs < 1 or size < 1:
        raise _fail(
            "--regime", text, "expected NAME=EPOCHSxTRAIN_SIZE, e.g. long=16x5000"
        )
    return name, [epochs, size]


# ---------------------------------------------------------------- parser


def _add_common(parser: argparse.ArgumentParser, *, default_out: Path) -> None:
    from weightdecay.experiments.models import MODELS
    from weightdecay.experiments.sweep import EXECUTORS

    parser.add_argument(
        "--out",
        type=Path,
        default=default_out,
        help="output folder (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        help="folder with the four Fashion-MNIST IDX files (default: search, "
        "then the embedded subset)",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="use the subset shipped in the package, even if the full data set "
        "is installed",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int("--workers"),
        default=os.cpu_count() or 1,
        help="worker processes (default: CPU count, %(default)s)",
    )
    parser.add_argument(
        "--executor",
        type=_choice("--executor", EXECUTORS),
        default="local",
        help="local: process pool; inline: this process; ray: Ray tasks, on a "
        "local instance or the cluster of --ray-address (default: %(default)s)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="address of an existing Ray cluster for --executor ray (default: "
        "$RAY_ADDRESS, else a local instance on loopback)",
    )
    parser.add_argument("--model", type=_choice("--model", MODELS), help="model")
    parser.add_argument(
        "--val-size", type=_positive_int("--val-size"), help="validation images"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int("--batch-size"), help="batch size"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="run the sweep, write no report"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _build_parser() -> argparse.ArgumentParser:
    from weightdecay.experiments.studies import PROFILES, STUDIES
    from weightdecay.experiments.train import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="weightdecay",
        description="Decoupled weight decay: reproduce the paper's study on "
        "Fashion-MNIST, run your own grid, rebuild a report.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    rep = commands.add_parser(
        "reproduce", help="run the four studies and write the report"
    )
    rep.add_argument(
        "--profile",
        type=_choice("--profile", tuple(PROFILES)),
        default="default",
        help="quick (minutes) or default (the reference study)",
    )
    _add_common(rep, default_out=DEFAULT_OUT)
    rep.add_argument(
        "--studies",
        type=_list("--studies", _choice("--studies", STUDIES)),
        help=f"subset of {','.join(STUDIES)}",
    )
    rep.add_argument(
        "--regime",
        dest="regimes",
        action="append",
        type=_regime,
        help="grid regime NAME=EPOCHSxTRAIN_SIZE (repeat; replaces the profile's)",
    )
    rep.add_argument(
        "--grid-lrs",
        action="append",
        type=_per_optimizer("--grid-lrs"),
        help="OPT=LO:HI: learning rates 2**LO..2**HI for OPT (repeat)",
    )
    rep.add_argument(
        "--grid-decays",
        action="append",
        type=_per_optimizer("--grid-decays"),
        help="OPT=LO:HI: weight decays 2**LO..2**HI (and 0) for OPT (repeat)",
    )
    rep.add_argument("--seed", type=int, help="seed of the grid and other studies")
    rep.add_argument(
        "--seeds-count",
        type=_positive_int("--seeds-count"),
        help="fresh seeds per best cell",
    )
    rep.add_argument(
        "--seeds-regimes",
        type=_list("--seeds-regimes", str),
        help="regimes whose best cells get fresh seeds",
    )
    rep.add_argument(
        "--grid-optimizers",
        type=_list("--grid-optimizers", _choice("--grid-optimizers", OPTIMIZERS[:4])),
        help="optimizers of the grid study (default: SGD,SGDW,Adam,AdamW)",
    )
    rep.add_argument(
        "--grid-test-eval",
        type=_choice("--grid-test-eval", ("every", "final")),
        help="evaluate the grid's runs on the test set after every epoch or "
        "only after the last (the grid is scored on the validation set)",
    )
    rep.add_argument(
        "--budget-lr",
        type=_float("--budget-lr", strict=True),
        help="AdamW learning rate of the budget study",
    )
    rep.add_argument(
        "--budget-epochs",
        type=_list("--budget-epochs", _positive_int("--budget-epochs")),
        help="budgets in epochs, e.g. 4,8,16",
    )
    rep.add_argument(
        "--budget-decays",
        type=_exp_range("--budget-decays"),
        help="LO:HI: raw lambda 2**LO..2**HI in half-octave steps",
    )
    rep.add_argument(
        "--budget-train-size",
        type=_positive_int("--budget-train-size"),
        help="training images of the budget study",
    )
    rep.add_argument(
        "--restarts-lr",
        type=_float("--restarts-lr", strict=True),
        help="learning rate shared by AdamWR and cosine AdamW",
    )
    rep.add_argument(
        "--restarts-decay",
        type=_float("--restarts-decay"),
        help="paper lambda shared by AdamWR and cosine AdamW",
    )
    rep.add_argument(
        "--restarts-T-0",
        dest="restarts_T_0",
        type=_float("--restarts-T-0", strict=True),
        help="AdamWR's first run length in epochs",
    )
    rep.add_argument(
        "--restarts-T-mult",
        dest="restarts_T_mult",
        type=_float("--restarts-T-mult", minimum=1.0),
        help="growth factor of AdamWR's run lengths",
    )
    rep.add_argument(
        "--restarts-epochs",
        type=_positive_int("--restarts-epochs"),
        help="length of both restarts runs (T_0=1, T_mult=2: 15 ends runs at 1,3,7,15)",
    )
    rep.add_argument(
        "--restarts-train-size",
        type=_positive_int("--restarts-train-size"),
        help="training images of the restarts study",
    )

    swp = commands.add_parser("sweep", help="run your own grid and write its report")
    _add_common(swp, default_out=Path("runs/sweep"))
    swp.add_argument(
        "--optimizers",
        type=_list("--optimizers", _choice("--optimizers", OPTIMIZERS)),
        default=["AdamW"],
        help="comma-separated, from " + ",".join(OPTIMIZERS),
    )
    swp.add_argument(
        "--lrs",
        type=_list("--lrs", _float("--lrs", strict=True)),
        default=[1e-3],
        help="comma-separated learning rates",
    )
    swp.add_argument(
        "--weight-decays",
        type=_list("--weight-decays", _float("--weight-decays")),
        default=[0.0],
        help="comma-separated, in each optimizer's units (paper lambda for "
        "SGDW/AdamW/AdamWR, L2 factor for SGD/Adam)",
    )
    swp.add_argument("--epochs", type=_positive_int("--epochs"), default=5)
    swp.add_argument("--train-size", type=_positive_int("--train-size"), default=5000)
    swp.add_argument(
        "--seeds",
        type=_list("--seeds", int),
        default=[0],
        help="comma-separated seeds",
    )
    swp.add_argument(
        "--T-0", dest="T_0", type=_float("--T-0", strict=True), default=1.0
    )
    swp.add_argument(
        "--T-mult", dest="T_mult", type=_float("--T-mult", minimum=1.0), default=2.0
    )

    rpt = commands.add_parser("report", help="rebuild the report of an output folder")
    rpt.add_argument("dir", type=Path, help="output folder holding runs.sqlite")
    rpt.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


# ---------------------------------------------------------------- commands


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from weightdecay.experiments.studies import profile_settings

    settings = profile_settings(args.profile)
    plain = (
        "studies model val_size batch_size seed seeds_count seeds_regimes "
        "grid_optimizers grid_test_eval "
        "budget_lr budget_epochs budget_decays budget_train_size restarts_lr "
        "restarts_decay restarts_T_0 restarts_T_mult restarts_epochs "
        "restarts_train_size"
    ).split()
    for name in plain:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.regimes:
        settings["regimes"] = dict(args.regimes)
        settings["seeds_regimes"] = [
            r for r in settings["seeds_regimes"] if r in settings["regimes"]
        ] or list(settings["regimes"])
    for name in ("grid_lrs", "grid_decays"):
        for optimizer, bounds in getattr(args, name) or ():
            settings[name][optimizer] = bounds
    unknown = set(settings["seeds_regimes"]) - set(settings["regimes"])
    if unknown:
        raise SystemExit(
            f"weightdecay: error: --seeds-regimes: no regime {sorted(unknown)} "
            f"(regimes: {', '.join(settings['regimes'])})"
        )
    return settings


def _sweep_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "optimizers": args.optimizers,
        "lrs": args.lrs,
        "weight_decays": args.weight_decays,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "seeds": args.seeds,
        "model": args.model or "mlp_bn",
        "val_size": args.val_size or 5000,
        "batch_size": args.batch_size or 128,
        "T_0": args.T_0,
        "T_mult": args.T_mult,
    }


def _sweep_plan(settings: dict[str, Any], data: str) -> list[dict[str, Any]]:
    from weightdecay.experiments.train import make_config

    configs = []
    for optimizer in settings["optimizers"]:
        restarts = optimizer == "AdamWR"
        for lr in settings["lrs"]:
            for decay in settings["weight_decays"]:
                for seed in settings["seeds"]:
                    configs.append(
                        make_config(
                            study="grid",
                            regime="sweep",
                            optimizer=optimizer,
                            lr=lr,
                            weight_decay=decay,
                            epochs=settings["epochs"],
                            seed=seed,
                            model=settings["model"],
                            train_size=settings["train_size"],
                            val_size=settings["val_size"],
                            batch_size=settings["batch_size"],
                            T_0=settings["T_0"] if restarts else None,
                            T_mult=settings["T_mult"] if restarts else None,
                            data=data,
                        )
                    )
    return configs


def _versions() -> dict[str, str]:
    import numpy
    import torch

    import weightdecay

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "weightdecay": weightdecay.__version__,
    }
    commit = _source_commit()
    if commit is not None:
        versions["weightdecay commit"] = commit
    return versions


def _source_commit() -> str | None:
    """The git commit the package's code was loaded from, with ``+changes``
    where its files differ from that commit; None where they are not tracked
    by git (an installed wheel) or git is missing."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(here), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        # The package's own files must be tracked: a copy installed inside
        # another project's work tree is not that project's commit.
        git("ls-files", "--error-unmatch", Path(__file__).name)
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")


def _machine() -> str:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                model,
            )
    except OSError:
        pass
    parts = (platform.machine(), model, f"{os.cpu_count()} CPUs")
    return " ".join(part for part in parts if part)


def _planned_records(store, settings, kind: str, data: str) -> list[dict[str, Any]]:
    from weightdecay.experiments.studies import plan

    records = store.records()
    if kind == "sweep":
        configs = _sweep_plan(settings, data)
    else:
        configs = plan(settings, data, records)
    from weightdecay.experiments.train import config_key

    wanted = {config_key(c) for c in configs}
    chosen = [r for r in records if r["key"] in wanted]
    if len(chosen) < len(wanted):
        logger.warning(
            "%d of %d planned runs are not in the store yet",
            len(wanted) - len(chosen),
            len(wanted),
        )
    return chosen


def _write_report(store, out: Path) -> Path | None:
    meta = store.meta()
    if "settings" not in meta:
        raise SystemExit(f"weightdecay: error: {store.path}: no run was started here")
    records = _planned_records(
        store, meta["settings"], meta["kind"], meta["data"]["source"]
    )
    try:
        from weightdecay.experiments.report import write_report
    except ImportError as err:
        logger.warning("no report written: %s", err)
        return None
    report_meta = {k: meta[k] for k in meta if k != "kind"}
    path = write_report(records, out, report_meta)
    print(f"report: {path}", file=sys.stderr)
    return path


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from weightdecay.experiments.data import (
        EMBEDDED_DIR,
        DataError,
        find_data,
        load_data,
    )
    from weightdecay.experiments.store import Store
    from weightdecay.experiments.studies import plan
    from weightdecay.experiments.sweep import make_executor, run_sweep
    from weightdecay.experiments.train import run_config

    started = time.monotonic()
    if args.embedded and args.data_dir:
        raise SystemExit(
            "weightdecay: error: --embedded and --data-dir exclude each other"
        )
    try:
        source = find_data(str(EMBEDDED_DIR) if args.embedded else args.data_dir)
        arrays = load_data(source)
    except DataError as err:
        raise SystemExit(f"weightdecay: error: {err}") from None
    origin = "--embedded" if args.embedded else source.origin
    print(
        f"data: {source.source} ({origin}: {source.directory}), "
        f"{len(arrays[0])} training and {len(arrays[2])} test images",
        file=sys.stderr,
    )
    if args.command == "reproduce":
        kind, settings = args.profile, _settings_from_args(args)
        sizes = [s for _, s in settings["regimes"].values()]
        sizes += [settings["budget_train_size"], settings["restarts_train_size"]]
    else:
        kind, settings = "sweep", _sweep_settings(args)
        sizes = [settings["train_size"]]
    available = len(arrays[0])
    for size in sizes:
        if size + settings["val_size"] > available:
            raise SystemExit(
                f"weightdecay: error: train size {size} + --val-size "
                f"{settings['val_size']} exceeds the {available} training images "
                f"of the {source.source} data"
            )

    fn = functools.partial(run_config, data_dir=str(source.directory))
    from weightdecay.experiments.ray_executor import RayNotInstalledError

    try:
        executor = make_executor(args.executor, args.workers, args.ray_address)
    except RayNotInstalledError as error:
        raise SystemExit(f"weightdecay: error: --executor ray: {error}") from None
    out: Path = args.out
    with Store(out) as store:
        previous = store.meta()
        if previous.get("settings") not in (None, settings) or previous.get(
            "data", {}
        ).get("source") not in (None, source.source):
            logger.warning(
                "%s holds runs of other settings; the report shows only this "
                "command's runs",
                out,
            )
        command = "weightdecay " + shlex.join(argv)
        store.set_meta("kind", "sweep" if kind == "sweep" else "reproduce")
        store.set_meta("command", command)
        store.set_meta("profile", kind)
        store.set_meta("settings", settings)
        store.set_meta("versions", _versions())
        store.set_meta("workers", executor.workers)
        store.set_meta("machine", _machine())
        store.set_meta(
            "data",
            {
                "source": source.source,
                "path": str(source.directory),
                "train_size": sizes[0] if len(set(sizes)) == 1 else sorted(set(sizes)),
                "val_size": settings["val_size"],
                "test_size": len(arrays[2]),
            },
        )

        if kind == "sweep":
            stages = [lambda: _sweep_plan(settings, source.source)]
        else:
            stages = [
                lambda: plan(settings, source.source, stage="independent"),
                lambda: plan(settings, source.source, store.records(), stage="seeds"),
            ]
        for stage in stages:
            configs = stage()
            if not configs:
                continue
            summary = run_sweep(configs, store, executor, fn)
            print(
                f"{summary.requested} runs: {summary.skipped} already stored, "
                f"{summary.ok} ok, {summary.diverged} diverged, {summary.failed} "
                f"failed in {summary.wall_s:.0f}s",
                file=sys.stderr,
            )

        wall = time.monotonic() - started
        total = previous.get("wall_s", 0.0) + wall
        store.set_meta("wall_s", total)
        store.set_meta("last_wall_s", wall)
        print(
            f"wall time: {wall:.0f}s (all invocations: {total:.0f}s)", file=sys.stderr
        )
        if not args.no_report:
            _write_report(store, out)
    return 0


def _report(args: argparse.Namespace) -> int:
    from weightdecay.experiments.store import DB_NAME, Store

    if not (args.dir / DB_NAME).is_file():
        raise SystemExit(f"weightdecay: error: DIR: no {DB_NAME} in {args.dir}")
    with Store(args.dir) as store:
        path = _write_report(store, args.dir)
    return 0 if path is not None else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("weightdecay.decay").setLevel(logging.WARNING)
    if args.command == "report":
        return _report(args)
    try:
        return _run(args, argv)
    except KeyboardInterrupt:
        print(
            "weightdecay: interrupted; finished runs are stored, rerun the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130
