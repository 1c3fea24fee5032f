"""A self-contained HTML report of one evaluation run (images embedded as data URLs; no scripts or
files from elsewhere), with the no-search baseline beside the agent when it ran:

- the headline scores of both runs, a per-category table and a bar chart (inline SVG) per category;
- per item: the prompt, the trajectory (each tool call with its queries / URL, the tool responses
  folded), the reference images the answer chose, the generated image beside the ground truth
  and the baseline's image, the judge's scores or the failure's reason.

    python -m gsjax.eval.report runs/eval_knowgen/expert [--baseline runs/eval_knowgen/none]
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image

from gsjax.agent.protocol import loads_lenient
from gsjax.fileio import ResultsLog, atomic_write

THUMB = 224
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eef}td.l,th.l{text-align:left}
.item{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:14px 0}
.failed{border-color:#d66;background:#fff6f6}.prompt{font-weight:600}
.imgs{display:flex;gap:14px;flex-wrap:wrap}.imgs figure{margin:0}.imgs figcaption{font-size:12px;color:#555}
.imgs img{border:1px solid #999;display:block}.missing{width:160px;height:100px;border:1px dashed #c66;
color:#a33;font-size:12px;display:flex;align-items:center;justify-content:center}
.refs img{width:72px;height:72px;object-fit:cover}ol.traj{margin:4px 0;padding-left:22px}
details pre{white-space:pre-wrap;font-size:12px;background:#f6f6f6;padding:6px;max-height:220px;overflow:auto}
.err{color:#a33}
"""


def image_tag(path: str | None, size: int = THUMB) -> str:
    """An <img> with the picture embedded (shrunk to `size`), or a visible placeholder."""
    if not path:
        return '<div class="missing">no image</div>'
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError) as e:
        return f'<div class="missing">unreadable: {html.escape(type(e).__name__)}</div>'
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{im.width}" height="{im.height}" alt="">'


def figure(path: str | None, caption: str, size: int = THUMB) -> str:
    return f"<figure>{image_tag(path, size)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _calls(messages: list[dict[str, Any]]) -> list[str]:
    """One line per tool call: the tool and its queries / query / URL."""
    lines = []
    for m in messages:
        if m.get("role") != "assistant":
            continue
        match = _TOOL_CALL.search(m.get("content", ""))
        if not match:
            continue
        try:
            call = loads_lenient(match.group(1))
            name, args = call.get("name", "?"), call.get("arguments", {}) or {}
        except (ValueError, AttributeError):
            lines.append("unreadable tool call")
            continue
        what = (args.get("url") if name == "browse" else args.get("queries") or args.get("query")) or ""
        if isinstance(what, list):
            what = "; ".join(map(str, what))
        lines.append(f"{name}: {what}" + (f" (looking for: {args['query']})" if name == "browse" and args.get("query") else ""))
    return lines


def _scores_cells(rec: dict[str, Any]) -> str:
    s = rec.get("scores")
    if rec["status"] != "scored" or not s:
        return f'<span class="err">failed: {html.escape(str(rec.get("error")))}</span>'
    keys = [k for k in ("F", "V", "T", "A", "consistency", "realism", "aesthetic", "verified") if k in s]
    head = "".join(f"<th>{k}</th>" for k in keys)
    cells = "".join(f"<td>{'n/a' if s[k] is None else s[k]}</td>" for k in keys)
    return f'<table class="scores"><tr>{head}</tr><tr>{cells}</tr></table><div>{html.escape(str(s.get("rationale", "")))}</div>'


