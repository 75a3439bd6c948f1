"""The command line: flag errors, a tiny sweep end to end, kill and resume."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weightdecay import cli
from weightdecay.cli import main
from weightdecay.experiments.data import EMBEDDED_DIR
from weightdecay.experiments.store import DB_NAME, Store
from weightdecay.experiments.train import config_key

TINY = [
    "--data-dir",
    str(EMBEDDED_DIR),
    "--train-size",
    "200",
    "--val-size",
    "100",
    "--batch-size",
    "50",
    "--epochs",
    "1",
]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["reproduce", "--workers", "0"],
            "--workers: expected an integer >= 1, got '0'",
        ),
        (["reproduce", "--profile", "huge"], "--profile: expected one of .*'huge'"),
        (["sweep", "--lrs", "1e-3,abc"], "--lrs: expected a number, got 'abc'"),
        (["sweep", "--optimizers", "Lion"], "--optimizers: expected one of"),
        (["reproduce", "--grid-lrs", "SGD=-3:-8"], "--grid-lrs: expected LO <= HI"),
        (["reproduce", "--regime", "long=x"], "--regime: expected NAME=EPOCHSxTRAIN"),
        (["sweep", "--weight-decays", "-1"], "--weight-decays: expected a finite"),
    ],
)
def test_bad_flags_name_the_flag_and_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_named_data_dir_without_data_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match=r"--data-dir=.*not falling back"):
        main(["sweep", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])


def test_sizes_beyond_the_data_are_an_error(tmp_path):
    argv = ["sweep", "--out", str(tmp_path), *TINY, "--train-size", "9950"]
    with pytest.raises(SystemExit, match=r"train size 9950 \+ --val-size 100 exceeds"):
        main(argv)


def test_tiny_sweep_end_to_end_then_rebuild_the_report(tmp_path):
    out = tmp_path / "out"
    argv = ["sweep", "--out", str(out), "--executor", "inline", *TINY]
    argv += ["--optimizers", "AdamW,SGD", "--lrs", "0.001,0.01", "--weight-decays"]
    argv += ["0,0.001", "--seeds", "0"]
    assert main(argv) == 0

    with Store(out) as store:
        records = store.records()
        meta = store.meta()
    assert len(records) == 8
    cells = {
        (r["config"]["optimizer"], r["config"]["lr"], r["config"]["weight_decay"])
        for r in records
    }
    assert len(cells) == 8
    for record in records:
        assert record["status"] == "ok"
        assert record["key"] == config_key(record["config"])
        assert record["config"]["train_size"] == 200
        assert record["config"]["data"] == "embedded"
        assert 0.0 <= record["final"]["test_error"] <= 1.0
        assert record["curves"]["epoch"] == [1]
    assert meta["data"]["test_size"] == 2000
    assert meta["settings"]["lrs"] == [0.001, 0.01]
    assert meta["command"].startswith("weightdecay sweep --out")

    # Rerunning the same command computes nothing new.
    assert main([*argv, "--no-report"]) == 0
    with Store(out) as store:
        assert [r["wall_s"] for r in store.records()] == [r["wall_s"] for r in records]

    try:
        import weightdecay.experiments.report  # noqa: F401
    except ImportError:
        return
    report = out / "report.md"
    assert report.is_file() and (out / "report.html").is_file()
    report.unlink()
    assert main(["report", str(out)]) == 0
    assert report.is_file()


def test_report_of_a_folder_without_database_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match=f"no {DB_NAME}"):
        main(["report", str(tmp_path)])


def test_sweep_killed_mid_way_resumes_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "weightdecay", "sweep", "--out", str(out)]
    argv += [*TINY, "--workers", "2", "--no-report", "--optimizers", "AdamW"]
    argv += ["--lrs", "0.001,0.002,0.004", "--weight-decays", "0,0.001,0.01"]
    argv += ["--seeds", "0,1"]
    db = out / DB_NAME

    def rows():
        if not db.exists():
            return []
        conn = sqlite3.connect(db, timeout=30)
        try:
            return conn.execute("SELECT key, created FROM runs").fetchall()
        except sqlite3.OperationalError:  # the table is not created yet
            return []
        finally:
            conn.close()

    # Start the sweep in its own process group and kill all of it (SIGKILL)
    # once a few runs are stored.
    proc = subprocess.Popen(
        argv,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len(rows()) < 3 and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    before = dict(rows())
    assert 3 <= len(before) < 18, stderr[-2000:]

    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = rows()
    keys = [key for key, _ in after]
    assert len(keys) == len(set(keys)) == 18
    # Runs finished before the kill were skipped, not recomputed.
    assert all(dict(after)[key] == created for key, created in before.items())
    assert f"{len(before)} already stored" in done.stderr
    with Store(out) as store:
        statuses = {r["status"] for r in store.records()}
    assert statuses == {"ok"}


def test_embedded_flag_uses_the_shipped_subset_and_excludes_data_dir(tmp_path):
    argv = ["sweep", "--out", str(tmp_path), "--embedded", "--data-dir", "x"]
    with pytest.raises(SystemExit, match="--embedded and --data-dir exclude"):
        main(argv)


def test_embedded_flag_is_named_as_the_data_origin(tmp_path, capsys):
    argv = ["sweep", "--out", str(tmp_path), "--embedded", "--train-size", "9950"]
    with pytest.raises(SystemExit, match="exceeds"):
        main(argv)
    assert "data: embedded (--embedded: " in capsys.readouterr().err


def _git(*args: str) -> str:
    package = Path(cli.__file__).parent
    return subprocess.run(
        ["git", "-C", str(package), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_report_names_the_commit_its_code_came_from():
    """Run from a git checkout, the versions carry the checkout's commit, as
    git itself names it, marked where the package's files differ from it."""
    try:
        _git("ls-files", "--error-unmatch", "cli.py")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the package does not run from a git checkout here")
    head = _git("rev-parse", "HEAD")
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    commit = cli._versions()["weightdecay commit"]
    assert commit == head[:12] + ("+changes" if changed else "")


def test_code_outside_a_git_checkout_names_no_commit(tmp_path, monkeypatch):
    """An installed copy (here: the module's path moved to an empty folder,
    or git missing) reports its version only, never a commit of another
    repository."""
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "cli.py"))
    assert cli._source_commit() is None
    assert "weightdecay commit" not in cli._versions()

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.undo()
    monkeypatch.setattr(cli.subprocess, "run", no_git)
    assert cli._source_commit() is None


def test_a_copy_inside_another_repository_names_no_commit(tmp_path, monkeypatch):
    """A package file that the surrounding repository does not track (a
    virtual environment inside a user's project) is not that commit."""
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    (tmp_path / "cli.py").write_text("")
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "cli.py"))
    assert cli._source_commit() is None
