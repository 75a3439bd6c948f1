"""The reproduction report: a Markdown file and a self-contained HTML page.

:func:`write_report` analyses the run records (:mod:`.analysis`), draws the
figures (:mod:`.plots`) and writes ``report.md`` beside them and
``report.html`` with the figures inlined as base64, no external resources.
Both are rendered from one list of blocks, so they say the same thing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightdecay.experiments import analysis, plots
from weightdecay.experiments.analysis import ClaimResult, Table

__all__ = ["render_html", "render_markdown", "write_report"]

logger = logging.getLogger(__name__)

TITLE = "Reproduction: Decoupled Weight Decay Regularization (Loshchilov & Hutter)"

HOW_TO_READ = (
    "Each claim of the paper is tested by one statistic, measured on the runs "
    "below and compared with a threshold that was fixed before any run (listed "
    "under Thresholds). 'reproduced' means the statistic meets its threshold; "
    "'not reproduced' means it does not, and the section says what was seen; "
    "'inconclusive' means the runs cannot decide (too few usable runs for the "
    "statistic, or two arms that ran the same algorithm); 'not run' means "
    "its study has no runs. Errors are percentages of the validation or test "
    "images; '±' after one run's error is its binomial standard error "
    "sqrt(p(1-p)/n), after a mean over seeds the seed-to-seed standard "
    "deviation, after a slope its least-squares standard error. Decays are "
    "powers of two and compared in octaves (log2). A row's best decay is "
    "refined by a parabola in log2(decay) through the best cell and its two "
    "neighbours; a best cell on the edge of the grid, or at decay 0 (no decay, "
    "a column of its own), is censored and left out of the slope, and rows whose "
    f"best val error is more than {100 * analysis.ROW_EXCLUSION_MARGIN:.1f} "
    "points above the optimizer's best are excluded. Runs that diverged or "
    "failed count as 100 % error and are marked 'div' in the heatmaps."
)

FIGURES: tuple[tuple[str, str], ...] = (
    (
        "heatmaps",
        "Val error over (weight decay, learning rate), the layout of the "
        "paper's Figure 2. Red box: best cell; crimson circles: best cell of each row; "
        "dashed line: refined ridge over the rows used for the slope; 'div': "
        "diverged or failed.",
    ),
    ("curves", "Val error and val loss per epoch at each optimizer's best cell."),
    (
        "budget",
        "Val error against raw and normalized decay, one line per budget; "
        "dotted lines: refined best per budget.",
    ),
    (
        "restarts",
        "Val error per epoch, AdamWR against AdamW (cosine); dots and "
        "dotted lines: AdamWR's run ends.",
    ),
)

_THRESHOLDS = (
    "FAILED_ERROR",
    "ROW_EXCLUSION_MARGIN",
    "MIN_USABLE_ROWS",
    "SEPARABLE_MAX_ABS_SLOPE",
    "DIAGONAL_MAX_SLOPE",
    "SEEDS_MIN_SE_MULTIPLE",
    "MIN_SEEDS",
    "BUDGET_MAX_NORM_SHIFT",
    "BUDGET_MIN_RAW_SHIFT",
    "RESTART_FINAL_TOLERANCE",
)


@dataclass(frozen=True)
class _Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "list" | "table" | "figure"
    text: str = ""
    items: tuple[str, ...] = ()
    table: Table | None = None
    path: Path | None = None
    literal: bool = False  # table cells are verbatim values (code spans)


def write_report(
    records: Sequence[Mapping[str, Any]], out_dir: Path, meta: Mapping[str, Any]
) -> Path:
    """Write the report of a reproduction.

    Args:
        records: Finished runs as stored by the results store.
        out_dir: Folder for ``report.md``, ``report.html`` and the figures
            ``heatmaps.png``, ``curves.png``, ``budget.png``, ``restarts.png``.
        meta: ``command``, ``profile``, ``settings`` (every flag),
            ``versions``, ``wall_s``, ``data`` (``source``, ``path`` and the
            sizes), ``workers``, ``machine``; missing keys print as n/a.

    Returns:
        The path of ``report.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = list(records)
    claims = analysis.analyse(records)
    figures = plots.all_figures(records, out_dir)
    blocks = _blocks(records, claims, figures, meta)

    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(blocks, out_dir), encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(blocks), encoding="utf-8")
    logger.info("wrote %s and %s", md_path, html_path)
    return md_path


# --------------------------------------------------------------------------
# Content