def _item(rec: dict[str, Any], base: dict[str, Any] | None) -> str:
    answer = rec.get("answer") or {}
    shown = {s["img_id"]: s for s in rec.get("shown", [])}
    calls = "".join(f"<li>{html.escape(c)}</li>" for c in _calls(rec.get("messages", [])))
    responses = "\n\n".join(m["content"] for m in rec.get("messages", [])
                            if m.get("role") == "user" and "<tool_response>" in m.get("content", ""))
    refs = "".join(figure(r.get("path"), f"{r['img_id']}: {shown.get(r['img_id'], {}).get('title', '')}", 96)
                   for r in answer.get("references", []))
    figs = figure(rec.get("generated"), "generated (agent)")
    if rec.get("gt_image"):
        figs += figure(rec["gt_image"], "ground truth")
    if base is not None:
        figs += figure(base.get("generated"), "generated (no-search baseline)")
    base_scores = f"<div><b>baseline:</b> {_scores_cells(base)}</div>" if base is not None else ""
    return f"""<section class="item {'failed' if rec['status'] != 'scored' else 'ok'}" id="item-{html.escape(rec['id'])}">
<div><b>{html.escape(rec['id'])}</b> &middot; {html.escape(rec['category'] or 'bad row')} &middot;
termination {html.escape(str(rec.get('termination')))} &middot; {rec.get('tool_calls', 0)} tool calls</div>
<div class="prompt">{html.escape(rec['prompt'])}</div>
{f"<div><i>{html.escape(rec['explanation'])}</i></div>" if rec.get('explanation') else ''}
<ol class="traj">{calls}</ol>
{f"<details><summary>tool responses</summary><pre>{html.escape(responses[:6000])}</pre></details>" if responses else ''}
{f"<div><b>gen_prompt:</b> {html.escape(answer.get('gen_prompt', ''))}</div>" if answer else ''}
{f'<div class="imgs refs">{refs}</div>' if refs else ''}
<div class="imgs">{figs}</div>
<div><b>agent:</b> {_scores_cells(rec)}</div>{base_scores}
</section>"""


def _category_rows(summary: dict[str, Any]) -> dict[str, tuple[int, float]]:
    """category -> (n, score) for the chart and table (K-Score overall, or WISE paper mean)."""
    if summary["benchmark"] == "knowgen":
        return {c: (v["n"], v["overall"]) for c, v in summary["reference"]["categories"].items()}
    return {c: (v["n"], v["mean"]) for c, v in summary["paper"]["reference"]["categories"].items() if v["n"]}


def _chart(runs: dict[str, dict[str, tuple[int, float]]]) -> str:
    cats = sorted({c for r in runs.values() for c in r})
    colors = ["#4a7bd0", "#c8843a"]
    bar, gap, height = 14, 18, 160
    width = 60 + len(cats) * (bar * len(runs) + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 104}" class="chart">'
             '<g transform="translate(0 12)">',
             f'<line x1="40" y1="{height}" x2="{width}" y2="{height}" stroke="#333"/>']
    for tick in (0.0, 0.5, 1.0):
        y = height - tick * height
        parts.append(f'<text x="4" y="{y + 4:.0f}" font-size="11">{tick:.1f}</text>')
    for i, cat in enumerate(cats):
        x0 = 50 + i * (bar * len(runs) + gap)
        for j, (name, rows) in enumerate(runs.items()):
            value = rows.get(cat, (0, 0.0))[1]
            h = max(1.0, value * height)
            parts.append(f'<rect class="bar" x="{x0 + j * bar}" y="{height - h:.1f}" width="{bar - 2}" height="{h:.1f}" '
                         f'fill="{colors[j % 2]}"><title>{html.escape(name)} {html.escape(cat)}: {value:.3f}</title></rect>')
        parts.append(f'<text x="{x0}" y="{height + 12}" font-size="10" transform="rotate(40 {x0} {height + 12})">'
                     f'{html.escape(cat)}</text>')
    for j, name in enumerate(runs):
        parts.append(f'<rect x="{50 + j * 140}" y="{height + 70}" width="10" height="10" fill="{colors[j % 2]}"/>'
                     f'<text x="{64 + j * 140}" y="{height + 79}" font-size="11">{html.escape(name)}</text>')
    parts.append("</g></svg>")
    return "".join(parts)


