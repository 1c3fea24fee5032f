r"""KnowGen evaluation: an agent, the image generator and the image judge over a KnowGen-format file.

  python -m gsjax.eval --config=configs/eval_knowgen.py
      The embedded default: the offline world's 100 held-out prompts (the same world as
      configs/grpo.py, built once into workdir/world), the scripted expert as the agent, the world
      renderer and the world judge; plus the no-search baseline. About 1 minute on 2 cores.
  python -m gsjax.eval --config=configs/eval_knowgen.py --config.agent.backend=policy \
      --config.agent.policy=runs/grpo/policy_grpo
      A trained policy folder (written by python -m gsjax.train) on the same prompts.
  python -m gsjax.eval --config=configs/eval_knowgen.py:openai --config.data.benchmark=/data/KnowGen-Bench.json \
      --config.agent.model=gpt-4.1 --config.reward.generator_urls='("http://gen-host:8000",)'
      The reference's set-up: an OpenAI-compatible agent (GPT-4.1, or vLLM serving Gen-Searcher-8B
      at --config.agent.base_url), real search (SERPER_KEY_ID) and reader (JINA_API_KEYS), the
      POST /generate server, GPT-4.1 as judge (OPENAI_API_KEY).
  python -m gsjax.eval --config=configs/eval_knowgen.py:openai --config.data.benchmark=/data/KnowGen-Bench.json \
      --config.eval.stage=judge --config.data.results=/outputs/gen_searcher_8b/results.json
      Judge the images another agent generated (the reference's results.json), no agent or generator
      run; eval.stage=generate then eval.stage=judge splits a run in two (docs/eval.md).
"""

import ml_collections

from gsjax.agent.protocol import LIMIT_COUNTS
from gsjax.agent.texts import agent_texts_config
from gsjax.agent.tools.toolbox import tools_config
from gsjax.rewards.backends import reward_config

PRESETS = ("default", "test", "image_only", "openai")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.benchmark = "knowgen"
    c.workdir = "runs/eval_knowgen"
    c.run_name = ""  # "" = the agent's name (expert, none, policy-<folder>, openai-<model>)

    c.data = ml_collections.ConfigDict()
    c.data.benchmark = ""  # a KnowGen-format JSON; "" = the offline world's knowgen_eval.json
    c.data.world = True  # build / use the offline world (generator, judge, local tools, expert)
    c.data.world_dir = ""  # a built world; "" = build it once into workdir/world
    # configs/grpo.py's world: the trained policy is evaluated on the prompts it was held out from.
    c.data.world_size = ml_collections.ConfigDict(dict(
        seed=0, n_train_entities=1000, n_eval_entities=150, n_train_prompts=1400, n_eval_prompts=100,
        image_only_share=0.0))
    c.data.limit = 0  # the first N items only (0 = all)
    # eval.stage=judge: a results file to judge instead of running an agent: the reference's
    # results.json (id, prompt, output_path) or a gsjax run's results.jsonl ("" = the run folders').
    c.data.results = ""

    c.agent = ml_collections.ConfigDict()
    c.agent.backend = "expert"  # none | expert | policy | openai
    c.agent.policy = ""  # policy: a policy folder (runs/grpo/policy_grpo, or any HF folder + agent.json)
    c.agent.base_url = "https://api.openai.com/v1"  # openai: the chat endpoint's base
    c.agent.model = "gpt-4.1"
    c.agent.key_env = "OPENAI_API_KEY"  # the variable holding the key ("" = send none)
    c.agent.temperature = 0.6  # the reference's inference eval (policy and openai)
    c.agent.top_p = 0.9
    c.agent.max_tokens = 4096  # openai: per call
    c.agent.image_max_side = 1024  # openai: images sent as JPEG data URLs at most this large
    c.agent.num_slots = 32  # policy: items decoded at once
    c.agent.cache_len = 1024  # policy: KV cache length per slot
    # policy: the device mesh (slots over data x fsdp, heads over tp; num_slots must divide over data x fsdp)
    c.agent.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tp=1))
    c.agent.seed = 12345  # policy: rollouts seeded per item
    c.agent.today = "2026-01-01"  # the date in the system prompt ("" = today)
    # Episode limits of the expert and openai agents (a policy uses its own agent.json's: agent.policy_limits).
    c.agent.limits = ml_collections.ConfigDict(dict(
        max_rounds=9, max_tokens_per_turn=192, max_conversation_tokens=1024, images_per_response=5,
        max_pixels=160000, max_answer_refs=4, prompt="compact"))
    # policy: episode limits over its agent.json's, field by field (0 = as the policy's agent.json
    # says), e.g. --config.agent.policy_limits.max_conversation_tokens=1536 with agent.cache_len=1536
    # (a conversation also ends where the cache does).
    c.agent.policy_limits = ml_collections.ConfigDict({k: 0 for k in LIMIT_COUNTS})
    # The system prompt and the loop's messages from files ("" = gsjax's own; gsjax/agent/texts.py):
    # system, final, invalid_format, too_long. python -m gsjax.reference_texts writes the reference's.
    # A policy is spoken to as its agent.json says, except where a file is named here.
    c.agent.texts = agent_texts_config()
    c.agent.expert = ml_collections.ConfigDict(dict(top_k=1, image_top_k=1))

    # As in configs/grpo.py, so a trained policy sees the tool outputs it was trained on.
    # local_path "" shows the image search's paths as the policy's agent.json says it was trained to
    # read them ("full" for the other agents and for checkpoints that do not say).
    c.tools = tools_config(backend="local", extractive_sentences=2, max_images=5, workers=32, local_path="")

    c.reward = reward_config()  # generator and judge backends (world | http | jax; world | openai)

    # stage: all (agent, generator, judge) | generate (no judge: images wait in the run folder) |
    # judge (no agent, no generator: the run folders' waiting images, or data.results).
    c.eval = ml_collections.ConfigDict(dict(concurrency=8, baseline=True, report=True, stage="all"))

    if preset in (None, "", "default"):
        pass
    elif preset == "test":  # a tiny world, for tests
        c.workdir = "runs/eval_knowgen_test"
        c.data.world_size.update(n_train_entities=28, n_eval_entities=12, n_train_prompts=40, n_eval_prompts=10)
        c.eval.concurrency = 2
    elif preset == "image_only":  # configs/grpo.py:image_only's world: looks only in the photos
        c.workdir = "runs/eval_knowgen_image_only"
        c.data.world_size.image_only_share = 1.0
    elif preset == "openai":
        c.workdir = "runs/eval_knowgen_openai"
        c.data.world = False
        c.agent.backend = "openai"
        c.agent.today = ""
        c.agent.max_tokens = 4096
        c.agent.limits.update(max_tokens_per_turn=4096, max_conversation_tokens=36000, max_answer_refs=5,
                              prompt="full")
        c.tools.update(backend="http", extractive_sentences=0, workers=128)
        c.reward.update(generator="http", judge="openai", judge_base_url="https://api.openai.com/v1")
        c.eval.concurrency = 5  # the reference's parallel tasks
    else:
        raise ValueError(f"unknown preset {preset!r} for configs/eval_knowgen.py; expected one of {', '.join(PRESETS)}")
    return c