def _blocks(
    records: Sequence[Mapping[str, Any]],
    claims: Sequence[ClaimResult],
    figures: Mapping[str, Path],
    meta: Mapping[str, Any],
) -> list[_Block]:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks = [
        _Block("h1", TITLE),
        _Block(
            "p",
            f"Generated {now} by `{meta.get('command', 'n/a')}` (profile "
            f"{meta.get('profile', 'n/a')}), from {len(records)} runs in "
            f"{_duration(meta.get('wall_s'))}.",
        ),
        _Block("h2", "Claims"),
        _Block(
            "table",
            table=Table(
                title="",
                header=(
                    "claim",
                    "statistic (with noise)",
                    "threshold (fixed in advance)",
                    "verdict",
                ),
                rows=tuple(
                    (c.claim_id, c.statistic, c.threshold, c.verdict) for c in claims
                ),
            ),
        ),
        _Block("h2", "How to read this"),
        _Block("p", HOW_TO_READ),
    ]

    for c in claims:
        blocks += [
            _Block("h2", f"Claim {c.claim_id}: {c.verdict}"),
            _Block("p", f"Claim: {c.statement}"),
            _Block("p", f"Measured: {c.statistic}"),
            _Block("p", f"Threshold: {c.threshold}"),
            _Block("p", _verdict_sentence(c)),
        ]
        if c.notes:
            blocks.append(_Block("list", items=c.notes))
        for table in c.tables:
            blocks += [_Block("h3", table.title), _Block("table", table=table)]

    blocks.append(_Block("h2", "Figures"))
    for name, caption in FIGURES:
        if name in figures:
            blocks += [
                _Block("h3", name),
                _Block("figure", text=caption, path=Path(figures[name])),
            ]

    noise = analysis.noise_summary(records)
    blocks += [
        _Block("h2", "Noise"),
        _Block(
            "p",
            "Two noise scales bound every comparison: the binomial standard error "
            "of an error rate measured on n images, sqrt(p(1-p)/n), and the "
            "seed-to-seed standard deviation of the same setting trained from "
            "fresh seeds (the seeds study). Differences between cells smaller "
            "than these are not resolved.",
        ),
    ]
    for table in noise.tables:
        blocks += [_Block("h3", table.title), _Block("table", table=table)]

    blocks += _run_blocks(records)
    blocks += [
        _Block("h2", "Thresholds"),
        _Block(
            "table",
            table=Table(
                title="",
                header=("constant", "value"),
                rows=tuple((n, f"{getattr(analysis, n):g}") for n in _THRESHOLDS),
            ),
        ),
    ]
    blocks += _meta_blocks(records, meta)
    return blocks


def _verdict_sentence(c: ClaimResult) -> str:
    if c.verdict == analysis.REPRODUCED:
        return "Verdict: reproduced; the statistic meets the threshold."
    if c.verdict == analysis.NOT_REPRODUCED:
        return (
            "Verdict: not reproduced; the statistic misses the threshold "
            f"(seen: {c.statistic})."
        )
    if c.verdict == analysis.INCONCLUSIVE:
        return "Verdict: inconclusive; these runs cannot decide (see below)."
    return "Verdict: not run; the study has no runs."


def _run_blocks(records: Sequence[Mapping[str, Any]]) -> list[_Block]:
    counts = analysis.status_counts(records)
    statuses = sorted({s for c in counts.values() for s in c})
    blocks = [
        _Block("h2", "Runs"),
        _Block(
            "table",
            table=Table(
                title="",
                header=("study", *statuses, "compute (run wall time)"),
                rows=tuple(
                    (
                        study,
                        *(str(c.get(s, 0)) for s in statuses),
                        _duration(
                            sum(
                                float(r.get("wall_s") or 0.0)
                                for r in analysis.select(records, study=study)
                            )
                        ),
                    )
                    for study, c in counts.items()
                ),
            ),
        ),
    ]
    bad = analysis.failed_runs(records)
    if bad:
        blocks += [
            _Block("h3", "Diverged or failed runs (counted as 100 % error)"),
            _Block(
                "table",
                table=Table(
                    title="",
                    header=(
                        "study",
                        "regime",
                        "optimizer",
                        "lr",
                        "weight decay",
                        "epochs",
                        "seed",
                        "status",
                        "diverged at step",
                    ),
                    rows=tuple(
                        (
                            str(r["config"].get("study")),
                            str(r["config"].get("regime", "")),
                            str(r["config"].get("optimizer")),
                            f"{float(r['config']['lr']):.4g}",
                            f"{float(r['config']['weight_decay']):.4g}",
                            str(r["config"].get("epochs")),
                            str(r["config"].get("seed")),
                            str(r.get("status")),
                            str(r.get("diverged_step") or ""),
                        )
                        for r in bad
                    ),
                ),
            ),
        ]
    return blocks


