"""Rewards in the offline world: better answers score higher, failures are recorded, groups run
concurrently."""

import random
from pathlib import Path

import numpy as np
import pytest

from gsjax.agent.types import Answer, AnswerRef, ImageRef, Termination
from gsjax.rewards.compute import RewardComputer, RewardInput
from gsjax.rewards.generator import GenRequest, GenResult, WorldGenerator, plan_request
from gsjax.rewards.judge import WorldJudgeBackend
from gsjax.rewards.types import RewardSettings, RewardStatus
from gsjax.world.build import build_world
from gsjax.world.prompts import read_truth

ORDINALS = ("first", "second")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=3, n_train_entities=80, n_eval_entities=40, n_train_prompts=10, n_eval_prompts=40)
    keys = [k for k in read_truth(root / "truth.json").values() if k.split == "eval"]
    computer = RewardComputer(WorldGenerator(root), WorldJudgeBackend(root), root / "generated", workers=4)
    return root, keys, computer


def _photo(root, key, i):
    return str(root / "images" / Path(key.reference_images[i][0]).name)


def _answer(key, root, gen_prompt, photo_key=None):
    photo_key = photo_key or key
    refs = tuple(AnswerRef(f"IMG_{i + 1:03d}", f"{name} reference", _photo(root, photo_key, i))
                 for i, name in enumerate(photo_key.names))
    return Answer(gen_prompt, refs)


def _input(key, root, answer, tag, termination=Termination.ANSWER):
    return RewardInput(key.id, key.prompt, str(root / key.gt_image), termination, answer, name=f"{key.id}-{tag}")


def _no_looks_prompt(key):
    subjects = " and ".join(f"{n} (the {o} reference image)" for n, o in zip(key.names, ORDINALS))
    return f"A {key.scene} showing {subjects}." + (f' Under it, the text "{key.text}".' if key.text else "")


