"""The suite's outputs: ``report.json`` (schema below, checked by ``validate``), a
self-contained ``index.html`` (images embedded, opens from disk) and a terminal table.

report.json, schema "robustkern-suite/1":

- ``schema``, ``robustkern`` (version), ``created`` (ISO time), ``fingerprint`` (of the models,
  data and settings; a rerun with the same one reuses finished checks), ``device``,
  ``seconds`` (total), ``budget`` (seconds, or null for full sizes), ``quick`` (bool),
  ``costs`` (per model, the measured seconds per image the plan used: ``forward``,
  ``gradient``, ``train``, ``corrupt``, ``clean_accuracy``, ``robust``)
- ``data``: ``name``, ``test_images``, ``train_images`` (null if not given), ``shape``,
  ``classes``
- ``models``: list of ``{"name", "parameters"}``
- ``threat``: the main ``norm``, ``eps`` (input units) and ``source``
- ``checks``: list, one entry per check and model (``model`` null for checks across models):
  ``name``, ``title``, ``model``, ``verdict`` (pass | warn | fail | info | skipped | error),
  ``summary`` (one line), ``rationale`` (what it measures, why it matters), ``seconds``,
  ``figures`` (the numbers behind the verdict: an object), ``tables`` (list of ``{"title",
  "columns", "rows"}``, optionally ``"collapsed": true`` for long reference tables),
  ``images`` (list of ``{"path", "caption"}``, paths relative to the report's directory),
  ``error`` (null, or the exception of a check that crashed), ``sizes`` (the images, steps,
  queries... it ran with, as planned) and ``estimate`` (the planned seconds).
- Verdicts: pass | warn | inconclusive (the sample cannot decide) | fail | info | skipped |
  error. Accuracies carry 95 % (Wilson) intervals, written "94.2 % [92.0, 95.9]".

Numbers that are not finite are written as null (JSON has no inf or NaN).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import torch

from robustkern._io import atomic_write_text
from robustkern.suite.core import VERDICTS

SCHEMA = "robustkern-suite/1"
ENTRY_KEYS = {
    "name": str, "title": str, "model": (str, type(None)), "verdict": str, "summary": str,
    "rationale": str, "seconds": (int, float), "figures": dict, "tables": list, "images": list,
    "error": (str, type(None)), "sizes": dict, "estimate": (int, float),
}  # fmt: skip
TOP_KEYS = {
    "schema": str, "robustkern": str, "created": str, "fingerprint": str, "device": str,
    "seconds": (int, float), "budget": (int, float, type(None)), "quick": bool, "data": dict,
    "models": list, "threat": dict, "costs": dict, "checks": list,
}  # fmt: skip
COLOURS = {"pass": "#1a7f37", "warn": "#b26b00", "inconclusive": "#9a6700", "fail": "#cf222e",
           "info": "#0969da", "skipped": "#6e7781", "error": "#8250df"}  # fmt: skip


def json_safe(value):
    """Tensors, tuples and numbers as plain JSON values; inf and NaN become None."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def validate(report: dict) -> None:
    """Raises ValueError naming every way ``report`` departs from the schema."""
    problems = _wrong_keys(report, TOP_KEYS, "report")
    if report.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA!r}, got {report.get('schema')!r}")
    for k, entry in enumerate(report.get("checks") or []):
        where = f"checks[{k}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be an object")
            continue
        problems += _wrong_keys(entry, ENTRY_KEYS, where)
        if entry.get("verdict") not in VERDICTS:
            problems.append(
                f"{where}.verdict must be one of {VERDICTS}, got {entry.get('verdict')!r}"
            )
        for t in entry.get("tables") or []:
            if not (isinstance(t, dict) and {"title", "columns", "rows"} <= set(t)):
                problems.append(f"{where}.tables entries need title, columns and rows")
        for i in entry.get("images") or []:
            if not (isinstance(i, dict) and {"path", "caption"} <= set(i)):
                problems.append(f"{where}.images entries need path and caption")
    if problems:
        raise ValueError("report does not follow the schema: " + "; ".join(problems))


def _wrong_keys(obj: dict, keys: dict, where: str) -> list[str]:
    out = []
    for key, kind in keys.items():
        if key not in obj:
            out.append(f"{where} lacks {key!r}")
        elif not isinstance(obj[key], kind) or (kind is not bool and isinstance(obj[key], bool)):
            out.append(f"{where}.{key} has the wrong type {type(obj[key]).__name__}")
    return out


def terminal_table(report: dict, width: int = 110) -> str:
    """One line per check and model: verdict, seconds taken / planned and the summary, cut to
    ``width``."""
    rows = [(c["name"], c["model"] or "all", c["verdict"].upper(),
             f"{c['seconds']:.1f}/{c['estimate']:.0f}", c["summary"])
            for c in report["checks"]]  # fmt: skip
    head = ("check", "model", "verdict", "s/plan", "summary")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = []
    for row in [head, *rows]:
        line = "  ".join(f"{v:<{w}}" for v, w in zip(row[:4], widths, strict=True))
        room = max(20, width - len(line) - 2)
        text = row[4] if len(row[4]) <= room else row[4][: room - 3] + "..."
        lines.append(f"{line}  {text}")
    lines.insert(1, "-" * min(width, max(len(line) for line in lines)))
    counts = {v: sum(c["verdict"] == v for c in report["checks"]) for v in VERDICTS}
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items() if n))
    return "\n".join(lines)


