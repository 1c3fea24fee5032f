"""SFT then agentic GRPO, then a held-out evaluation: `python -m gsjax.train --config=configs/grpo.py`.

    python -m gsjax.train --config=configs/grpo.py
        The embedded default, on the CPU: builds the offline world, has the scripted expert write
        SFT trajectories, warm-starts a tiny policy with SFT, runs GRPO with the world's generator
        and judge, and prints the held-out mean reward of a no-search baseline, the SFT policy and
        the GRPO policy.
    python -m gsjax.train --config=configs/grpo.py:qwen3_8b --config.model.path=/ckpt/Gen-Searcher-SFT-8B ...
        A real checkpoint, real tools, an OpenAI-compatible judge and a /generate server.
    python -m gsjax.train --config=configs/sft.py
        SFT only (then the held-out evaluation of the SFT policy).

Everything a run makes is under `workdir`: the world and data (offline), `policy_sft/` and
`policy_grpo/` (policy folders, see gsjax/agent/policy.py), `ckpt_sft/` and `ckpt_grpo/`
(orbax), `metrics.jsonl` and `tensorboard/`, `rollouts/step_0001.jsonl`... (every GRPO episode on
record, gsjax/rl/records.py; `python -m gsjax.eval.rollout_report` shows a step), `summary.json`.
Rerunning the same command resumes: finished phases are skipped, an interrupted phase continues
from its last checkpoint with the same data order and the same rollout seeds (a step redone
replaces its rollouts file).

One mesh (`mesh`: data, fsdp, tp) for the whole run: the SFT step, the GRPO update and its frozen
reference run on it, and the rollout sampler on this process's block of it. Started on several
hosts (`launch/`), every process runs this same program: each rolls out and scores its own share
of a step's prompts (and of the held-out prompts), the learner steps on all of them as one global
batch, and process 0 alone writes metrics, TensorBoard, rollout records (every process's episodes),
policy folders and the summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from tqdm import tqdm

from gsjax import config as config_lib
from gsjax import metrics as metrics_lib
from gsjax.agent.policy import AGENT_FILE, Policy, load_policy, save_policy
from gsjax.agent.protocol import AgentLimits, prompt_date
from gsjax.agent.texts import AgentTexts
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.agent.tools.toolbox import NoTools
from gsjax.checkpoint import Checkpointer
from gsjax.data.formats import SFTExample, read_knowgen, read_rl_data, read_sft_data
from gsjax.fileio import atomic_write
from gsjax.agent.vision import PolicyImages
from gsjax.models.copy_heads import CopyHeads, set_copy_heads
from gsjax.models.hf_io import RUN_FIELDS, with_run
from gsjax.models.interface import VisionLM
from gsjax.models.qwen3 import Qwen3, Qwen3Config
from gsjax.models.qwen3_vl import Qwen3VL, Qwen3VLConfig
from gsjax.models.qwen3_vl_vision import VisionConfig
from gsjax.parallel import barrier, initialize_distributed, is_primary, make_mesh, process_mesh, process_share, shard_module
from gsjax.rewards.backends import build_rewards
from gsjax.rl.grpo import LossConfig, parse_filtering
from gsjax.rl.loop import GRPOLoop, Prompt, evaluate
from gsjax.rl.records import ROLLOUTS_DIR
from gsjax.rl.trainer import SKIP_NONFINITE, GRPOConfig, GRPOTrainer
from gsjax.sampling import SamplingParams
from gsjax.sft.data import SFTImages, batches, encode
from gsjax.sft.trainer import SFTConfig, SFTTrainer
from gsjax.tokenizer import Tokenizer

log = logging.getLogger("gsjax.train")

STEP_LINE = {"reward": "reward", "image_reward": "img", "text_reward": "txt", "advantage_abs_mean": "|adv|",
             "clip_frac": "clip", "mismatch_abs": "mismatch", "tool_calls": "tools/traj", "answered": "answered",
             "entropy": "entropy", "response_tokens": "written", "failed": "failed", "update_samples": "trained", "loss": "loss", "sample_tokens_per_s": "sample tok/s",
             "train_tokens_per_s": "train tok/s"}


@dataclasses.dataclass
class Data:
    world_dir: Path | None
    sft: list[SFTExample]
    rl: list[Prompt]
    heldout: list[Prompt]
    tokenizer: Tokenizer


def load_data(cfg: ml_collections.ConfigDict, workdir: Path, tools: ToolsConfig, limits: AgentLimits,
              today: datetime.date, texts: AgentTexts = AgentTexts()) -> Data:
    """The offline world's assets (built once, by process 0), or the files the config names."""
    if cfg.data.world:
        from gsjax.world.assets import ExpertSpec, WorldSpec, prepare

        def assets():
            return prepare(workdir, WorldSpec(**cfg.data.world_size), ExpertSpec(**cfg.data.expert), tools, limits,
                           today, cfg.model.tiny.vocab_size, cfg.data.tokenizer_names,
                           cfg.data.tokenizer_split, texts)

        if is_primary():
            assets()
        barrier("offline assets")
        a = assets()  # read back, as built
        rl = [Prompt(str(i.id), i.prompt, i.gt_image) for i in a.rl_items]
        heldout = [Prompt(str(i.id), i.prompt, i.gt_image) for i in a.eval_items]
        return Data(a.world_dir, a.sft_examples, rl, heldout[: cfg.eval.prompts], a.tokenizer)
    if not cfg.model.path:
        raise ValueError("data.world=False needs model.path (a checkpoint folder with tokenizer.json)")
    sft = read_sft_data(cfg.data.sft_data) if cfg.data.sft_data else []
    rl = [Prompt(str(i.id), i.prompt, i.gt_image) for i in read_rl_data(cfg.data.rl_data)] if cfg.data.rl_data else []
    heldout = ([Prompt(str(i.id), i.prompt, i.gt_image) for i in read_knowgen(cfg.data.eval_data)]
               if cfg.data.eval_data else [])
    return Data(None, sft, rl, heldout[: cfg.eval.prompts], Tokenizer.from_pretrained(cfg.model.path))


