"""Every rollout on record: one GRPO step's episodes as JSON lines, `workdir/rollouts/step_0001.jsonl`.

One line per trajectory, in the step's order (prompt by prompt, its G samples in group order):

    step, process          the GRPO step (numbered as metrics.jsonl numbers it) and the process that ran it
    prompt_id, prompt, gt_image, group_index
    termination            how the episode ended (`gsjax.agent.types.Termination`)
    messages               the conversation as the policy saw it: role, content, images (paths)
    tool_calls             each call: `message` (index in messages of the assistant turn that made it;
                           the tool's response is the next message), name, arguments, error, images
                           (the ids it showed), latency_s
    format_errors          turns that were neither a tool call nor an answer: message, kind, detail
    shown                  every image the tools showed: img_id, path, url, title, page_url
    answer                 gen_prompt and references (img_id, note, path), or null
    traj_tokens, response_tokens
    reward, image_part, text_part, status, reason     the reward and its parts (`RewardResult`)
    generated              the generated image's path (null when none was made)
    image_judge            faithfulness, visual_correctness, text_accuracy, aesthetics, rationale (or null)
    text_judge             score, rationale (or null)
    learner_reward         the reward the group statistics used (a failure counts 0 unless `failures_out`)
    in_group_statistics    whether it entered its group's mean and std
    masked                 filtered out of the update after the advantages (`rl.filtering`)
    in_update              whether its loss entered the update
    advantage              the advantage the learner used (0 for an episode out of the update)

The file is written whole (`atomic_write`), so a crash never leaves half of one, and a step redone
after a resume replaces it. With several processes, every process's records are gathered and
process 0 writes one file holding the whole step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax

from gsjax.agent.types import Answer, FormatError, ToolCall
from gsjax.fileio import atomic_write, read_jsonl
from gsjax.parallel import allgather_strings, is_primary

if TYPE_CHECKING:
    from gsjax.agent.rollout import Trajectory
    from gsjax.rewards.compute import ScoredEpisode
    from gsjax.rl.loop import Prompt
    from gsjax.rl.trainer import Sample, StepStatistics

ROLLOUTS_DIR = "rollouts"  # under the workdir


def step_file(rollouts_dir: Path, step: int) -> Path:
    """Where step `step`'s records go: `step_0001.jsonl`."""
    return Path(rollouts_dir) / f"step_{step:04d}.jsonl"


def _answer(answer: Answer | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    return {"gen_prompt": answer.gen_prompt,
            "references": [{"img_id": r.img_id, "note": r.note, "path": r.path} for r in answer.references]}


def _actions(t: Trajectory) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The trajectory's tool calls and format errors, each with the index of its assistant message."""
    assistant = [i for i, m in enumerate(t.messages) if m.get("role") == "assistant"]
    calls, errors = [], []
    for index, turn in zip(assistant, t.turns):
        if isinstance(turn.action, ToolCall):
            r = turn.result
            calls.append({"message": index, "name": turn.action.name, "arguments": turn.action.arguments,
                          "error": None if r is None else r.error,
                          "images": [] if r is None else [im.img_id for im in r.images],
                          "latency_s": None if r is None else round(r.latency_s, 3)})
        elif isinstance(turn.action, FormatError):
            errors.append({"message": index, "kind": turn.action.kind.value, "detail": turn.action.detail})
    return calls, errors


def episode_record(step: int, prompt: Prompt, t: Trajectory, scored: ScoredEpisode, sample: Sample,
                   advantage: float, in_update: bool) -> dict[str, Any]:
    """One trajectory's record (the module docstring lists its fields)."""
    r = scored.result
    calls, errors = _actions(t)
    return {
        "step": step, "process": jax.process_index(),
        "prompt_id": prompt.id, "prompt": prompt.prompt, "gt_image": prompt.gt_image,
        "group_index": t.task.group_index,
        "termination": t.termination.value,
        "messages": t.messages, "tool_calls": calls, "format_errors": errors,
        "shown": [dataclasses.asdict(s) for s in t.shown],
        "answer": _answer(t.answer),
        "traj_tokens": len(t.tokens), "response_tokens": int(sum(t.sampled)),
        "reward": r.reward, "image_part": r.image_part, "text_part": r.text_part, "status": r.status.value,
        "reason": r.reason, "generated": scored.generated_path,
        "image_judge": None if scored.image_scores is None else dataclasses.asdict(scored.image_scores),
        "text_judge": None if scored.text_score is None else dataclasses.asdict(scored.text_score),
        "learner_reward": sample.reward, "in_group_statistics": not sample.failed, "masked": sample.masked,
        "in_update": bool(in_update), "advantage": float(advantage),
    }


def step_records(step: int, prompts: Sequence[Prompt], trajs: Sequence[Trajectory], scored: Sequence[ScoredEpisode],
                 samples: Sequence[Sample], stats: StepStatistics) -> list[dict[str, Any]]:
    """This process's records of a step: trajectory i answers `prompts[i]`, became `samples[i]`, and
    `stats` are the learner's statistics of those samples."""
    n = len(trajs)
    if not len(prompts) == len(scored) == len(samples) == len(stats.advantages) == n:
        raise ValueError(f"step {step}: {len(prompts)} prompts, {n} trajectories, {len(scored)} rewards, "
                         f"{len(samples)} samples and {len(stats.advantages)} advantages; expected one of each "
                         "per episode")
    return [episode_record(step, p, t, s, x, a, u)
            for p, t, s, x, a, u in zip(prompts, trajs, scored, samples, stats.advantages, stats.in_update)]


def write_step(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Every process's `records`, gathered in process order, written whole by process 0 (every
    process calls this)."""
    lines = allgather_strings([json.dumps(r, ensure_ascii=False, default=str) for r in records])
    if is_primary():
        atomic_write(Path(path), "".join(line + "\n" for line in lines).encode("utf-8"))


def read_step(path: Path | str) -> list[dict[str, Any]]:
    """A step file's records, or a ValueError naming the file and line that is not JSON."""
    return read_jsonl(path, "a rollout record")