def test_better_answers_score_higher(world, capsys):
    root, keys, computer = world
    rng = random.Random(0)
    best, no_looks, wrong = [], [], []
    for key in keys:
        other = rng.choice([o for o in keys if o.names != key.names and len(o.names) == len(key.names)])
        best.append(_input(key, root, _answer(key, root, key.gen_prompt), "best"))
        no_looks.append(_input(key, root, _answer(key, root, _no_looks_prompt(key)), "nolooks"))
        wrong_prompt = other.gen_prompt.replace(other.scene, key.scene)
        wrong.append(_input(key, root, _answer(key, root, wrong_prompt, photo_key=other), "wrong"))
    means = {}
    for name, inputs in (("best", best), ("no_looks", no_looks), ("wrong_entity", wrong)):
        results = [s.result for s in computer.score_many(inputs, progress=False)]
        assert all(r.status is RewardStatus.SCORED for r in results), [r.reason for r in results]
        means[name] = float(np.mean([r.reward for r in results]))
    with capsys.disabled():
        print(f"\nworld rewards over {len(keys)} held-out prompts: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    assert means["best"] >= 0.9
    assert means["wrong_entity"] <= means["best"] - 0.4
    assert means["wrong_entity"] < means["no_looks"] < means["best"]


def test_rules_and_failures_are_recorded_not_raised(world):
    root, keys, computer = world
    key = keys[0]
    good = _answer(key, root, key.gen_prompt)
    repeated = computer.score(_input(key, root, good, "rep", Termination.REPEATED)).result
    assert (repeated.status, repeated.reason) == (RewardStatus.ZERO_BY_RULE, "overlong_or_repeated")
    five = Answer(key.gen_prompt, good.references * 5)
    assert computer.score(_input(key, root, five, "five")).result.reason == "ref_count"
    missing_refs = Answer(key.gen_prompt, (AnswerRef("IMG_001", "x", "/nonexistent.png"),))
    assert computer.score(_input(key, root, missing_refs, "missing")).result.reason == "ref_count"

    class Broken:
        def generate(self, request, out_path):
            return GenResult(None, "server said 500")

    broken = RewardComputer(Broken(), computer.judge, root / "g2")
    r = broken.score(_input(key, root, good, "broken")).result
    assert r.status is RewardStatus.FAILED and "server said 500" in r.reason and not r.in_group_statistics

    class Raising:
        def judge_image(self, *a):
            raise RuntimeError("judge exploded")

    r = RewardComputer(computer.generator, Raising(), root / "g3").score(_input(key, root, good, "raise")).result
    assert r.status is RewardStatus.FAILED and "judge exploded" in r.reason


def test_no_answer_fallback_scores_an_unusable_episode_as_evaluation_does(world):
    import dataclasses

    from gsjax.rewards.generator import answer_request

    root, keys, computer = world
    settings = dataclasses.replace(computer.settings, no_answer="fallback")
    fallback = RewardComputer(computer.generator, computer.judge, root / "g_fallback", settings)
    key = keys[1]
    good = _answer(key, root, key.gen_prompt)
    # What evaluation gets for the original prompt alone: its image judged, no answer text.
    t2i = answer_request(None, key.prompt, settings)
    gen = computer.generator.generate(t2i, root / "t2i.png")
    r_img = computer.judge.judge_image(key.id, key.prompt, gen.path, str(root / key.gt_image))
    from gsjax.rewards.score import image_reward

    expected = (1 - settings.text_coef) * image_reward(r_img, settings)
    assert expected > 0
    for answer, termination in ((None, Termination.NO_ANSWER), (good, Termination.REPEATED),
                                (Answer("  ", good.references), Termination.ANSWER),
                                (Answer(key.gen_prompt, ()), Termination.ANSWER), (None, Termination.PARSE_FAILED)):
        zero = computer.score(_input(key, root, answer, f"z{termination.value}", termination)).result
        assert zero.status is RewardStatus.ZERO_BY_RULE and zero.reward == 0.0  # the reference's rule
        r = fallback.score(_input(key, root, answer, f"f{termination.value}", termination)).result
        assert r.status is RewardStatus.SCORED and r.text_part == 0.0, (termination, r)
        assert r.reward == pytest.approx(expected), termination
    # An answer with too many references is generated from its first ones, as evaluation does.
    five = Answer(key.gen_prompt, good.references * 5)
    assert computer.score(_input(key, root, five, "five0")).result.reason == "ref_count"
    r_five = fallback.score(_input(key, root, five, "five")).result
    r_good = fallback.score(_input(key, root, good, "good")).result
    assert r_five.status is RewardStatus.SCORED and r_five.reward == pytest.approx(r_good.reward)
    assert r_good.reward > expected
    # The environment's errors stay failures; a bad setting is refused by name.
    err = fallback.score(_input(key, root, None, "err", Termination.ERROR)).result
    assert err.status is RewardStatus.FAILED
    with pytest.raises(ValueError, match="reward.no_answer must be one of"):
        RewardSettings(no_answer="baseline")


def test_plan_request_is_the_one_place_for_fallback_and_ref_count():
    s = RewardSettings()
    edit = plan_request("gp", "orig", ["a", "b", "c", "d"], s)
    assert edit == GenRequest("gp", ("a", "b", "c"))
    t2i = plan_request("gp", "orig prompt", [], s)
    assert t2i.ref_paths == () and t2i.prompt == "orig prompt, Ultra HD, 4K, cinematic composition."


def test_text_judge_reads_titles_of_the_images_shown(world):
    root, keys, computer = world
    key = keys[0]
    answer = Answer(key.gen_prompt.replace(key.names[0], "it"), (AnswerRef("IMG_001", "photo", _photo(root, key, 0)),))
    without = computer.judge.judge_text(key.id, key.prompt, "", answer, ())
    shown = (ImageRef("IMG_001", _photo(root, key, 0), title=f"{key.names[0]} photo"),)
    with_titles = computer.judge.judge_text(key.id, key.prompt, "", answer, shown)
    assert with_titles.score >= without.score