def run_settings(cfg: ml_collections.ConfigDict) -> dict:
    """How the model runs (`hf_io.RUN_FIELDS`): dtypes, scanned layers, remat, attention; and a
    vision tower's where the config sets them (`model.vision_attention`, `_block`, `vision_remat`,
    `vision_scan_blocks`)."""
    return {k: cfg.model[k] for k in RUN_FIELDS if k in cfg.model}


def initial_policy(cfg: ml_collections.ConfigDict, tok: Tokenizer, limits: AgentLimits, sampling: SamplingParams,
                   mesh, texts: AgentTexts = AgentTexts()) -> Policy:
    """The policy SFT starts from; `texts` (from files the config names) win over a loaded policy's own."""
    if cfg.model.path:
        policy = load_policy(cfg.model.path, mesh, progress=is_primary(), **run_settings(cfg))
        return dataclasses.replace(policy, limits=limits, sampling=sampling, local_path=cfg.tools.local_path,
                                   texts=texts.over(policy.texts))
    if cfg.model.architecture:
        raise ValueError(f"model.architecture={cfg.model.architecture!r} needs its weights: set model.path to a "
                         "checkpoint folder (the architecture name alone is for python -m gsjax.plan)")
    model = tiny_model(cfg, tok)
    shard_module(model, mesh)
    return Policy(model, tok, limits, sampling, cfg.tools.local_path, texts)


def tiny_model(cfg: ml_collections.ConfigDict, tok: Tokenizer) -> Qwen3 | Qwen3VL:
    """The policy built from `model.tiny`: a Qwen3 decoder, or with `model.tiny_vision.enabled` a
    Qwen3-VL of that decoder and a vision tower of `tiny_vision`'s sizes, which sees the tools'
    images as pixels (the text-only one sees one placeholder per image); run as `run_settings` say."""
    text = Qwen3Config(**{**cfg.model.tiny.to_dict(), "vocab_size": tok.vocab_size})
    vision = cfg.model.tiny_vision
    if not vision.enabled:
        return initialise(Qwen3(with_run(text, **run_settings(cfg)), rngs=nnx.Rngs(cfg.seed)), cfg)
    sizes = {k: v for k, v in vision.to_dict().items() if k not in ("enabled", "mrope_section")}
    half = text.head_dim // 2
    section = tuple(vision.mrope_section) or (half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16)
    text = dataclasses.replace(text, mrope_section=section, mrope_interleaved=True)
    tower = VisionConfig(**sizes, out_hidden_size=text.hidden_size)
    ids = {f: tok.token_to_id(t) for f, t in (("image_token_id", "<|image_pad|>"),
                                              ("vision_start_token_id", "<|vision_start|>"),
                                              ("vision_end_token_id", "<|vision_end|>"))}
    missing = [f for f, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"model.tiny_vision: the tokenizer has no token for {missing}")
    # gsjax shows no videos: an id past the vocabulary, which no sequence holds (config.json needs one)
    vl = Qwen3VLConfig(text, tower, **ids, video_token_id=tok.vocab_size)
    return initialise(Qwen3VL(with_run(vl, **run_settings(cfg)), rngs=nnx.Rngs(cfg.seed)), cfg)