def _meta_blocks(
    records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> list[_Block]:
    settings = meta.get("settings") or {}
    versions = meta.get("versions") or {}
    data = meta.get("data") or {}
    return [
        _Block("h2", "Configuration"),
        _Block(
            "table",
            literal=True,
            table=Table(
                title="",
                header=("setting", "value"),
                rows=tuple((str(k), _value(v)) for k, v in sorted(settings.items())),
            ),
        ),
        _Block("h2", "Environment"),
        _Block(
            "table",
            literal=True,
            table=Table(
                title="",
                header=("item", "value"),
                rows=(
                    ("command", _value(meta.get("command"))),
                    ("profile", _value(meta.get("profile"))),
                    *(
                        (f"version: {k}", _value(v))
                        for k, v in sorted(versions.items())
                    ),
                    ("data source", _value(data.get("source"))),
                    ("data path", _value(data.get("path"))),
                    (
                        "train / val / test images",
                        " / ".join(
                            _value(data.get(k))
                            for k in ("train_size", "val_size", "test_size")
                        ),
                    ),
                    *(
                        (f"data: {k}", _value(v))
                        for k, v in sorted(data.items())
                        if k not in _DATA_KEYS
                    ),
                    ("workers", _value(meta.get("workers"))),
                    ("machine", _value(meta.get("machine"))),
                    (
                        "time taken (wall, all invocations)",
                        _duration(meta.get("wall_s")),
                    ),
                    (
                        "time taken (wall, last invocation)",
                        _duration(meta.get("last_wall_s")),
                    ),
                    ("runs", str(len(records))),
                ),
            ),
        ),
    ]


_DATA_KEYS = ("source", "path", "train_size", "val_size", "test_size")


def _value(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, Mapping | list | tuple):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _duration(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(s) or s < 0:
        return "n/a"
    minutes, secs = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d} (h:mm:ss)"


# --------------------------------------------------------------------------
# Rendering


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    """``text`` as a code span, so Markdown shows it verbatim (no HTML)."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _md_table(table: Table, literal: bool = False) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    for row in table.rows:
        cells = [_md_cell(row[0])]
        cells += [_md_code(c) if literal else _md_cell(c) for c in row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(blocks: Sequence[_Block], out_dir: Path) -> str:
    """The blocks as Markdown; figures linked by path relative to ``out_dir``."""
    parts: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "list":
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table" and b.table is not None:
            parts.append(_md_table(b.table, b.literal))
        elif b.kind == "figure" and b.path is not None:
            rel = (
                b.path.relative_to(out_dir)
                if b.path.is_relative_to(out_dir)
                else b.path
            )
            parts.append(f"![{b.text}]({rel.as_posix()})\n\n{b.text}")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: sans-serif; max-width: 72em; margin: 1em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left;
         vertical-align: top; }
th { background: #eee; }
img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
.v-reproduced { background: #d9f2d9; }
.v-not-reproduced { background: #f7d4d4; }
.v-inconclusive { background: #f7ecc8; }
.v-not-run { background: #e6e6e6; }
code { background: #f3f3f3; }
""".strip()


def _html_table(table: Table, literal: bool = False) -> str:
    verdicts = {
        analysis.REPRODUCED,
        analysis.NOT_REPRODUCED,
        analysis.INCONCLUSIVE,
        analysis.NOT_RUN,
    }
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = []
        for cell in row:
            cls = f' class="v-{cell.replace(" ", "-")}"' if cell in verdicts else ""
            text = html.escape(cell)
            if literal and cells:
                text = f"<code>{text}</code>"
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<table><thead><tr>"
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _html_text(text: str) -> str:
    """Escape ``text``; spans between backticks become ``<code>``."""
    pieces = text.split("`")
    if len(pieces) % 2 == 0:
        return html.escape(text)
    return "".join(
        f"<code>{html.escape(p)}</code>" if k % 2 else html.escape(p)
        for k, p in enumerate(pieces)
    )


def render_html(blocks: Sequence[_Block]) -> str:
    """The blocks as one HTML page; figures inlined as base64 PNG."""
    title = next((b.text for b in blocks if b.kind == "h1"), TITLE)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_html_text(b.text)}</p>")
        elif b.kind == "list":
            items = "".join(f"<li>{_html_text(item)}</li>" for item in b.items)
            parts.append(f"<ul>{items}</ul>")
        elif b.kind == "table" and b.table is not None:
            parts.append(_html_table(b.table, b.literal))
        elif b.kind == "figure" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(b.path.stem, quote=True)}" '
                f'src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b.text)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
