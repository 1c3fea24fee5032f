"""The prompt texts from files (gsjax/agent/texts.py): the episode, the policy's agent.json, the
judges and evaluation speak the words the config names, and `gsjax.reference_texts` reads them
from a checkout laid out as the reference's (built here with words of our own)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from PIL import Image

from gsjax import config as config_lib
from gsjax.agent import protocol
from gsjax.agent.episode import Continue, Episode
from gsjax.agent.protocol import AgentLimits
from gsjax.agent.texts import AGENT_TEXT_KEYS, AgentTexts
from gsjax.agent.types import Answer
from gsjax.bench.loopback_servers import IMAGE_VERDICT, TEXT_VERDICT, JudgeServer
from gsjax.reference_texts import AGENT_FILE, KNOWGEN_FILE, REWARD_FILE, TEXTS, config_flags, write_texts

ROOT = Path(__file__).resolve().parents[1]
TODAY = datetime.date(2026, 3, 7)
OURS = AgentTexts(system="You draw things. Date: ", final="LAST CALL: answer now.",
                  invalid_format="Unreadable, try again.", too_long="Cut off, be brief.")


def _files(folder: Path, texts: dict[str, str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, text in texts.items():
        (folder / f"{key}.txt").write_text(text, encoding="utf-8")
        paths[key] = str(folder / f"{key}.txt")
    return paths


# ------------------------------------------------------------------------------ the episode's words


def test_an_episode_speaks_the_texts_it_is_given_and_gsjax_words_by_default():
    limits = AgentLimits(max_rounds=3)
    for texts, expected in ((OURS, OURS), (AgentTexts(), None)):
        ep = Episode("Draw a cat.", TODAY, limits, texts)
        assert isinstance(ep.on_assistant("<think>no action</think>", "stop"), Continue)
        assert isinstance(ep.on_assistant("<think>cut", "length"), Continue)
        assert isinstance(ep.on_assistant("<think>still nothing</think>", "stop"), Continue)  # rounds run out
        said = [m["content"] for m in ep.messages if m["role"] != "assistant"]
        if expected is None:
            assert said == [protocol.system_prompt(TODAY, limits), "Draw a cat.", protocol.INVALID_FORMAT_MESSAGE,
                            protocol.TOO_LONG_MESSAGE, protocol.INVALID_FORMAT_MESSAGE, protocol.FINAL_MESSAGE]
        else:
            # The system text as written, today's date appended as the reference appends it.
            assert said == ["You draw things. Date: 2026-03-07", "Draw a cat.", "Unreadable, try again.",
                            "Cut off, be brief.", "Unreadable, try again.", "LAST CALL: answer now."]


def test_texts_come_from_the_files_a_config_block_names_with_errors_that_name_the_key(tmp_path):
    paths = _files(tmp_path, {"system": "Sys {not a placeholder}\n", "too_long": "Shorter!"})
    texts = AgentTexts.from_files({"system": paths["system"], "final": "", "invalid_format": "",
                                   "too_long": paths["too_long"]})
    assert texts == AgentTexts(system="Sys {not a placeholder}\n", too_long="Shorter!")
    assert texts.recorded() == {"system": "Sys {not a placeholder}\n", "too_long": "Shorter!"}
    assert texts.final_message == protocol.FINAL_MESSAGE  # not named: gsjax's own
    assert AgentTexts(final="F").over(texts) == AgentTexts(system=texts.system, final="F", too_long="Shorter!")
    with pytest.raises(FileNotFoundError, match=r"agent.texts.final: '.*nowhere.txt' is not a file"):
        AgentTexts.from_files({"final": str(tmp_path / "nowhere.txt")})
    (tmp_path / "blank.txt").write_text(" \n")
    with pytest.raises(ValueError, match=r"agent.texts.system: '.*blank.txt' is empty"):
        AgentTexts.from_files({"system": str(tmp_path / "blank.txt")})
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"agent.texts.system: '.*latin1.txt' is not UTF-8"):
        AgentTexts.from_files({"system": str(tmp_path / "latin1.txt")})
    with pytest.raises(ValueError, match=r"agent.texts: unknown key\(s\) \['sytem'\]"):
        AgentTexts.from_files({"sytem": paths["system"]})


# ------------------------------------------------------------------------------ the policy folder


def test_a_policy_keeps_its_texts_in_agent_json_and_a_file_named_in_the_config_wins(tmp_path):
    from flax import nnx

    from gsjax.agent.policy import AGENT_FILE as POLICY_AGENT_FILE
    from gsjax.agent.policy import Policy, load_policy, save_policy
    from gsjax.eval.agents import PolicyAgent
    from gsjax.models.qwen3 import Qwen3, tiny_config
    from gsjax.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe(["<think></think><tool_call></tool_call><answer></answer>"], 300)
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    texts = AgentTexts(system=OURS.system, final=OURS.final)
    folder = save_policy(Policy(model, tok, texts=texts), tmp_path / "policy")
    assert json.loads((folder / POLICY_AGENT_FILE).read_text())["texts"] == texts.recorded()
    assert load_policy(folder).texts == texts
    plain = save_policy(Policy(model, tok), tmp_path / "plain")
    assert json.loads((plain / POLICY_AGENT_FILE).read_text())["texts"] == {}
    # Evaluation: a file named in the config replaces that text only; the rest stay the policy's.
    agent = PolicyAgent(folder, None, TODAY, num_slots=1, cache_len=64, texts=AgentTexts(final="Answer!"))
    assert agent.policy.texts == AgentTexts(system=OURS.system, final="Answer!")
    assert agent.engine.texts == agent.policy.texts
    (folder / POLICY_AGENT_FILE).write_text(json.dumps({"texts": {"sytem": "x"}}))
    with pytest.raises(ValueError, match="'texts': AgentTexts fields"):
        load_policy(folder)


# ------------------------------------------------------------------------------ the judges' rubrics


def _images(tmp_path: Path) -> tuple[str, str]:
    paths = []
    for name, color in (("gen.png", (200, 30, 30)), ("gt.png", (30, 30, 200))):
        Image.new("RGB", (64, 64), color).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths[0], paths[1]


def test_the_judges_send_the_rubrics_the_config_names(tmp_path):
    from gsjax.rewards.backends import build_judge, reward_config
    from gsjax.rewards.rubrics import IMAGE_JUDGE_SYSTEM_PROMPT, TEXT_JUDGE_SYSTEM_PROMPT

    gen, gt = _images(tmp_path)
    answer = Answer("A red square.", ())
    rubrics = _files(tmp_path / "rubrics", {"image": "Grade image 1 against image 2 as JSON.",
                                            "text": "Grade the answer against the image as JSON."})
    with JudgeServer() as server:
        for image_rubric, text_rubric in (("", ""), (rubrics["image"], rubrics["text"])):
            cfg = reward_config()
            cfg.update(judge="openai", judge_base_url=server.url + "/v1", judge_key_env="",
                       image_rubric=image_rubric, text_rubric=text_rubric)
            judge = build_judge(cfg, None)
            scores = judge.judge_image("7", "Draw a red square.", gen, gt)
            text = judge.judge_text("7", "Draw a red square.", gt, answer)
            judge.close()
            # The server tells the two judges apart by their images, whatever the rubric says.
            assert scores.visual_correctness == IMAGE_VERDICT["visual_correctness"]
            assert text.score == TEXT_VERDICT["score"]
    assert server.systems == [IMAGE_JUDGE_SYSTEM_PROMPT, TEXT_JUDGE_SYSTEM_PROMPT,
                              "Grade image 1 against image 2 as JSON.", "Grade the answer against the image as JSON."]
    cfg.text_rubric = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="reward.text_rubric: '.*missing.txt' is not a file"):
        build_judge(cfg, None)


def test_the_wise_judge_sends_the_rubric_the_config_names(tmp_path):
    from gsjax.data.formats import WiseItem
    from gsjax.eval.wise_judge import WISE_JUDGE_SYSTEM_PROMPT, OpenAIWiseJudge

    gen, _ = _images(tmp_path)
    item = WiseItem(1, "A mooncake", "This refers to mooncakes", "Cultural knowledge", "x")
    verdict = {"rationale": "r", "consistency": 2, "realism": 1, "aesthetic_quality": 1, "verified": 1}
    with JudgeServer(verdicts=lambda *a: verdict) as server:
        for rubric in ("", "Score consistency, realism and aesthetic_quality 0-2 and verified 0/1, as JSON."):
            judge = OpenAIWiseJudge(server.url + "/v1", "judge", "", rubric=rubric)
            assert judge.judge_wise(item, gen).consistency == 2
    assert server.systems == [WISE_JUDGE_SYSTEM_PROMPT,
                              "Score consistency, realism and aesthetic_quality 0-2 and verified 0/1, as JSON."]


# ------------------------------------------------------------------------------ evaluation end to end


def test_an_evaluation_speaks_the_config_texts_and_a_changed_text_is_another_run(tmp_path):
    from gsjax.eval import cli
    from gsjax.world.build import build_world

    world = tmp_path / "world"
    build_world(world, seed=0, n_train_entities=28, n_eval_entities=12, n_train_prompts=10, n_eval_prompts=4)
    paths = _files(tmp_path / "texts", {"system": "Our words for the expert. Today: "})
    overrides = dict(workdir=str(tmp_path / "w"), data__world_dir=str(world), data__limit=2, eval__baseline=False,
                     eval__report=False, agent__texts__system=paths["system"])
    cfg = config_lib.load("configs/eval_knowgen.py:test", **overrides)
    summary = cli.run(cfg, progress=False)["expert"]
    assert summary["recorded"] == 2 and summary["answered"] == 1.0
    records = [json.loads(x) for x in (tmp_path / "w/expert/results.jsonl").read_text().splitlines()]
    assert {r["messages"][0]["content"] for r in records} == {"Our words for the expert. Today: 2026-01-01"}
    (tmp_path / "texts/system.txt").write_text("Other words. Today: ")
    with pytest.raises(ValueError, match=r"holds a run of something else \(\{.texts.:"):
        cli.run(config_lib.load("configs/eval_knowgen.py:test", **overrides), progress=False)


# ------------------------------------------------------------------------------ the extractor


_AGENT_SOURCE = '''
import os

FINAL_MESSAGE = """
=== LAST ROUND ===
Answer now.
""".strip()

SYSTEM_PROMPT_GEN_IMAGE = "You ground prompts. " + """Use the tools.
 """


def step(too_long):
    if too_long:
        observation = (
            "=== RESPONSE TOO LONG ===\\n"
            "Say less."
        )
    else:
        observation = "Error: Invalid format. Use a tag."
    return observation
'''
_REWARD_SOURCE = '''
WORLDGEN_SYSTEM_PROMPT = r"""Judge the image {strictly}."""
TEXT_REWARD_SYSTEM_PROMPT = r"""Judge the answer."""
'''
_KNOWGEN_SOURCE = '''
SCORE_KEYS = ("faithfulness",)
SYSTEM_PROMPT = r"""Judge the image {strictly}."""
'''


def _checkout(root: Path, agent: str = _AGENT_SOURCE, reward: str = _REWARD_SOURCE) -> Path:
    for rel, text in ((AGENT_FILE, agent), (REWARD_FILE, reward), (KNOWGEN_FILE, _KNOWGEN_SOURCE)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_extractor_reads_each_text_from_a_checkout_laid_out_as_the_references(tmp_path):
    files = write_texts(_checkout(tmp_path / "ref"), tmp_path / "out")
    read = {name: path.read_text(encoding="utf-8") for name, path in files.items()}
    assert read == {"system": "You ground prompts. Use the tools.\n ", "final": "=== LAST ROUND ===\nAnswer now.",
                    "invalid_format": "Error: Invalid format. Use a tag.",
                    "too_long": "=== RESPONSE TOO LONG ===\nSay less.",
                    "image_rubric": "Judge the image {strictly}.", "text_rubric": "Judge the answer."}
    sources = json.loads((tmp_path / "out/sources.json").read_text())
    assert sources["final"]["name"] == "FINAL_MESSAGE" and sources["too_long"]["prefix"].startswith("===")
    # The printed flags load them back: each config key reads its own file.
    flags = dict(f[len("--config."):].split("=", 1) for f in config_flags(files))
    assert set(flags) == {key for key, _ in TEXTS.values()}
    agent = AgentTexts.from_files({k.split(".")[-1]: v for k, v in flags.items() if k.startswith("agent.texts.")})
    assert agent == AgentTexts(**{k: read[k] for k in AGENT_TEXT_KEYS})
    assert Episode("p", TODAY, AgentLimits(), agent).messages[0]["content"] == read["system"] + "2026-03-07"


def test_the_extractor_says_what_it_could_not_find(tmp_path):
    with pytest.raises(FileNotFoundError, match="a checkout of tulerfeng/Gen-Searcher"):
        write_texts(tmp_path / "empty", tmp_path / "out")
    renamed = _checkout(tmp_path / "a", agent=_AGENT_SOURCE.replace("FINAL_MESSAGE", "LAST_MESSAGE"))
    with pytest.raises(ValueError, match="no module-level assignment to FINAL_MESSAGE"):
        write_texts(renamed, tmp_path / "out")
    computed = _checkout(tmp_path / "b", agent=_AGENT_SOURCE.replace('"""\n=== LAST', 'f"""\n=== LAST {os.sep}'))
    with pytest.raises(ValueError, match="FINAL_MESSAGE: line .* not a string made of literals"):
        write_texts(computed, tmp_path / "out")
    twice = _checkout(tmp_path / "c", agent=_AGENT_SOURCE + '\nOTHER = "Error: Invalid format. Again."\n')
    with pytest.raises(ValueError, match="one string literal starting with 'Error: Invalid format', found 2"):
        write_texts(twice, tmp_path / "out")
    differ = _checkout(tmp_path / "d", reward=_REWARD_SOURCE.replace("{strictly}", "{loosely}"))
    with pytest.raises(ValueError, match="two copies of the image_rubric differ"):
        write_texts(differ, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before everything was found
