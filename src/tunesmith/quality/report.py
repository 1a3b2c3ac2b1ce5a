"""The data-quality report: `report.json` for machines, `report.html` for people, `plots/*.png` for both.

The HTML page is self-contained — plots are embedded as data URIs, styles inline — so it can be mailed or
attached to a ticket; each plot also links to its PNG file beside the page.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

SECTIONS = {  # check key -> heading, in page order
    "duplicates": "Duplicates, conflicting labels and leakage",
    "label_errors": "Likely label errors",
    "balance": "Class balance",
    "lengths": "Text lengths",
    "junk": "Empty and non-text rows",
    "languages": "Languages",
    "pii": "Personal data",
}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d232b;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #d6dbe1;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em;width:100%}
th,td{border:1px solid #d6dbe1;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f2f4f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37} .warn{color:#9a6700} .finding{margin:.3em 0}
.badge{display:inline-block;border-radius:3px;padding:0 .45em;font-size:.85em;margin-right:.4em}
.badge.ok{background:#dafbe1} .badge.warn{background:#fff8c5}
img{max-width:100%;border:1px solid #d6dbe1} code{background:#f2f4f7;padding:0 .25em}
.muted{color:#59636e;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            css = ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
            if isinstance(value, float):
                value = f"{value:.3f}"
            cells.append(f"<td{css}>{_e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _groups(groups: list[dict[str, Any]]) -> str:
    rows = []
    for g in groups:
        first = g["rows"][0]
        rows.append({"rows": g["size"], "labels": g["labels"], "splits": g["splits"], "text": first["text"],
                     "where": [f"{r['split']}:{r['row']}" for r in g["rows"]]})  # fmt: skip
    return _table(rows, ["rows", "labels", "splits", "where", "text"])


def _plot(name: str, plots: Path) -> str:
    path = plots / f"{name}.png"
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><a href="plots/{name}.png"><img alt="{name}" src="data:image/png;base64,{data}"></a></p>'


def write_plots(report: dict[str, Any], lengths: list[int], plots: Path) -> list[str]:
    """Class balance, token-length histogram and languages as PNGs; returns the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    written = []
    counts = report["checks"].get("balance", {}).get("counts") or {}
    if counts:
        shown = list(counts.items())[:60]
        fig, ax = plt.subplots(figsize=(10, max(3, 0.22 * len(shown))))
        ax.barh([k[:40] for k, _ in shown][::-1], [v for _, v in shown][::-1], color="#4c78a8")
        ax.set_xlabel("training examples")
        ax.set_title("Examples per class" + (f" (largest {len(shown)} of {len(counts)})" if len(counts) > 60 else ""))
        fig.tight_layout()
        fig.savefig(plots / "class_balance.png", dpi=90)
        plt.close(fig)
        written.append("class_balance")
    if lengths:
        limit = report["checks"].get("lengths", {}).get("max_length")
        fig, ax = plt.subplots(figsize=(8, 3.2))
        ax.hist(lengths, bins=min(60, max(10, len(set(lengths)))), color="#4c78a8")
        if limit:
            ax.axvline(limit, color="#e45756", linestyle="--", label=f"max_length {limit}")
            ax.legend()
        ax.set_xlabel("tokens per text")
        ax.set_ylabel("texts")
        ax.set_title("Text length")
        fig.tight_layout()
        fig.savefig(plots / "lengths.png", dpi=90)
        plt.close(fig)
        written.append("lengths")
    languages = report["checks"].get("languages", {}).get("counts") or {}
    if len(languages) > 1:
        shown = list(languages.items())[:15]
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar([k for k, _ in shown], [v for _, v in shown], color="#4c78a8")
        ax.set_yscale("log")
        ax.set_ylabel("texts (log)")
        ax.set_title("Languages identified")
        fig.tight_layout()
        fig.savefig(plots / "languages.png", dpi=90)
        plt.close(fig)
        written.append("languages")
    return written