def write_html(report: dict, out: Path) -> Path:
    """index.html beside report.json, every image embedded as a data URI."""
    e = html.escape
    models = ", ".join(f"{m['name']} ({m['parameters']:,} parameters)" for m in report["models"])
    threat = report["threat"]
    overview = "".join(
        f"<tr><td><a href='#c{k}'>{e(c['title'])}</a></td><td>{e(c['model'] or 'all')}</td>"
        f"<td>{_badge(c['verdict'])}</td><td>{c['seconds']:.1f}</td><td>{e(c['summary'])}</td></tr>"
        for k, c in enumerate(report["checks"])
    )
    sections = "".join(_section(k, c, out) for k, c in enumerate(report["checks"]))
    summaries = "".join(_model_summary(m["name"], report, out) for m in report["models"])
    data = report["data"]
    quick = "; quick run (small budgets)" if report["quick"] else ""
    if report["budget"] is not None:
        quick += f"; time budget {report['budget']:.0f} s"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>robustkern robustness report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1f2328; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
td, th {{ border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; }}
.badge {{ color: white; border-radius: 4px; padding: 1px 7px; font-weight: 600;
          font-size: 12px; }}
section {{ border-top: 1px solid #d0d7de; margin-top: 1.5em; }}
.rationale {{ color: #57606a; }}
img {{ max-width: 100%; border: 1px solid #eaeef2; }}
pre {{ background: #f6f8fa; padding: .6em; overflow-x: auto; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.card {{ border: 1px solid #d0d7de; border-radius: 6px; padding: .2em 1em .8em; flex: 1 1 420px; }}
.card img {{ max-width: 420px; }}
.verdicts a {{ text-decoration: none; margin-right: .3em; white-space: nowrap; font-size: 12px; }}
details summary {{ cursor: pointer; color: #0969da; }}
</style></head><body>
<h1>Robustness report</h1>
<p>Data: <b>{e(str(data["name"]))}</b>, {data["test_images"]} test images of shape
{e("x".join(map(str, data["shape"])))}, {data["classes"]} classes. Models: {e(models)}.<br>
Main threat model: {e(threat["norm"])} eps {threat["eps"]:g} ({e(threat["source"])}).
Device {e(report["device"])}; {report["seconds"]:.0f} s in all{quick};
robustkern {e(report["robustkern"])}, {e(report["created"])}.</p>
<div class="cards">{summaries}</div>
<h2>Every check</h2>
<table><tr><th>check</th><th>model</th><th>verdict</th><th>s</th><th>summary</th></tr>
{overview}</table>
{sections}
</body></html>
"""
    return atomic_write_text(out / "index.html", page)


def _model_summary(name: str, report: dict, out: Path) -> str:
    """One model on one screen: its verdicts, clean and robust accuracy with their intervals,
    and the robust-accuracy-vs-eps curve."""
    e = html.escape
    mine = [(k, c) for k, c in enumerate(report["checks"]) if c["model"] in (name, None)]
    verdicts = "".join(
        f"<a href='#c{k}'>{e(c['name'])} {_badge(c['verdict'])}</a>" for k, c in mine
    )
    lines = []
    for _, c in mine:
        if c["name"] == "white_box" and c["figures"].get("main"):
            lines.append(f"White box: {e(c['summary'])}.")
        if c["name"] == "masking" and c["verdict"] != "skipped":
            lines.append(f"Gradient masking: {e(c['summary'])}.")
    picture = next((i for _, c in mine if c["name"] == "unbounded" for i in c["images"][:1]), None)
    return (
        f"<div class='card'><h3>{e(name)}</h3><p class='verdicts'>{verdicts}</p>"
        f"<p>{'<br>'.join(lines) or 'no white-box result yet'}</p>"
        f"{_figure(picture, out) if picture else ''}</div>"
    )


def _figure(image: dict, out: Path) -> str:
    e = html.escape
    path = out / image["path"]
    if not path.is_file():
        return f"<p>(image {e(image['path'])} is missing)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img alt='{e(image['caption'])}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(image['caption'])}</figcaption></figure>")  # fmt: skip


def _table(t: dict) -> str:
    """A table; a long reference table (``collapsed``) folded away under its title."""
    e = html.escape
    head = "".join(f"<th>{e(str(v))}</th>" for v in t["columns"])
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in t["rows"]
    )
    table = f"<table><tr>{head}</tr>{body}</table>"
    if t.get("collapsed"):
        return f"<details><summary>{e(t['title'])}</summary>{table}</details>"
    return f"<p>{e(t['title'])}</p>{table}"


def _badge(verdict: str) -> str:
    return f"<span class='badge' style='background:{COLOURS[verdict]}'>{verdict}</span>"


def _section(k: int, c: dict, out: Path) -> str:
    e = html.escape
    parts = [
        f"<section id='c{k}'><h2>{e(c['title'])}{' - ' + e(c['model']) if c['model'] else ''} "
        f"{_badge(c['verdict'])}</h2>",
        f"<p><b>{e(c['summary'])}</b> ({c['seconds']:.1f} s)</p>",
        f"<p class='rationale'>{e(c['rationale'])}</p>",
    ]
    if c["sizes"]:
        sizes = ", ".join(f"{k} {v}" for k, v in c["sizes"].items())
        parts.append(f"<p class='rationale'>ran with {e(sizes)} (planned "
                     f"{c['estimate']:.0f} s)</p>")  # fmt: skip
    if c["error"]:
        parts.append(f"<pre>{e(c['error'])}</pre>")
    parts += [_table(t) for t in c["tables"]]
    parts += [_figure(image, out) for image in c["images"]]
    return "".join(parts) + "</section>\n"
