"""The `http` generator and the `openai` judge end to end through `RewardComputer`, against loopback
servers (gsjax/bench/loopback_servers.py): good paths score as the server's verdict says, every server
fault ends as a recorded `failed` result within a bounded time, per-URL concurrency holds, and the
judge's API key reaches the server but nothing else."""

import base64
import io
import json
import logging
import random
import time
from pathlib import Path

import pytest
from gsjax.bench.loopback_servers import (
    IMAGE_VERDICT,
    Fault,
    GeneratorServer,
    JudgeServer,
    fixed_verdicts,
    world_renderer,
    world_verdicts,
)
from PIL import Image

from gsjax.agent.types import Answer, AnswerRef, Termination
from gsjax.rewards.compute import RewardComputer, RewardInput
from gsjax.rewards.generator import GenRequest, WorldGenerator
from gsjax.rewards.generator_http import EditSettings, HttpGenerator, parse_url_list
from gsjax.rewards.judge import WorldJudgeBackend
from gsjax.rewards.judge_openai import OpenAIJudge, encode_image, judge_backoff
from gsjax.rewards.rubrics import image_judge_request
from gsjax.rewards.types import RewardStatus
from gsjax.world.build import build_world
from gsjax.world.prompts import read_truth

KEY_ENV = "GSJAX_TEST_JUDGE_KEY"
KEY = "sk-test-PLANTED-123"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = build_world(tmp_path_factory.mktemp("world"), seed=3, n_train_entities=40, n_eval_entities=40,
                       n_train_prompts=4, n_eval_prompts=24).root  # under a second; 3 two-subject prompts
    keys = sorted((k for k in read_truth(root / "truth.json").values() if k.split == "eval"), key=lambda k: k.id)
    return root, keys


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _answer(root, key, gen_prompt=None, photo_key=None):
    photo_key = photo_key or key
    refs = tuple(AnswerRef(f"IMG_{i + 1:03d}", f"{name} reference", str(root / "images" / Path(photos[0]).name))
                 for i, (name, photos) in enumerate(zip(photo_key.names, photo_key.reference_images)))
    return Answer(key.gen_prompt if gen_prompt is None else gen_prompt, refs)


def _input(root, key, answer=None, tag="best"):
    answer = answer or _answer(root, key)
    return RewardInput(key.id, key.prompt, str(root / key.gt_image), Termination.ANSWER, answer, name=f"{key.id}-{tag}")


def _generator(*servers, **kwargs):
    kwargs = {"timeout_s": 1.0, "retries": 1, "seed": 0, **kwargs}
    return HttpGenerator([s.url for s in servers], **kwargs)


def _judge(server, **kwargs):
    kwargs = {"api_key_env": KEY_ENV, "timeout_s": 1.0, "max_tries": 2, "http_attempts": 2, "backoff_s": 0.05,
              "seed": 0, **kwargs}
    return OpenAIJudge(server.url + "/v1", **kwargs)


# ------------------------------------------------------------------------------------ good paths


def test_good_path_scores_as_the_servers_verdict_says(world, tmp_path, key_env):
    root, keys = world
    key = next(k for k in keys if len(k.names) == 2)
    inp = _input(root, key)
    with GeneratorServer() as gen_server, JudgeServer(api_key=KEY) as judge_server:
        computer = RewardComputer(_generator(gen_server), _judge(judge_server), tmp_path)
        episode = computer.score(inp)
    r = episode.result
    # R_img = 0.1 F + 0.4 V + 0.4 T + 0.1 A = 0.1 + 0.2 + 0.4 + 0.05; R_text = 0.75; R = their mean.
    assert (r.status, r.reason, r.image_part, r.text_part, r.reward) == (RewardStatus.SCORED, None, 0.75, 0.75, 0.75)
    assert episode.image_scores.rationale == IMAGE_VERDICT["rationale"]
    with Image.open(episode.generated_path) as img:
        assert img.format == "PNG"
    # What the generator server got: the reference's settings and each reference file's raw bytes.
    (body,) = gen_server.bodies
    assert body["prompt"] == key.gen_prompt
    assert {k: body[k] for k in ("seed", *vars(EditSettings()))} == {"seed": 0, **vars(EditSettings())}
    assert body["ref_bytes"] == [Path(ref.path).read_bytes() for ref in inp.answer.references]
    # The judge: two calls (image: generated + GT; text: GT only), gpt-4.1, the key as a bearer token.
    assert judge_server.requests == 2 and judge_server.images == 3
    assert judge_server.models == ["gpt-4.1", "gpt-4.1"]
    assert judge_server.authorizations == [f"Bearer {KEY}"] * 2


