"""One GRPO step's rollouts (`workdir/rollouts/step_0003.jsonl`, gsjax/rl/records.py) as a
self-contained HTML page (images embedded, no scripts): each prompt with its G samples side by
side, one column each, showing the advantage the learner used (green above 0, red below, grey
at 0 or out of the update), the reward and its parts, the termination, the tool calls, the answer
with the references it chose, the generated image, the judges' scores and rationales, and the
conversation folded.

    python -m gsjax.eval.rollout_report runs/grpo/rollouts/step_0003.jsonl [--out step_0003.html]
"""

from __future__ import annotations

import argparse
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsjax.eval.report import CSS, figure
from gsjax.fileio import atomic_write
from gsjax.rl.records import read_step

MESSAGE_CHARS = 4000  # of each message in the folded conversation
_STEP_CSS = """
.group{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:16px 0}
.samples{display:grid;gap:10px;overflow-x:auto;margin-top:8px}
.sample{border:1px solid #ccc;border-top-width:6px;border-radius:4px;padding:6px 8px;min-width:240px;font-size:13px}
.sample.pos{border-top-color:#2e9d4f}.sample.neg{border-top-color:#d2423a}.sample.zero{border-top-color:#aaa}
.adv{font-size:20px;font-weight:700}.adv.pos{color:#1f7a3b}.adv.neg{color:#b3261e}.adv.zero{color:#777}
.badge{display:inline-block;font-size:11px;border-radius:3px;padding:0 5px;margin-left:4px;background:#eee;color:#555}
.badge.out{background:#fde8e6;color:#a33}.rationale{color:#444;font-style:italic}
ul.calls{margin:4px 0;padding-left:18px}
"""