def _headline(name: str, s: dict[str, Any]) -> str:
    if s["benchmark"] == "knowgen":
        g = s["reference"]["groups"]
        cells = [s["k_score"], s["k_score_strict"], g["science_and_knowledge"]["overall"],
                 g["pop_culture_and_news"]["overall"]]
    else:
        cells = [s["paper"]["overall"], s["paper"]["overall_strict"], s["verified"]["overall"],
                 s["verified"]["overall_strict"]]
    text = "".join(f"<td>{'-' if v is None else f'{v:.4f}'}</td>" for v in cells)
    return (f'<tr><td class="l">{html.escape(name)}</td>{text}<td>{s["recorded"]}/{s["items"]}</td>'
            f'<td>{s["failed"]}</td></tr>')


def render(records: list[dict[str, Any]], summary: dict[str, Any], name: str,
           base_records: list[dict[str, Any]] | None = None, base_summary: dict[str, Any] | None = None,
           title: str = "evaluation") -> str:
    runs = {name: summary} | ({"no-search baseline": base_summary} if base_summary else {})
    heads = (["K-Score", "K-Score strict", "science", "pop culture"] if summary["benchmark"] == "knowgen"
             else ["paper WiScore", "paper strict", "verified", "verified strict"])
    headline = "".join(_headline(n, s) for n, s in runs.items())
    cat_rows = {n: _category_rows(s) for n, s in runs.items()}
    cats = sorted({c for r in cat_rows.values() for c in r})
    cat_table = "".join(
        f'<tr><td class="l">{html.escape(c)}</td>' + "".join(
            f"<td>{cat_rows[n][c][0]}</td><td>{cat_rows[n][c][1]:.4f}</td>" if c in cat_rows[n] else "<td>0</td><td>-</td>"
            for n in runs) + "</tr>" for c in cats)
    cat_head = "".join(f"<th>n ({html.escape(n)})</th><th>score ({html.escape(n)})</th>" for n in runs)
    by_base = {r["id"]: r for r in base_records or []}
    items = "\n".join(_item(r, by_base.get(r["id"]) if base_records is not None else None) for r in records)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<h2>Scores</h2>
<table class="headline"><tr><th class="l">run</th>{''.join(f'<th>{h}</th>' for h in heads)}<th>items</th><th>failed</th></tr>
{headline}</table>
<p>Failures are left out of a score as the reference does; "strict" counts them as 0.</p>
<h2>Per category</h2>
<table class="categories"><tr><th class="l">category</th>{cat_head}</tr>{cat_table}</table>
{_chart(cat_rows)}
<h2>Items ({len(records)})</h2>
{items}
</body></html>
"""


def write_report(run_dir: Path | str, baseline_dir: Path | str | None = None, title: str = "evaluation",
                 out: Path | str | None = None, order: list[str] | None = None) -> Path:
    """The run's report.html; items in `order` (the benchmark's item ids) when given, else in the
    order they finished."""
    run_dir = Path(run_dir)
    records = list(ResultsLog(run_dir / "results.jsonl").latest_by_id().values())  # a retried item's outcome
    if order is not None:
        rank = {item_id: i for i, item_id in enumerate(order)}
        records.sort(key=lambda r: rank.get(r["id"], len(rank)))
    summary = json.loads((run_dir / "summary.json").read_text())
    base_records = base_summary = None
    if baseline_dir is not None and (Path(baseline_dir) / "summary.json").is_file():
        base_records = list(ResultsLog(Path(baseline_dir) / "results.jsonl").latest_by_id().values())
        base_summary = json.loads((Path(baseline_dir) / "summary.json").read_text())
    page = render(records, summary, run_dir.name, base_records, base_summary, title)
    path = Path(out) if out else run_dir / "report.html"
    atomic_write(path, page.encode("utf-8"))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gsjax.eval.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an evaluation run folder (results.jsonl, summary.json)")
    ap.add_argument("--baseline", type=Path, default=None, help="the no-search baseline's run folder")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    print(write_report(args.run, args.baseline, title=f"evaluation: {args.run.name}", out=args.out))


if __name__ == "__main__":
    main()
