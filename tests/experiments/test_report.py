"""Tests of the written report: files, self-containment, verdicts, images."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from typing import Any

import pytest

from weightdecay.experiments import analysis as A
from weightdecay.experiments.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("heatmaps.png", "curves.png", "budget.png", "restarts.png")


def record(
    study: str,
    optimizer: str,
    lr: float,
    weight_decay: float,
    curve: list[float],
    *,
    status: str = "ok",
    **config: Any,
) -> dict[str, Any]:
    """A run record whose val/test error follow ``curve`` (loss = 3 x error)."""
    cfg: dict[str, Any] = {
        "study": study,
        "regime": "",
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "weight_decay_norm": None,
        "epochs": len(curve),
        "seed": 0,
        "model": "mlp_bn",
        "train_size": 5000,
        "val_size": 1000,
        "batch_size": 128,
        "schedule": "cosine",
        "T_0": None,
        "T_mult": None,
        "data": "embedded",
    }
    cfg.update(config)
    e = curve[-1]
    final = {
        "train_loss": 3 * e,
        "val_loss": 3 * e,
        "val_error": e,
        "test_loss": 3 * e,
        "test_error": e,
    }
    if status != "ok":
        final = {k: math.nan for k in final}
        curve = curve[:1]
    return {
        "key": f"{study}-{optimizer}-{lr}-{weight_decay}-{cfg['epochs']}-{cfg['seed']}",
        "config": cfg,
        "status": status,
        "diverged_step": 3 if status == "diverged" else None,
        "final": final,
        "curves": {
            "epoch": list(range(1, len(curve) + 1)),
            **{
                k: [3 * c for c in curve]
                for k in ("train_loss", "val_loss", "test_loss")
            },
            "val_error": list(curve),
            "test_error": list(curve),
        },
        "wall_s": 2.0,
    }


def synthetic_records() -> list[dict[str, Any]]:
    """Small runs of all four studies: (a) and (b) pass, (c) fails, (d) passes."""
    out = []
    slopes = {"SGD": -1.0, "SGDW": 0.0, "Adam": -1.0, "AdamW": 0.0}
    for opt, slope in slopes.items():
        for ll in (-9, -8, -7, -6):
            optimum = -12.3 + slope * (ll + 7)
            for dl in (None, -15, -14, -13, -12, -11, -10):
                x = -30 if dl is None else dl
                err = min(0.1 + 0.004 * (x - optimum) ** 2 + 0.001 * (ll + 7) ** 2, 0.9)
                wd = 0.0 if dl is None else 2.0**dl
                out.append(
                    record("grid", opt, 2.0**ll, wd, [err + 0.05, err], regime="short")
                )
    out.append(
        record(
            "grid", "SGD", 2.0**-3, 2.0**-10, [0.9], regime="short", status="diverged"
        )
    )
    for seed in range(3):
        out.append(
            record("seeds", "AdamW", 1e-3, 1e-4, [0.10 + 0.01 * seed], seed=seed)
        )
        out.append(record("seeds", "Adam", 1e-3, 1e-5, [0.13 + 0.01 * seed], seed=seed))
    for epochs in (2, 4, 8):
        for dl in range(-14, -7):
            # Best raw decay 2^-10.5 at every budget: normalized decay moves.
            err = 0.1 + 0.004 * (dl + 10.5) ** 2
            out.append(record("budget", "AdamW", 1e-3, 2.0**dl, [err] * epochs))
    plain = [0.30 - 0.012 * e for e in range(1, 16)]
    wr = [p - 0.02 for p in plain[:14]] + [plain[14] + 0.001]
    out.append(
        record(
            "restarts",
            "AdamWR",
            1e-3,
            1e-4,
            wr,
            schedule="warm_restarts",
            T_0=1,
            T_mult=2,
        )
    )
    out.append(record("restarts", "AdamW", 1e-3, 1e-4, plain))
    return out


META = {
    "command": "weightdecay reproduce --profile quick",
    "profile": "quick",
    "settings": {"profile": "quick", "note": "<script>alert('x')</script> & co"},
    "versions": {
        "python": "3.11",
        "torch": "2.13.0",
        "numpy": "2.4",
        "weightdecay": "0.1.0",
    },
    "wall_s": 3725.0,
    "data": {
        "source": "embedded",
        "path": "/pkg/data",
        "train_size": 5000,
        "val_size": 1000,
        "test_size": 1000,
        "license": "MIT (Zalando)",
    },
    "workers": 2,
    "machine": "test box",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    md = write_report(synthetic_records(), out, META)
    assert md == out / "report.md"
    return out


def test_report_files_exist_and_figures_are_valid_pngs(written: Path) -> None:
    from PIL import Image

    assert (written / "report.md").stat().st_size > 0
    assert (written / "report.html").stat().st_size > 0
    for name in FIGURES:
        data = (written / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(written / name) as image:
            image.verify()
        with Image.open(written / name) as image:
            width, height = image.size
        assert 100 < width <= 1200 and 50 < height <= 2000, (name, image.size)


def test_html_is_self_contained_and_escaped(written: Path) -> None:
    page = (written / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "http" not in page.lower()
    sources = re.findall(r"src=\"([^\"]*)\"", page)
    assert len(sources) == len(FIGURES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "<script>" not in page
    md = (written / "report.md").read_text(encoding="utf-8")
    assert "| note | `<script>alert('x')</script> & co` |" in md
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page


def test_claims_table_carries_the_verdicts(written: Path) -> None:
    page = (written / "report.html").read_text(encoding="utf-8")
    md = (written / "report.md").read_text(encoding="utf-8")
    table = md.split("## Claims", 1)[1].split("## How to read this", 1)[0]
    rows = {
        line.split("|")[1].strip(): line.split("|")[-2].strip()
        for line in table.splitlines()
        if line.startswith("| ")
    }
    assert rows == {
        "claim": "verdict",
        "a (short)": A.REPRODUCED,
        "b": A.REPRODUCED,
        "c": A.NOT_REPRODUCED,
        "d": A.REPRODUCED,
    }
    assert '<td class="v-not-reproduced">not reproduced</td>' in page
    assert "Verdict: not reproduced" in md
    for name in FIGURES:
        assert f"]({name})" in md


def test_report_states_configuration_noise_and_time(written: Path) -> None:
    md = (written / "report.md").read_text(encoding="utf-8")
    for text in (
        "## How to read this",
        "## Noise",
        "## Configuration",
        "## Thresholds",
        "binomial",
        "1:02:05",
        "test box",
        "`5000 / 1000 / 1000`",
        "| version: torch | `2.13.0` |",
        "| data: license | `MIT (Zalando)` |",
        f"| SEPARABLE_MAX_ABS_SLOPE | {A.SEPARABLE_MAX_ABS_SLOPE:g} |",
        "diverged",
    ):
        assert text in md, text


def test_heatmap_of_diverged_runs_is_drawn(tmp_path: Path) -> None:
    from weightdecay.experiments import plots

    records = [
        record("grid", opt, 2.0**ll, wd, [0.5], regime="r", status=status)
        for opt in ("SGD", "AdamW")
        for ll, status in ((-3, "diverged"), (-4, "failed"), (-5, "ok"))
        for wd in (0.0, 2.0**-12, 2.0**-11)
    ]
    path = plots.heatmaps(records, tmp_path / "h.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_report_without_runs_says_not_run(tmp_path: Path) -> None:
    md = write_report([], tmp_path, {})
    text = md.read_text(encoding="utf-8")
    assert text.count(f"| {A.NOT_RUN} |") == 4
    for name in FIGURES:
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
