"""Does a policy copy the names it reads? Teacher-forced on the expert's held-out trajectories.

    python -m gsjax.bench.name_copy --policy runs/grpo/policy_sft --run runs/grpo [--policy OTHER ...] [--split train]

The expert solves the first `--prompts` held-out prompts of the run's offline world (`RUN/world`,
with the run's agent limits); each policy then reads each solved trajectory in one full pass, and
at every token it would write (the assistant turns) its greedy next token is compared with the
expert's. Printed per policy, side by side: the mean negative log-likelihood of the assistant
tokens, the greedy accuracy on the tokens of the entities' names where the assistant writes them
(in thoughts, queries and the answer), and the share of those names written whole (every token
right). A held-out name was never trained on, so only a policy that copies it from the prompt or a
tool response gets it right: this measures the skill issue 14's K-Score needs, in a minute,
without sampling noise. The next column is the same test for the answer's scene word (the first
"billboard", "mug", ... in the gen_prompt, which the world's generator draws): the share of answers
whose scene word the policy writes whole, a word only the prompt holds. The last is the text the
prompt asks the picture to show (a motto "SWIFT HILLS", a code "MJ-388"), which only the page
holds: the share of its written copies (the last thought's quote, the answer's) the policy writes
whole. The expert writes the trajectories with the run's `data.expert.plan`. The policies must
share the world's tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Probe:
    ids: list[int]
    mask: list[int]  # 1 where the assistant writes
    name_tokens: list[list[int]]  # per written name occurrence, its token positions
    scene_tokens: list[int] = dataclasses.field(default_factory=list)  # the answer's first scene word's positions
    text_tokens: list[list[int]] = dataclasses.field(default_factory=list)  # per written copy of the key's text


def _written(enc, chat, start: int, end: int) -> list[int]:
    """The tokens of chat.text[start:end] when the assistant writes all of them, else []."""
    toks = [t for t, (a, b) in enumerate(enc.offsets) if t > 0 and b > start and a < end]
    return toks if toks and all(chat.loss_mask[t] for t in toks) else []


def _occurrences(enc, chat, strings: Sequence[str], after: str = "") -> list[list[int]]:
    """The token positions of each place the assistant writes one of `strings`, right after a
    match of the regex `after` (anywhere, by default)."""
    out = []
    for string in strings:
        for m in re.finditer(f"{after}({re.escape(string)})", chat.text):
            if toks := _written(enc, chat, m.start(1), m.end(1)):
                out.append(toks)
    return out


# A text the picture shows, where the expert writes it: its last thought's quote, the answer's sentence
# (the answer is JSON, so its quote is escaped). Its other copies (a name as text) are names.
TEXT_QUOTE = r'the text \\?"'


def probes(tok, episodes: Sequence, names: Sequence[Sequence[str]], scenes: Sequence[str] | None = None,
           texts: Sequence[str] | None = None) -> list[Probe]:
    """Each episode rendered as the policy reads it, with where the assistant writes each name and
    (given each episode's scene word and its answer's text as written, "" for none) the answer's
    first scene word and each copy of the text."""
    out = []
    for i, (episode, key_names) in enumerate(zip(episodes, names)):
        msgs = [{"role": m["role"], "content": m["content"]} for m in episode.messages]
        chat = tok.render_chat(msgs, add_generation_prompt=False)
        enc = tok.backend.encode(chat.text, add_special_tokens=False)
        if list(enc.ids) != list(chat.ids):  # BPE merged across a boundary: offsets would not line up
            continue
        occurrences = _occurrences(enc, chat, key_names)
        text = _occurrences(enc, chat, [texts[i]], TEXT_QUOTE) if texts is not None and texts[i] else []
        scene = []
        answer = chat.text.rfind("<answer>")
        if scenes is not None and answer >= 0:
            m = re.compile(rf"\b{re.escape(scenes[i])}\b", re.IGNORECASE).search(chat.text, answer)
            scene = _written(enc, chat, m.start(), m.end()) if m else []
        out.append(Probe(list(chat.ids), list(chat.loss_mask), occurrences, scene, text))
    return out


def score(policy, items: Sequence[Probe], bucket: int = 256) -> dict[str, float]:
    """Greedy guesses and log-likelihoods in one causal pass per trajectory (padded at the end to a
    multiple of `bucket` tokens, so a few shapes compile)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gsjax.models.interface import ModelInput

    @nnx.jit
    def guess(model, tokens):
        logits = model.logits(model.hidden_states(ModelInput(tokens)))
        return logits.argmax(-1), jax.nn.log_softmax(logits.astype(jnp.float32), -1)

    nll, right, whole, scene, text = [], [], [], [], []
    for p in items:
        n = len(p.ids)
        padded = np.full((1, -(-n // bucket) * bucket), policy.tokenizer.pad_id, np.int32)
        padded[0, :n] = p.ids
        greedy, logp = (np.asarray(a)[0] for a in guess(policy.model, jnp.asarray(padded)))
        ids = np.asarray(p.ids)
        written = np.flatnonzero(np.asarray(p.mask[1:], bool)) + 1  # token t, guessed at t - 1
        nll.append(float(-logp[written - 1, ids[written]].mean()))
        for toks in p.name_tokens:
            ok = [bool(greedy[t - 1] == ids[t]) for t in toks]
            right += ok
            whole.append(all(ok))
        if p.scene_tokens:
            scene.append(all(greedy[t - 1] == ids[t] for t in p.scene_tokens))
        text += [all(greedy[t - 1] == ids[t] for t in toks) for toks in p.text_tokens]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"assistant_nll": float(np.mean(nll)), "name_token_accuracy": mean(right), "names_whole": mean(whole),
            "names": len(whole), "scene_whole": mean(scene), "scenes": len(scene),
            "text_whole": mean(text), "texts": len(text)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", action="append", required=True, help="a policy folder (repeat to compare)")
    ap.add_argument("--run", required=True, help="the training run's workdir (its world/ and config.json)")
    ap.add_argument("--prompts", type=int, default=60, help="prompts the expert solves (default 60)")
    ap.add_argument("--split", default="eval", choices=("eval", "train"),
                    help="eval: held-out entities (default); train: the SFT prompts' own, for memorisation")
    args = ap.parse_args(argv)

    from gsjax.agent.policy import load_policy
    from gsjax.agent.protocol import AgentLimits, prompt_date
    from gsjax.agent.tools import ToolsConfig, build_toolbox
    from gsjax.world.expert import is_correct, solve_split, written_text

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    world = run / "world"
    tools = ToolsConfig.from_dict({**config["tools"], "backend": "local", "world_dir": str(world),
                                   "image_dir": str(run / "tool_images")})
    today = prompt_date(config["agent"]["today"])
    with build_toolbox(tools) as toolbox:
        solved = [r for r in solve_split(world, args.split, toolbox, today, limit=args.prompts, progress=False,
                                         limits=AgentLimits(**config["agent"]["limits"]), top_k=1, image_top_k=1,
                                         plan=bool(config["data"]["expert"].get("plan", False)))
                  if is_correct(r)]
    rows = []
    for folder in args.policy:
        policy = load_policy(folder)
        items = probes(policy.tokenizer, [r.episode for r in solved], [r.key.names for r in solved],
                       [r.key.scene for r in solved], [written_text(r.episode.answer) for r in solved])
        s = score(policy, items)
        rows.append([folder, len(items), s["names"], f"{s['assistant_nll']:.3f}", f"{s['name_token_accuracy']:.3f}",
                     f"{s['names_whole']:.3f}", f"{s['scene_whole']:.3f} of {s['scenes']}",
                     f"{s['text_whole']:.3f} of {s['texts']}"])
    print(f"{args.split} expert trajectories of {run}/world ({len(solved)} solved of the first {args.prompts}):")
    head = ["policy", "trajectories", "names written", "assistant NLL", "name-token accuracy", "names whole",
            "answer's scene word whole", "text whole"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