def test_world_backends_over_http_score_as_in_process(world, tmp_path):
    """The world's generator and judges behind the loopback servers against the same in process:
    the generated images are identical (data URLs in, PNG out) and the text judge's scores too
    (its request carries the answer losslessly). The image judge sees Image 1 as JPEG quality 100,
    as the reference sends it; the world judge's thresholds are pixel-exact, so that noise can move
    visual correctness by one half-step near a threshold, never more, and the ranking of answers
    stays."""
    root, keys = world
    rng = random.Random(0)
    inputs = []
    for key in keys[:12]:
        other = rng.choice([o for o in keys if o.names != key.names and len(o.names) == len(key.names)] or keys)
        inputs.append(_input(root, key))
        inputs.append(_input(root, key, _answer(root, key, f"A {key.scene} with the first reference image."), "vague"))
        inputs.append(_input(root, key, _answer(root, key, other.gen_prompt, other), "wrong"))
    local = RewardComputer(WorldGenerator(root), WorldJudgeBackend(root), tmp_path / "local", workers=4)
    expected = local.score_many(inputs, progress=False)
    with GeneratorServer(render=world_renderer(root)) as gs, JudgeServer(verdicts=world_verdicts(root)) as js:
        remote = RewardComputer(_generator(gs, timeout_s=30), _judge(js, api_key_env="", timeout_s=30),
                                tmp_path / "remote", workers=4)
        got = remote.score_many(inputs, progress=False)
    assert all(s.result.status is RewardStatus.SCORED for s in got), [s.result.reason for s in got]
    for e, g in zip(expected, got):
        assert Path(g.generated_path).read_bytes() == Path(e.generated_path).read_bytes()
        assert g.text_score == e.text_score
        # At most one half-step of V (and of F, which counts V > 0): (1 - c) * (0.4 + 0.1) * 0.5.
        assert abs(g.result.reward - e.result.reward) <= 0.125 + 1e-9
    means = {tag: [sum(s.result.reward for s in run[i::3]) / 12 for run in (expected, got)]
             for i, tag in enumerate(("best", "vague", "wrong"))}
    for run in range(2):
        assert means["best"][run] > means["vague"][run] > means["wrong"][run], means


def test_code_fenced_judge_replies_parse(world, tmp_path, key_env):
    root, keys = world
    with GeneratorServer() as gs, JudgeServer(faults=[Fault("fenced")]) as js:
        r = RewardComputer(_generator(gs), _judge(js), tmp_path).score(_input(root, keys[0])).result
    assert (r.status, r.reward) == (RewardStatus.SCORED, 0.75)


def test_an_unreadable_judge_reply_is_asked_again(world, tmp_path, key_env):
    root, keys = world
    with GeneratorServer() as gs, JudgeServer(faults=[Fault("non_json", first=1)]) as js:
        r = RewardComputer(_generator(gs), _judge(js), tmp_path).score(_input(root, keys[0])).result
        assert js.requests == 3  # the unreadable reply, its second try, the text judge
    assert (r.status, r.reward) == (RewardStatus.SCORED, 0.75)


def test_text_to_image_sends_no_images(tmp_path):
    with GeneratorServer() as gs, _generator(gs) as gen:
        result = gen.generate(GenRequest("a red lighthouse, Ultra HD, 4K.", ()), tmp_path / "t.png")
    assert result.error is None and Path(result.path).is_file()
    assert gs.bodies[0]["ref_bytes"] == [] and gs.bodies[0]["prompt"].startswith("a red lighthouse")


# ------------------------------------------------------------------------------------ failures

GEN_FAULTS = [
    (Fault("garbage"), "generation: generator server: malformed JSON from 127.0.0.1:{port}/generate"),
    (Fault("status", status=500), "generation: generator server: HTTP 500 from 127.0.0.1:{port}/generate (2 attempts)"),
    (Fault("status", status=422), "generation: generator server: HTTP 422 from 127.0.0.1:{port}/generate"),
    (Fault("slow", seconds=3.0), "generation: generator server: no response from 127.0.0.1:{port}/generate within"),
    (Fault("unsuccessful"), "generation: generator server 127.0.0.1:{port}/generate: the server reported a failure: "
                            "CUDA out of memory (injected)"),
    (Fault("not_image"), "generation: generator server 127.0.0.1:{port}/generate: the reply's \"image\" decodes to "
                         "280 bytes that are not a readable image"),
    (Fault("bad_base64"), "generation: generator server 127.0.0.1:{port}/generate: the reply's \"image\" is not "
                          "valid base64"),
]


