r"""SFT warm start, then agentic GRPO, then held-out evaluation.

  python -m gsjax.train --config=configs/grpo.py
      The embedded default: the offline world and a tiny policy on the CPU (2 layers, d=128, a
      2048-token BPE). About 12 minutes on 2 cores; prints the held-out mean reward of the
      no-search baseline, the SFT policy and the GRPO policy.
  python -m gsjax.train --config=configs/grpo.py:test
      The same pipeline at toy size (a tiny world, a few steps): what the tests run.
  python -m gsjax.train --config=configs/grpo.py:qwen3_8b --config.model.path=/ckpt/Gen-Searcher-SFT-8B \
      --config.data.rl_data=/data/rl_data.json --config.data.eval_data=/data/KnowGen-Bench.json \
      --config.reward.generator_urls='("http://gen-host:8000",)' --config.reward.judge_base_url=https://api.openai.com/v1
      The reference's run: real search (SERPER_KEY_ID), Jina reader (JINA_API_KEYS), 8 prompts x 6
      samples per step, lr 1e-6, clip 0.2/0.28, dual clip 3, no KL, seq-mean-token-sum.
  python -m gsjax.train --config=configs/grpo.py:qwen3vl_8b --config.model.path=/ckpt/Gen-Searcher-SFT-8B ...
      The same recipe with the paper's policy, Qwen3-VL-8B: the tools' images (up to 5 per
      response, each at most 160,000 pixels) are shown to it as pixels.
"""

import ml_collections

from gsjax.agent.texts import agent_texts_config
from gsjax.agent.tools.toolbox import tools_config
from gsjax.rewards.backends import reward_config