def _section(key: str, result: dict[str, Any], plots: Path) -> str:
    parts = [f'<h2 id="{key}">{_e(SECTIONS[key])}</h2>']
    if result.get("skipped"):
        return parts[0] + f'<p class="muted">Not run: {_e(result["skipped"])}</p>'
    findings = result.get("findings") or []
    if findings:
        parts += [f'<p class="finding warn">{_e(f)}</p>' for f in findings]
    else:
        parts.append('<p class="ok">Nothing found.</p>')
    if key == "duplicates":
        for what, title in (("exact_conflicts", "Identical texts with different labels"),
                            ("leaks", "Texts in more than one split"),
                            ("exact", "Exact duplicates (after normalising)"),
                            ("near_conflicts", "Near-duplicates with different labels"),
                            ("near", "Near-duplicates")):  # fmt: skip
            examples = result[what]["examples"]
            if examples:
                parts.append(f"<h3>{_e(title)}</h3>" + _groups(examples))
    elif key == "label_errors" and result.get("checked"):
        parts.append(f'<p class="muted">Out-of-fold probabilities from {_e(result["model"])} over {result["folds"]} '
                     "folds; cleanlab confident learning.</p>" if "folds" in result else "")  # fmt: skip
        if result["examples"] and "tokens" in result["examples"][0]:
            rows = [{"where": f"{x['split']}:{x['row']}", "sentence": x["text"],
                     "tokens": [f"{t['token']}: {t['tag']} -> {t['suggested']}" for t in x["tokens"]]}
                    for x in result["examples"]]  # fmt: skip
            parts.append(_table(rows, ["where", "tokens", "sentence"]))
        else:
            rows = [{**x, "where": f"{x['split']}:{x['row']}"} for x in result["examples"]]
            parts.append(_table(rows, ["where", "label", "suggested", "confidence", "text"]))
    elif key == "balance" and result.get("counts"):
        parts.append(_plot("class_balance", plots))
        shown = [{"class": k, "examples": v} for k, v in list(result["counts"].items())[-10:]]
        parts.append("<h3>Smallest classes</h3>" + _table(shown, ["class", "examples"]))
    elif key == "lengths":
        tokens = result.get("tokens", {})
        parts.append(_table([{**tokens, "max_length": result.get("max_length"), "truncated": result.get("truncated")}],
                            ["min", "p50", "p90", "p99", "max", "max_length", "truncated"]))  # fmt: skip
        parts.append(_plot("lengths", plots))
        if result.get("examples"):
            parts.append("<h3>Longest texts</h3>" + _table(result["examples"], ["split", "row", "tokens", "text"]))
    elif key == "junk":
        parts.append(_table(result.get("examples", []), ["split", "row", "kind", "text"]))
    elif key == "languages" and result.get("counts"):
        parts.append(f'<p class="muted">{result["identified"]} texts identified with confidence (py3langid); main '
                     f"language {_e(result['main'])}.</p>")  # fmt: skip
        parts.append(_plot("languages", plots))
        parts.append(_table(result.get("examples", []), ["split", "row", "language", "text"]))
    elif key == "pii":
        counts = [{"kind": k, "occurrences": v, "rows": result["rows_by_kind"].get(k, 0)}
                  for k, v in result.get("counts", {}).items()]  # fmt: skip
        parts.append(_table(counts, ["kind", "occurrences", "rows"]))
        if result.get("examples"):
            parts.append("<h3>Examples (masked)</h3>" + _table(result["examples"], ["split", "row", "kinds", "text"]))
    return "\n".join(parts)


def write_html(report: dict[str, Any], path: Path) -> None:
    plots = path.parent / "plots"
    summary = []
    for key, title in SECTIONS.items():
        result = report["checks"].get(key)
        if result is None:
            continue
        n = len(result.get("findings") or [])
        state = "skipped" if result.get("skipped") else (f"{n} finding(s)" if n else "ok")
        css = "warn" if n else "ok"
        summary.append(f'<tr><td><a href="#{key}">{_e(title)}</a></td><td><span class="badge {css}">{_e(state)}</span>'
                       f"</td></tr>")  # fmt: skip
    files = _table([{"split": s, "file": f["path"], "rows": f["rows"]} for s, f in report["files"].items()],
                   ["split", "file", "rows"])  # fmt: skip
    body = "\n".join(_section(key, report["checks"][key], plots) for key in SECTIONS if key in report["checks"])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Data report - {_e(report["name"])}</title><style>{STYLE}</style></head>
<body>
<h1>Data report: {_e(report["name"])}</h1>
<p class="muted">{_e(report["task"])} · {report["rows"]} rows · made by tunesmith {_e(report["version"])} on
{_e(report["created"])} in {report["seconds"]:.1f} s</p>
{files}
<h2>Summary</h2>
<table><tr><th>check</th><th>result</th></tr>{"".join(summary)}</table>
{body}
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def public(value: Any) -> Any:
    """`value` without the keys starting with "_" (working data the checks hand to the fixes)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


def write_json(report: dict[str, Any], path: Path, extra: dict[str, Any]) -> None:
    out = public(report)
    for key, rows in extra.items():  # the full lists, where the page shows the first few
        out["checks"][key]["all"] = rows
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