@pytest.mark.parametrize("fault,reason", GEN_FAULTS, ids=[f"{f.kind}-{f.status}" for f, _ in GEN_FAULTS])
def test_generator_faults_end_as_recorded_failures(world, tmp_path, key_env, fault, reason):
    root, keys = world
    with GeneratorServer(faults=[fault]) as gs, JudgeServer() as js:
        computer = RewardComputer(_generator(gs), _judge(js), tmp_path)
        start = time.perf_counter()
        episode = computer.score(_input(root, keys[0]))
        elapsed = time.perf_counter() - start
    r = episode.result
    assert r.status is RewardStatus.FAILED and not r.in_group_statistics and r.reward == 0.0
    assert r.reason.startswith(reason.format(port=gs.port)), r.reason
    assert elapsed < 2.5  # timeout_s = 1: one generate call, retries included
    assert episode.generated_path is None and not list(tmp_path.glob("*.png"))
    assert js.requests == 0


JUDGE_FAULTS = [
    (Fault("non_json"), "image judge: gave up after 2 tries: unreadable reply: no JSON object in the judge reply: "
                        "'The generated image looks quite good"),
    (Fault("status", status=500), "image judge: gave up after 2 tries: HTTP 500 from 127.0.0.1:{port}"
                                  "/v1/chat/completions (2 attempts)"),
    # A JSON error body is quoted: the API's reason reaches the record.
    (Fault("status", status=400), 'image judge: HTTP 400 from 127.0.0.1:{port}/v1/chat/completions: '
                                  '{{"message": "injected HTTP 400"}} (not retried)'),
    (Fault("slow", seconds=3.0), "image judge: gave up after 2 tries: no response from 127.0.0.1:{port}"
                                 "/v1/chat/completions within"),
]


@pytest.mark.parametrize("fault,reason", JUDGE_FAULTS, ids=[f"{f.kind}-{f.status}" for f, _ in JUDGE_FAULTS])
def test_judge_faults_end_as_recorded_failures(world, tmp_path, key_env, fault, reason):
    root, keys = world
    with GeneratorServer() as gs, JudgeServer(faults=[fault]) as js:
        computer = RewardComputer(_generator(gs), _judge(js), tmp_path)
        start = time.perf_counter()
        episode = computer.score(_input(root, keys[0]))
        elapsed = time.perf_counter() - start
    r = episode.result
    assert r.status is RewardStatus.FAILED and r.reward == 0.0
    assert r.reason.startswith(reason.format(port=js.port)), r.reason
    assert episode.generated_path is not None  # generation succeeded; the judge failed
    assert elapsed < 4.0  # 2 tries of at most timeout_s = 1 each, and one short back-off


def test_missing_key_is_a_failure_naming_the_variable(world, tmp_path, monkeypatch):
    root, keys = world
    monkeypatch.delenv(KEY_ENV, raising=False)
    with GeneratorServer() as gs, JudgeServer() as js:
        r = RewardComputer(_generator(gs), _judge(js), tmp_path).score(_input(root, keys[0])).result
        assert js.requests == 0
    assert (r.status, r.reason) == (
        RewardStatus.FAILED, f"image judge: the environment variable {KEY_ENV} (the judge's API key) is not set")


def test_concurrency_per_url_never_exceeds_the_bound(world, tmp_path, key_env):
    root, keys = world
    inputs = [_input(root, keys[i % len(keys)], tag=str(i)) for i in range(16)]
    with GeneratorServer(latency_s=0.15) as a, GeneratorServer(latency_s=0.15) as b, JudgeServer() as js:
        gen = _generator(a, b, per_url_concurrency=2, timeout_s=10)
        results = RewardComputer(gen, _judge(js), tmp_path, workers=16).score_many(inputs, progress=False)
    assert all(s.result.status is RewardStatus.SCORED for s in results)
    assert (a.max_in_flight, b.max_in_flight) == (2, 2)  # server-side counts: the bound, reached
    assert a.requests + b.requests == 16 and min(a.requests, b.requests) >= 4
    assert max(gen.slots.max_seen.values()) == 2 and set(gen.slots.busy.values()) == {0}


# ------------------------------------------------------------------------------------ the API key