PRESETS = ("default", "test", "image_only", "copy_heads", "cpu_long", "qwen3_8b", "qwen3vl_8b")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "runs/grpo"
    # A rerun in the same workdir resumes it; with other settings it is refused (gsjax/train.py:pin_config)
    # unless fresh=True, which removes the earlier run's outputs first.
    c.fresh = False

    c.data = ml_collections.ConfigDict()
    c.data.world = True  # the offline world (built in workdir/world); False = the files below
    c.data.world_size = ml_collections.ConfigDict(dict(
        seed=0, n_train_entities=1000, n_eval_entities=150, n_train_prompts=1400, n_eval_prompts=100,
        image_only_share=0.0))  # entities whose looks only their photos show (no page describes them)
    # recoveries: the share of SFT trajectories with one mistaken tool call (untrained context) before
    # the right one (gsjax/world/expert.py, Slip; measured in docs/training.md). plan: the first thought
    # also says what the picture needs (its looks, and its motto where the prompt asks for text), and
    # the last thought repeats it (gsjax/world/expert.py, `_needs`).
    c.data.expert = ml_collections.ConfigDict(dict(sft_prompts=1000, top_k=1, image_top_k=1, recoveries=0.0,
                                                   plan=False))
    # The world's BPE: "kept" learns it from the SFT trajectories as they are (names they repeat become
    # whole tokens); "fresh" with each fictional name replaced by a new one, so train and held-out
    # names split alike into syllables (measured worse: docs/training.md). world/assets.py:tokenizer_corpus.
    c.data.tokenizer_names = "kept"
    # Its pre-tokenizer: "qwen" (Qwen's split) or "capitalised" (a capitalised word never takes the
    # space or quote before it, so a name is the same tokens wherever it is written: gsjax/tokenizer.py;
    # measured in docs/training.md: names copied better, held-out reward not higher yet).
    c.data.tokenizer_split = "qwen"
    c.data.sft_data = ""  # sft_data.json (sharegpt)
    c.data.rl_data = ""  # rl_data.json
    c.data.eval_data = ""  # a KnowGen-format benchmark file (held-out prompts)

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # a policy or HF checkpoint folder; empty = a tiny model built from model.tiny
    c.model.architecture = ""  # a named architecture (qwen3_8b): what `gsjax.plan` compiles without a folder
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    # How the model runs (not what it is): scanned layers, rematerialisation ("none", "full", "dots",
    # "dots_no_batch"), attention of full passes ("blocked", "plain", "xla", "cudnn", "splash").
    c.model.scan_layers = False
    c.model.remat = "none"
    c.model.attention = "blocked"
    c.model.attention_block = 128
    c.model.cache_block = 0  # the sampler's attention walks the cache in blocks of this many keys (0 = at once)
    c.model.tiny = ml_collections.ConfigDict(dict(
        vocab_size=2048, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=32, tie_embeddings=True, rope_theta=10_000.0))
    # "random": as built; "copy_heads": a previous-token head and two induction heads set by hand, the
    # copying a pretrained LM starts with (gsjax/models/copy_heads.py; measured in docs/training.md).
    c.model.tiny_init = "random"
    # The circuit's options (gsjax/models/copy_heads.py, CopyHeads): two_back makes the second
    # induction head match the previous token two positions back (copies past a space or a single
    # letter that occurs everywhere); written_scale scales what layer 0 writes.
    c.model.copy_heads = ml_collections.ConfigDict(dict(two_back=False, written_scale=1.0))
    # With `enabled`, the tiny policy is a Qwen3-VL: this vision tower in front of the decoder above,
    # so it sees the tools' images as pixels (96x96 world photos: 144 patches, 36 image tokens each).
    # Off, it is text-only and sees one placeholder per image. `configs/grpo.py:image_only` compares both.
    c.model.tiny_vision = ml_collections.ConfigDict(dict(
        enabled=False, depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=8,
        temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=144,
        deepstack_visual_indexes=(0,), mrope_section=()))
    # A vision tower's attention ("plain" | "blocked": flash-style in blocks of this many patches). A
    # GRPO batch of the image-only preset holds ~20,000 patches: plain [heads, P, P] scores take GBs.
    c.model.vision_attention = "blocked"
    c.model.vision_attention_block = 256
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tp=1))

    c.agent = ml_collections.ConfigDict()
    c.agent.today = "2026-01-01"  # the date in the system prompt; "" = today (fixed here so cached data match)
    c.agent.limits = ml_collections.ConfigDict(dict(
        max_rounds=9, max_tokens_per_turn=192, max_conversation_tokens=1024, max_response_tokens=30000,
        images_per_response=5,
        max_pixels=160000, max_answer_refs=4, prompt="compact"))
    # The system prompt and the loop's messages from files ("" = gsjax's own; gsjax/agent/texts.py):
    # system, final, invalid_format, too_long. python -m gsjax.reference_texts writes the reference's.
    c.agent.texts = agent_texts_config()

    c.tools = tools_config(backend="local", extractive_sentences=2, max_images=5, workers=32)

    c.sft = ml_collections.ConfigDict(dict(
        steps=1000, lr=3e-3, warmup_frac=0.05, weight_decay=1e-6, clip_norm=1.0, row_len=1024, rows_per_batch=2,
        micro_batch_tokens=0, vocab_chunk=0, checkpoint_every=100, keep_checkpoints=2,
        # The loss weight of the tokens the policy reads (system, prompt, tool responses): 0 trains on
        # its own turns only, as the reference does; > 0 also on what the tools returned (gsjax/sft/data.py;
        # measured in docs/training.md).
        context_weight=0.0,
        train_vision=False))  # a Qwen3-VL policy's tower and mergers stay frozen in SFT, as the reference's

    c.rl = ml_collections.ConfigDict(dict(
        steps=30, prompts_per_step=8, group_size=4, lr=5e-4, weight_decay=0.01, clip_norm=1.0,
        temperature=1.0, top_p=1.0, top_k=0, clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.0,
        loss_agg="seq-mean-token-sum", normalize_std=True, drop_degenerate_groups=False, mismatch_cap=0.0,
        # Which episodes leave the group statistics or the update (gsjax/rl/grpo.py, docs/training.md):
        # "failures_out" (gsjax's rule: infrastructure failures out before the advantages), "reference"
        # (rllm's compact filtering as the reference runs it: unknown, error, overlong and repeated
        # episodes and every one with reward <= 0 leave the update after the advantages), or a list.
        filtering="failures_out",
        # Stop (keeping a checkpoint of the last good weights) after this many steps in a row in which
        # every episode's reward failed or the loss was not finite: each leaves the weights as they were.
        max_broken_steps=5,
        num_slots=32, cache_len=1024, micro_batch_tokens=0, vocab_chunk=0, checkpoint_every=5, keep_checkpoints=2,
        # Every episode of each step in workdir/rollouts/step_0001.jsonl... (conversation, answer, reward
        # parts, judge rationales, advantage; gsjax/rl/records.py); python -m gsjax.eval.rollout_report shows one.
        record_rollouts=True,
        # Who samples the rollouts (gsjax/sampling/backend.py): "jax" (the slot sampler in this process) or
        # "openai" (an OpenAI-compatible engine at rollout_url serving rollout_model: gsjax.serve_policy,
        # vLLM or SGLang, started on policy_sft with the rl.temperature / top_p / top_k and seed below;
        # token ids in and out, weights pushed each step as a Hugging Face folder it reloads from disk).
        rollout_backend="jax", rollout_url="", rollout_model="", rollout_key_env="",
        # Free the sampler's weights copy and KV cache while the learner updates (made again before the
        # next rollouts): a step holds the larger of its two phases, not both (gsjax.plan's resident).
        release_sampler=True,
        train_vision=True))  # the reference's RL trains the whole model (verl freeze_vision_tower: false)

    c.reward = reward_config()

    c.eval = ml_collections.ConfigDict(dict(prompts=100, temperature=1.0, top_p=1.0, num_slots=50, seed=12345))

    if preset in (None, "", "default"):
        pass
    elif preset == "test":
        c.workdir = "runs/grpo_test"
        c.data.world_size.update(n_train_entities=40, n_eval_entities=12, n_train_prompts=60, n_eval_prompts=8)
        c.data.expert.sft_prompts = 40
        c.model.tiny.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1)
        c.sft.update(steps=8, rows_per_batch=2, checkpoint_every=4)
        c.rl.update(steps=4, prompts_per_step=2, group_size=2, num_slots=4, checkpoint_every=2)
        c.eval.update(prompts=4, num_slots=4)
    elif preset == "image_only":
        # Every entity's looks are only in its photos (no page describes them), and the tiny policy
        # is a Qwen3-VL that sees the photos as pixels at their size (96x96: 36 image tokens).
        # The text-only control: --config.model.tiny_vision.enabled=False (docs/vision.md).
        c.workdir = "runs/grpo_image_only"
        c.data.world_size.image_only_share = 1.0
        c.model.tiny_vision.enabled = True
        c.agent.limits.max_pixels = 96 * 96
    elif preset in ("copy_heads", "cpu_long"):
        # The tiny policy that copies what the tools return (docs/training.md, "A copying circuit at
        # step 0"): hand-set previous-token and induction heads, slow rotary pairs to match on, a name
        # the same tokens wherever it is written, SFT also on the tools' text, and GRPO at lr 1e-4
        # (at the default 5e-4 it stopped answering for good by step 14).
        # No underscore in the workdir: with local_path "full" tool responses show image paths under
        # it, and this policy copies "IMG" "_" "001" by matching "_" (docs/training.md, "Where the
        # sampled episodes break"); local_path "name" below keeps the folder out of them.
        c.workdir = "runs/copyheads"
        c.model.tiny_init = "copy_heads"
        c.model.tiny.num_layers = 4  # 2 more layers past the circuit's two: the right names in sampled answers
        c.model.tiny.rope_theta = 1e6
        c.data.tokenizer_split = "capitalised"
        c.sft.context_weight = 1.0
        c.tools.local_path = "name"  # no work folder in what the policy reads; recorded in its agent.json
        c.data.expert.recoveries = 0.5  # half the trajectories show a mistaken call, then the right one
        c.data.expert.plan = True  # the first thought says what the picture needs; the last one copies it
        # the second induction head matches two back: a motto's word after the lone space the capitalised
        # split writes (docs/training.md, "The text's second word")
        c.model.copy_heads.update(two_back=True, written_scale=0.3)
        c.rl.lr = 1e-4
        if preset == "cpu_long":
            # The same recipe for 80 GRPO steps (about 75 minutes on 2 cores): where the curve goes
            # past the default's 30, and whether it collapses (docs/training.md, "A longer run").
            c.workdir = "runs/cpulong"
            c.rl.steps = 80
    elif preset in ("qwen3_8b", "qwen3vl_8b"):
        # The reference's recipe (reference-spec.md section 5) at Qwen3-8B, or at Qwen3-VL-8B (the
        # paper's policy, seeing the tools' images); `python -m gsjax.plan
        # --config=configs/grpo.py:<preset> --topology=v5p-16` compiles it (docs/scaling.md).
        c.workdir = f"runs/grpo_{preset}"
        c.data.world = False
        c.model.architecture = preset  # the shape gsjax.plan compiles; training loads model.path
        c.model.update(dtype="bfloat16", param_dtype="float32",  # fp32 master weights: lr 1e-6 vanishes in bf16
                       scan_layers=True, remat="full", attention="splash", attention_block=512, cache_block=4096)
        if preset == "qwen3vl_8b":
            # A learner micro-batch holds up to 131,072 patches (docs/scaling.md): the tower's attention
            # as flash attention in blocks of 512 patches (no [heads, P, P] scores), its 27 blocks
            # rematerialised (each keeps its input only) and scanned between deepstack taps (one
            # compiled block per run, not 27).
            c.model.update(vision_attention="blocked", vision_attention_block=512, vision_remat="full",
                           vision_scan_blocks=True)
        c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tp=2))  # tp 2: sampler weights halved per chip
        c.agent.today = ""
        c.agent.limits.update(max_tokens_per_turn=4096 + 128, max_conversation_tokens=36000,
                              max_response_tokens=30000, max_answer_refs=5, prompt="full",
                              images_per_response=5, max_pixels=160_000)
        c.tools.update(backend="http", extractive_sentences=0, workers=128)
        c.sft.steps = 0  # start from an SFT checkpoint (model.path)
        c.rl.update(steps=300, prompts_per_step=8, group_size=6, lr=1e-6, weight_decay=0.01, clip_low=0.2, filtering="reference",
                    clip_high=0.28, dual_clip=3.0, kl_coef=0.0, loss_agg="seq-mean-token-sum",
                    temperature=0.7, top_p=0.95, top_k=0,
                    # 16 conversations per process at once, each up to 36,864 tokens (v5p-16 has 2 hosts:
                    # 32 of a step's 48 at once); more slots do not fit beside the learner (docs/scaling.md)
                    num_slots=16, cache_len=36864,
                    micro_batch_tokens=37000, vocab_chunk=8192,  # the reference's dynamic batch per GPU
                    checkpoint_every=20, keep_checkpoints=3)
        c.reward.update(generator="http", judge="openai")
        c.eval.update(prompts=630, temperature=0.6, top_p=0.9, num_slots=16)
    else:
        raise ValueError(f"unknown preset {preset!r} for configs/grpo.py; expected one of {', '.join(PRESETS)}")
    return c