def _number(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def sign_class(record: dict[str, Any]) -> str:
    """How a sample's advantage is coloured: pos, neg, or zero (also when it is out of the update)."""
    a = record["advantage"]
    return "zero" if not record["in_update"] or a == 0 else "pos" if a > 0 else "neg"


def _call_line(call: dict[str, Any]) -> str:
    args = call.get("arguments") or {}
    what = args.get("url") if call["name"] == "browse" else args.get("queries") or args.get("query")
    if isinstance(what, list):
        what = "; ".join(map(str, what))
    line = html.escape(f"{call['name']}: {what or ''}")
    if call.get("images"):
        line += f" &rarr; {html.escape(', '.join(call['images']))}"
    if call.get("error"):
        line += f' <span class="err">error: {html.escape(call["error"])}</span>'
    return f"<li>{line}</li>"


def _judges(r: dict[str, Any]) -> str:
    out = []
    if j := r.get("image_judge"):
        t = "n/a" if j["text_accuracy"] is None else j["text_accuracy"]
        out.append(f"<div>image judge: F {j['faithfulness']} V {j['visual_correctness']} T {t} A {j['aesthetics']}"
                   f' <span class="rationale">{html.escape(j.get("rationale", ""))}</span></div>')
    if j := r.get("text_judge"):
        out.append(f'<div>text judge: {j["score"]} '
                   f'<span class="rationale">{html.escape(j.get("rationale", ""))}</span></div>')
    return "".join(out)


def _conversation(messages: Sequence[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        text = m.get("content", "")
        if len(text) > MESSAGE_CHARS:
            text = text[:MESSAGE_CHARS] + f"\n... ({len(text) - MESSAGE_CHARS} more characters)"
        images = f" [{len(m['images'])} images]" if m.get("images") else ""
        parts.append(f"<b>{html.escape(m.get('role', '?'))}</b>{images}\n{html.escape(text)}")
    body = "\n".join(parts)
    return f"<details><summary>conversation ({len(messages)} messages)</summary><pre>{body}</pre></details>"


def _sample(r: dict[str, Any]) -> str:
    cls = sign_class(r)
    badges = ""
    if not r["in_group_statistics"]:
        badges += '<span class="badge out">failed: out of the group statistics</span>'
    if r["masked"]:
        badges += '<span class="badge out">filtered</span>'
    if not r["in_update"]:
        badges += '<span class="badge out">out of the update</span>'
    parts = f"image {_number(r['image_part'])} &middot; text {_number(r['text_part'])}"
    reason = f'<div class="err">{html.escape(r["status"])}: {html.escape(r["reason"])}</div>' if r.get("reason") else ""
    answer = r.get("answer")
    shown = {s["img_id"]: s for s in r.get("shown", [])}
    refs = "".join(figure(ref.get("path"), f"{ref['img_id']}: {shown.get(ref['img_id'], {}).get('title', '')}", 72)
                   for ref in (answer or {}).get("references", []))
    calls = "".join(_call_line(c) for c in r.get("tool_calls", []))
    return f"""<div class="sample {cls}" id="s{r['step']}-{html.escape(r['prompt_id'])}-{r['group_index']}">
<div>sample {r['group_index']}{badges}</div>
<div class="adv {cls}" title="advantage">{r['advantage']:+.3f}</div>
<div><b>reward {_number(r['reward'])}</b> ({parts}) &middot; {html.escape(r['status'])}</div>{reason}
<div>termination <b>{html.escape(r['termination'])}</b> &middot; {len(r.get('tool_calls', []))} tool calls &middot;
{r.get('response_tokens', 0)} tokens written</div>
{f'<ul class="calls">{calls}</ul>' if calls else ''}
{f"<div><b>gen_prompt:</b> {html.escape(answer['gen_prompt'])}</div>" if answer else '<div><i>no answer</i></div>'}
{f'<div class="imgs refs">{refs}</div>' if refs else ''}
{f'<div class="imgs">{figure(r["generated"], "generated", 160)}</div>' if r.get("generated") else ''}
{_judges(r)}
{_conversation(r.get("messages", []))}
</div>"""


def groups(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records by prompt (in the order the prompts first appear), each group by group index."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    return [sorted(g, key=lambda r: r["group_index"]) for g in by_prompt.values()]


def _group(samples: list[dict[str, Any]]) -> str:
    first = samples[0]
    valid = [s["learner_reward"] for s in samples if s["in_group_statistics"]]
    mean = sum(valid) / len(valid) if valid else math.nan
    gt = figure(first["gt_image"], "ground truth", 120) if first.get("gt_image") else ""
    return f"""<section class="group" id="prompt-{html.escape(first['prompt_id'])}">
<div><b>{html.escape(first['prompt_id'])}</b> &middot; {len(samples)} samples &middot;
group mean reward {_number(mean)}</div>
<div class="imgs"><div class="prompt">{html.escape(first['prompt'])}</div>{gt}</div>
<div class="samples" style="grid-template-columns:repeat({len(samples)},minmax(240px,1fr))">
{''.join(_sample(s) for s in samples)}
</div></section>"""


def render(records: Sequence[dict[str, Any]], title: str) -> str:
    """The page of one step's records."""
    if not records:
        raise ValueError(f"{title}: no rollout records to show")
    gs = groups(records)
    ok = [r["reward"] for r in records if r["status"] != "failed"]
    trained = sum(r["in_update"] for r in records)
    adv = sum(abs(r["advantage"]) for r in records) / len(records)
    head = (f"step {records[0]['step']}: {len(gs)} prompts, {len(records)} episodes, mean reward "
            f"{_number(sum(ok) / len(ok) if ok else None)} (failures left out), mean |advantage| {adv:.3f}, "
            f"{trained} in the update")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}{_STEP_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(head)}</p>
{''.join(_group(g) for g in gs)}
</body></html>
"""


def write_report(step_path: Path | str, out: Path | str | None = None) -> Path:
    """The HTML page of a step file; by default beside it (`step_0003.html`)."""
    step_path = Path(step_path)
    if not step_path.is_file():
        raise FileNotFoundError(f"{step_path}: no such rollouts file (expected workdir/rollouts/step_NNNN.jsonl)")
    page = render(read_step(step_path), f"GRPO rollouts: {step_path.name}")
    path = Path(out) if out else step_path.with_suffix(".html")
    atomic_write(path, page.encode("utf-8"))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gsjax.eval.rollout_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step_file", type=Path, help="a GRPO step's rollouts (workdir/rollouts/step_NNNN.jsonl)")
    ap.add_argument("--out", type=Path, default=None, help="the HTML file (default: beside the step file)")
    args = ap.parse_args(argv)
    try:
        print(write_report(args.step_file, args.out))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