def test_planted_key_reaches_the_server_and_nowhere_else(world, tmp_path, key_env, caplog):
    root, keys = world
    caplog.set_level(logging.DEBUG)
    leaky = fixed_verdicts(image={**IMAGE_VERDICT, "faithfulness": f"Bearer {KEY}"})  # a server echoing the key
    reasons = []
    with GeneratorServer() as gs:
        gen = _generator(gs)
        for server in (JudgeServer(api_key=KEY), JudgeServer(api_key="sk-other-key"),
                       JudgeServer(faults=[Fault("status", status=500)]), JudgeServer(faults=[Fault("non_json")]),
                       JudgeServer(verdicts=leaky)):
            with server:
                judge = _judge(server)
                episode = RewardComputer(gen, judge, tmp_path).score(_input(root, keys[0]))
                reasons.append(episode.result.reason or "")
                assert server.authorizations and set(server.authorizations) == {f"Bearer {KEY}"}
                texts = [repr(judge), repr(judge._client), repr(gen), repr(episode), str(vars(judge))]
                assert not any(KEY in t for t in texts)
    assert reasons[0] == ""
    with JudgeServer() as server:  # an exception's text inside the client is redacted too
        request = image_judge_request("s", "q", str(root / keys[0].gt_image), str(root / keys[0].gt_image))
        assert _judge(server).ask(request, _parser_that_raises) == "judge client: RuntimeError: parser saw ***"
    assert reasons[1].startswith("image judge: HTTP 401 from") and reasons[1].endswith("(not retried)")
    assert "HTTP 500" in reasons[2] and "no JSON object" in reasons[3]
    assert reasons[4] == "image judge: gave up after 2 tries: unreadable reply: judge reply's 'faithfulness' is not " \
                         "a number: '***'"
    assert not any(KEY in r for r in reasons)
    assert set(gs.authorizations) == {""}  # the generator never gets the judge's key
    assert KEY not in caplog.text and "judge try 1 of 2 failed" in caplog.text


# ------------------------------------------------------------------------------------ pieces


def test_urls_come_from_the_reference_env_var(monkeypatch):
    monkeypatch.setenv("QWEN_EDIT_APP_URL", '["http://127.0.0.1:8001", "http://127.0.0.1:8002/"]')
    monkeypatch.delenv("QWEN_EDIT_APP_PATH", raising=False)
    gen = HttpGenerator.from_env(per_url_concurrency=3)
    assert gen.urls == ("http://127.0.0.1:8001/generate", "http://127.0.0.1:8002/generate")
    assert parse_url_list("http://a:1, http://b:2/generate") == ["http://a:1", "http://b:2/generate"]
    for bad, message in (("", "is empty"), ("[1, 2]", "list of URL strings"), ("[oops", "not valid JSON")):
        with pytest.raises(ValueError, match=message):
            parse_url_list(bad)
    monkeypatch.delenv("QWEN_EDIT_APP_URL")
    with pytest.raises(ValueError, match="QWEN_EDIT_APP_URL is not set"):
        HttpGenerator.from_env()
    with pytest.raises(ValueError, match="not an http"):
        HttpGenerator(["ftp://127.0.0.1/"])


def test_judge_backoff_is_the_references():
    rng = random.Random(0)
    for k, base in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (30, 10.0)):
        waits = [judge_backoff(k, rng) for _ in range(200)]
        assert base * 0.8 <= min(waits) and max(waits) <= base * 1.2


def test_judge_images_are_jpeg_with_the_longest_side_at_most_4096(tmp_path):
    Image.new("RGBA", (5000, 100), (10, 200, 30, 128)).save(tmp_path / "wide.png")
    url = encode_image(tmp_path / "wide.png")
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (4096, 82))
    small = encode_image(_png(tmp_path / "small.png", (64, 32)))
    with Image.open(io.BytesIO(base64.b64decode(small.partition(",")[2]))) as img:
        assert img.size == (64, 32)
    assert json.dumps(url)  # a plain ASCII string


def test_rewards_bench_runs_at_a_toy_size(capsys):
    from gsjax.bench import rewards

    result = rewards.main(["--trajectories", "8", "--latency", "0.02", "--repeats", "3"])  # a median, robust to a loaded CI machine
    assert result.failed == 0 and result.ratio.median > 2.0 and result.mean_reward > 0.5
    assert "serial / concurrent = " in capsys.readouterr().out


def _parser_that_raises(reply):
    raise RuntimeError(f"parser saw {KEY}")


def _png(path, size):
    Image.new("RGB", size, "red").save(path)
    return path