def initialise(model, cfg: ml_collections.ConfigDict):
    """`model.tiny_init`: "random" keeps the model as built; "copy_heads" starts it with a
    previous-token head and two induction heads (gsjax/models/copy_heads.py)."""
    how = cfg.model.tiny_init
    if how == "copy_heads":
        set_copy_heads(model, CopyHeads(seed=cfg.seed, **cfg.model.get("copy_heads", {})))  # model.copy_heads.*
    elif how != "random":
        raise ValueError(f"model.tiny_init={how!r}: expected 'random' or 'copy_heads'")
    return model


def _finished(cfg: ml_collections.ConfigDict, out: Path, phase: str, mesh) -> Policy | None:
    """The policy a finished phase wrote, if it did (a rerun skips the phase)."""
    if not (out / AGENT_FILE).is_file():
        return None
    log.info("%s: reusing %s", phase, out)
    return load_policy(out, mesh, **run_settings(cfg))


def learner_row_len(cfg: ml_collections.ConfigDict) -> int:
    """Packed rows hold the longest conversation the sampler can hold (its cache length), rounded
    up to the attention's block."""
    block = cfg.model.attention_block
    return -(-cfg.rl.cache_len // block) * block


def _restore(ckpt: Checkpointer, trainer) -> dict | None:
    """Put the latest checkpoint's parameters and optimizer state into `trainer`; its record."""
    if ckpt.latest_step() is None:
        return None
    return restore_step(ckpt, trainer, None)


def restore_step(ckpt: Checkpointer, trainer, step: int | None) -> dict:
    """Put checkpoint `step`'s (None: the latest's) parameters and optimizer state into `trainer`;
    its record."""
    state, record = ckpt.restore({"params": trainer.params, "opt": trainer.opt_state}, step)
    trainer.params, trainer.opt_state = state["params"], state["opt"]
    return record


def _save(ckpt: Checkpointer, trainer, record: dict) -> None:
    ckpt.save(record["step"], {"params": trainer.params, "opt": trainer.opt_state}, record)


def sft_trainer(cfg: ml_collections.ConfigDict, model, mesh) -> SFTTrainer:
    """The SFT learner of `cfg.sft` over `model`: its parameters and optimizer state are what
    `ckpt_sft/` holds."""
    s = cfg.sft
    return SFTTrainer(model, SFTConfig(steps=s.steps, lr=s.lr, warmup_frac=s.warmup_frac, weight_decay=s.weight_decay,
                                       clip_norm=s.clip_norm, micro_batch_tokens=s.micro_batch_tokens,
                                       vocab_chunk=s.vocab_chunk, train_vision=s.train_vision), mesh=mesh)


def grpo_trainer(cfg: ml_collections.ConfigDict, model, mesh) -> GRPOTrainer:
    """The GRPO learner of `cfg.rl` over `model` (it donates the parameters it is given): its
    parameters and optimizer state are what `ckpt_grpo/` holds."""
    r = cfg.rl
    loss = LossConfig(clip_low=r.clip_low, clip_high=r.clip_high, dual_clip=r.dual_clip or None,
                      kl_coef=r.kl_coef, agg=r.loss_agg, mismatch_cap=r.mismatch_cap or None)
    return GRPOTrainer(model, GRPOConfig(
        lr=r.lr, weight_decay=r.weight_decay, clip_norm=r.clip_norm, temperature=r.temperature,
        normalize_std=r.normalize_std, drop_degenerate_groups=r.drop_degenerate_groups,
        filtering=parse_filtering(r.filtering), loss=loss,
        row_len=learner_row_len(cfg), micro_batch_tokens=r.micro_batch_tokens, vocab_chunk=r.vocab_chunk,
        train_vision=r.train_vision), mesh=mesh)


def sft_images(policy: Policy) -> dict:
    """`encode`'s image settings for a vision-language policy (the examples' image files as the
    reference's SFT shows them); none for a text-only one (one placeholder per image)."""
    if not isinstance(policy.model, VisionLM):
        return {}
    vision = policy.model.vl_cfg.vision
    processor = PolicyImages.for_tower(vision, policy.limits.max_pixels).processor
    return dict(images=SFTImages(processor, policy.limits.max_pixels), merge_size=vision.spatial_merge_size)


def sft_phase(cfg: ml_collections.ConfigDict, workdir: Path, policy: Policy, examples: list[SFTExample],
              mlog: metrics_lib.MetricsLog, mesh) -> Policy:
    out = workdir / "policy_sft"
    if done := _finished(cfg, out, "SFT", mesh):
        return done
    s = cfg.sft
    if s.steps == 0:
        return policy
    if not examples:
        raise ValueError("sft.steps > 0 but there are no SFT examples (data.sft_data)")
    encoded = [encode(policy.tokenizer, ex, s.row_len + 1, context_weight=s.context_weight, **sft_images(policy))
               for ex in examples]
    kept = [e for e in encoded if len(e.ids) <= s.row_len]  # a cut trajectory would lose its answer
    if not kept:
        raise ValueError(f"every SFT example is longer than sft.row_len={s.row_len} tokens")
    if len(kept) < len(encoded):
        log.info("SFT: %d of %d examples are longer than sft.row_len=%d tokens and are left out",
                 len(encoded) - len(kept), len(encoded), s.row_len)
    encoded = kept
    shown = sum(len(e.image_grids) for e in encoded if e.image_grids is not None)
    if shown:
        log.info("SFT: %d images shown to the policy as pixels (%d patches)", shown,
                 sum(int(e.image_grids.prod(axis=1).sum()) for e in encoded if e.image_grids is not None))
    trainer = sft_trainer(cfg, policy.model, mesh)
    data = batches(encoded, s.row_len, s.rows_per_batch, cfg.seed)
    with Checkpointer(workdir / "ckpt_sft", keep=s.keep_checkpoints) as ckpt:
        start = 0
        if record := _restore(ckpt, trainer):
            start = trainer.step_count = record["step"]
            log.info("SFT: resuming after step %d", start)
        for _ in range(start):  # the same batches, in the same order, as an uninterrupted run
            next(data)
        bar = tqdm(range(start + 1, s.steps + 1), desc="sft", initial=start, total=s.steps, disable=not is_primary())
        for step in bar:
            loss = trainer.train_step(next(data))
            bar.set_postfix(loss=f"{loss:.3f}")
            mlog.write("sft", step, {"loss": loss})
            if step % s.checkpoint_every == 0 or step == s.steps:
                _save(ckpt, trainer, {"step": step})
        ckpt.wait()
    policy = dataclasses.replace(policy, model=trainer.model)
    save_policy(policy, out)
    return policy


def prompt_stream(n: int, per_step: int, seed: int):
    """GRPO's prompt indices through grain: shuffled with `seed`, repeated, `per_step` at a time;
    the iterator's state goes into each checkpoint."""
    ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat().batch(per_step, drop_remainder=True)
    return iter(ds.to_iter_dataset())


ROLLOUT_BACKENDS = ("jax", "openai")


def rollout_backend(cfg: ml_collections.ConfigDict, policy: Policy, workdir: Path, mesh):
    """What samples GRPO's rollouts (`rl.rollout_backend`), sampling as the learner scores them (rl.*),
    whatever a reused policy's agent.json says."""
    r = cfg.rl
    if r.rollout_backend == "jax":
        return policy.sampler(r.num_slots, r.cache_len, seed=cfg.seed, mesh=process_mesh(mesh),
                              sampling=rl_sampling(cfg))
    if r.rollout_backend == "openai":
        from gsjax.sampling.served import ServedBackend

        if jax.process_count() > 1:
            raise ValueError("rl.rollout_backend='openai' runs on one process (each would push the weights)")
        if not r.rollout_url or not r.rollout_model:
            raise ValueError("rl.rollout_backend='openai' needs rl.rollout_url (the engine's base, e.g. "
                             "http://host:8001) and rl.rollout_model (the name it serves)")
        return ServedBackend(r.rollout_url, r.rollout_model, num_slots=r.num_slots, sampling=rl_sampling(cfg),
                             weights_dir=workdir / "rollout_weights", key_env=r.rollout_key_env)
    raise ValueError(f"rl.rollout_backend must be one of {', '.join(ROLLOUT_BACKENDS)}, got {r.rollout_backend!r}")


def grpo_phase(cfg: ml_collections.ConfigDict, workdir: Path, policy: Policy, prompts: list[Prompt], toolbox,
               rewards, today: datetime.date, mlog: metrics_lib.MetricsLog, mesh) -> Policy:
    out = workdir / "policy_grpo"
    if done := _finished(cfg, out, "GRPO", mesh):
        return done
    r = cfg.rl
    if r.steps == 0:
        return policy
    if len(prompts) < r.prompts_per_step:
        raise ValueError(f"rl.prompts_per_step is {r.prompts_per_step} but there are {len(prompts)} RL prompts")
    if r.prompts_per_step % jax.process_count():
        raise ValueError(f"rl.prompts_per_step={r.prompts_per_step} does not divide over {jax.process_count()} "
                         "processes (each rolls out whole groups)")
    # The trainer donates its parameters on every step: give it its own copy, the SFT policy is
    # still evaluated afterwards.
    graphdef, state = nnx.split(policy.model)
    trainer = grpo_trainer(cfg, nnx.merge(graphdef, jax.tree.map(jnp.copy, state)), mesh)
    backend = rollout_backend(cfg, policy, workdir, mesh)
    loop = GRPOLoop(trainer, policy.engine(backend, toolbox, today), rewards, r.group_size,
                    workdir / ROLLOUTS_DIR if r.record_rollouts else None, release_sampler=r.release_sampler)
    stream = prompt_stream(len(prompts), r.prompts_per_step, cfg.seed)
    with Checkpointer(workdir / "ckpt_grpo", keep=r.keep_checkpoints) as ckpt:
        start = 0
        if record := _restore(ckpt, trainer):
            stream.set_state(record["data"])
            start = record["step"]
            log.info("GRPO: resuming after step %d", start)
        broken = 0  # steps in a row in which every episode failed or the loss was not finite
        for step in tqdm(range(start + 1, r.steps + 1), desc="grpo", initial=start, total=r.steps,
                         disable=not is_primary()):
            batch = [prompts[int(i)] for i in next(stream)]  # the same on every process
            m = loop.step(process_share(batch), seed=cfg.seed * 1_000_003 + step, number=step)
            mlog.write("grpo", step, m)
            if is_primary():
                tqdm.write(metrics_lib.line(step, r.steps, m, STEP_LINE))
            broken = broken + 1 if is_broken_step(m) else 0
            if step % r.checkpoint_every == 0 or step == r.steps or broken >= r.max_broken_steps:
                _save(ckpt, trainer, {"step": step, "data": stream.get_state()})
            if broken >= r.max_broken_steps:
                ckpt.wait()
                raise RuntimeError(f"GRPO stopped at step {step}: {broken} steps in a row trained nothing because "
                                   f"every episode failed or the loss was not finite (last: "
                                   f"{m.get('skip_reason') or 'every reward failed'}); the weights of the last good "
                                   f"update are checkpointed in {workdir / 'ckpt_grpo'} (rl.max_broken_steps="
                                   f"{r.max_broken_steps}); metrics in {mlog.path}")
        ckpt.wait()
    policy = dataclasses.replace(policy, model=trainer.model)
    save_policy(policy, out)
    return policy


def rl_sampling(cfg: ml_collections.ConfigDict) -> SamplingParams:
    """How GRPO's rollouts sample: the one source for the sampler and the learner's temperature."""
    return SamplingParams(temperature=cfg.rl.temperature, top_p=cfg.rl.top_p, top_k=cfg.rl.top_k)


def is_broken_step(metrics: dict) -> bool:
    """A GRPO step that trained nothing for want of working infrastructure or finite numbers (every
    episode's reward failed, or the loss or gradient was not finite), as opposed to one whose
    episodes simply earned nothing to learn from."""
    return not math.isfinite(metrics["reward"]) or metrics.get("skip_reason") == SKIP_NONFINITE


def eval_phase(cfg: ml_collections.ConfigDict, workdir: Path, policies: dict[str, Policy], prompts: list[Prompt],
               toolbox, today: datetime.date, mesh) -> dict[str, dict[str, float]]:
    """Held-out mean reward of each policy; "no_search" is the first policy with its tools off
    (its answer cannot cite images, so the generator gets its gen_prompt alone: min_refs 0). Each
    process evaluates its share of the prompts."""
    e = cfg.eval
    sampling = SamplingParams(temperature=e.temperature, top_p=e.top_p)
    results: dict[str, dict[str, float]] = {}
    runs = [("no_search", next(iter(policies.values())), NoTools())] + [(n, p, toolbox) for n, p in policies.items()]
    for name, policy, tools in runs:
        rewards = build_rewards(cfg.reward, cfg_world(cfg, workdir), workdir / "eval_images" / name,
                                **({"min_refs": 0} if name == "no_search" else {}))
        sampler = policy.sampler(e.num_slots, cfg.rl.cache_len, seed=cfg.seed, sampling=sampling,
                                 mesh=process_mesh(mesh))
        results[name] = evaluate(policy.engine(sampler, tools, today), rewards, process_share(prompts), name,
                                 seed=e.seed, progress=is_primary())
        log.info("held-out %s: %s", name, results[name])
    return results


# Settings a rerun in the same folder may change: how the run is laid out, checkpointed and
# evaluated, not what it computes (the mesh changes floating-point sums only: tests/test_multihost.py).
RERUN_MAY_CHANGE = ("workdir", "fresh", "eval", "mesh", "sft.checkpoint_every", "sft.keep_checkpoints",
                    "rl.checkpoint_every", "rl.keep_checkpoints", "rl.max_broken_steps", "rl.record_rollouts",
                    "rl.rollout_backend", "rl.rollout_url", "rl.rollout_model", "rl.rollout_key_env",
                    "rl.release_sampler",
                    "tools.workers", "reward.workers")
# What a fresh start removes from the folder: every output of a run.
RUN_OUTPUTS = ("world", "data", "tokenizer", "tool_images", "ckpt_sft", "policy_sft", "ckpt_grpo", "policy_grpo",
               "rollout_images", ROLLOUTS_DIR, "rollout_weights", "eval_images", "metrics.jsonl", "tensorboard", "summary.json",
               "grpo_curve.png", "grpo_entropy.png", "config.json")


def pin_config(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """A folder holds one run: a rerun resumes it, so a rerun with other settings would silently
    reuse what the first one built (the world, finished phases). Refuse it, naming the keys, unless
    `fresh` asks to start over (the earlier outputs are removed). A phase's `steps` may still change
    while that phase has not finished (extending a run)."""
    file = workdir / "config.json"
    if not file.is_file():
        return
    before = json.loads(file.read_text())
    now = json.loads(json.dumps(config_lib.redacted(cfg), default=str))
    ignore = RERUN_MAY_CHANGE + tuple(f"{phase}.steps" for phase, out in (("sft", "policy_sft"), ("rl", "policy_grpo"))
                                      if not (workdir / out / AGENT_FILE).is_file())
    # A setting the earlier run's code did not have (or has since lost) is not a change of settings.
    diff = config_lib.changed_keys(before, now, ignore, common_only=True)
    if not diff:
        return
    said = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
    if not cfg.fresh:
        raise ValueError(f"{workdir} holds a run with other settings ({said}); rerun with the same settings to "
                         f"resume it, choose another --config.workdir, or add --config.fresh=True to start over "
                         f"in this folder (its outputs are removed)")
    if is_primary():
        log.warning("fresh start in %s (settings changed: %s): removing the earlier run's outputs", workdir, said)
        for name in RUN_OUTPUTS:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def cfg_world(cfg: ml_collections.ConfigDict, workdir: Path) -> Path | None:
    return workdir / "world" if cfg.data.world else None


def run(cfg: ml_collections.ConfigDict) -> dict:
    start = time.perf_counter()
    initialize_distributed()
    primary = is_primary()
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pin_config(cfg, workdir)
    barrier("config pinned")  # every process compared with the config the folder had before it is replaced
    if primary:
        config_lib.save(cfg, workdir / "config.json")
    today = prompt_date(cfg.agent.today)
    limits = AgentLimits(**cfg.agent.limits)
    texts = AgentTexts.from_files(cfg.agent.texts)
    tools_cfg = ToolsConfig.from_dict({**cfg.tools.to_dict(), "image_dir": cfg.tools.image_dir
                                       or str(workdir / "tool_images")})
    if cfg.data.world and tools_cfg.backend == "local":
        tools_cfg = dataclasses.replace(tools_cfg, world_dir=str(workdir / "world"))
    parse_filtering(cfg.rl.filtering)  # a misspelt filter stops the run before anything is built
    mesh = make_mesh(cfg.mesh.to_dict())
    if primary:
        log.info("mesh %s over %d devices, %d process(es); rollouts on %s per process", dict(mesh.shape),
                 mesh.size, jax.process_count(), dict(process_mesh(mesh).shape))
    mlog = metrics_lib.MetricsLog(workdir, enabled=primary)
    data = load_data(cfg, workdir, tools_cfg, limits, today, texts)
    sampling = rl_sampling(cfg)
    policies: dict[str, Policy] = {}
    with build_toolbox(tools_cfg) as toolbox:
        policy = sft_phase(cfg, workdir, initial_policy(cfg, data.tokenizer, limits, sampling, mesh, texts), data.sft, mlog,
                           mesh)
        policies["sft"] = policy
        if cfg.rl.steps > 0:
            rewards = build_rewards(cfg.reward, cfg_world(cfg, workdir), workdir / "rollout_images")
            policies["grpo"] = grpo_phase(cfg, workdir, policy, data.rl, toolbox, rewards, today, mlog, mesh)
        results = eval_phase(cfg, workdir, policies, data.heldout, toolbox, today, mesh) if data.heldout else {}
    mlog.close()
    grpo = sorted((r for r in metrics_lib.read(mlog.path) if r["phase"] == "grpo"), key=lambda r: r["step"])
    curve = {k: [r.get(k) for r in grpo] for k in GRPO_CURVE}
    summary = {"heldout": results, "heldout_prompts": len(data.heldout), "seed": cfg.seed,
               "grpo_reward_by_step": curve["reward"], "grpo_by_step": curve,
               "minutes": (time.perf_counter() - start) / 60, "peak_rss_gib": peak_rss_gib()}
    if primary:
        if grpo:
            def series(key):
                return [(r["step"], r[key]) for r in grpo if key in r]
            metrics_lib.plot({"training reward": series("reward"), "text reward (answered)": series("text_reward"),
                              "answered fraction": series("answered")}, workdir / "grpo_curve.png",
                             "each GRPO step's rollouts")
            if series("entropy"):
                metrics_lib.plot({"entropy, nats per written token": series("entropy")},
                                 workdir / "grpo_entropy.png", "the policy's entropy in each GRPO step's rollouts")
        atomic_write(workdir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        print(format_summary(summary))
    barrier("end of run")
    return summary


# The per-step GRPO figures summary.json keeps (the learning curve; docs/training.md).
GRPO_CURVE = ("reward", "text_reward", "answered", "entropy", "response_tokens", "tool_calls")


def format_summary(summary: dict) -> str:
    lines = [f"held-out mean reward ({summary['heldout_prompts']} prompts; failures left out / as 0):"]
    for name, m in summary["heldout"].items():
        lines.append(f"  {name:<10} {m['reward']:.3f} / {m['reward_strict']:.3f}   image {m['image_reward']:.3f} "
                     f"text {m['text_reward']:.3f} answered {m['answered']:.2f} tools/traj {m['tool_calls']:.2f}")
    lines.append(f"wall time {summary['minutes']:.1f} min, peak memory {summary['peak_rss_gib']:.1f} GiB "
                 "(this process's resident set)")
    return "\n".join(lines)


def peak_rss_gib() -> float:
    """The most memory this process has held resident so far (getrusage's ru_maxrss, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    for noisy in ("bm25s", "absl", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = config_lib.cli(argv, "configs/grpo.py", __doc__)
    try:
        run(cfg)
    except BaseException:
        if jax.process_count() > 1:
            # Exit at once: the others are stopped by the launcher, and jax's shutdown barrier
            # would otherwise hold this process for minutes waiting for them.
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
