"""The `jax` generator backend and `python -m gsjax.serve_generator` on a random tiny pipeline:
the reference's POST /generate over loopback, failures as replies, and a reward scored through it."""

import base64
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsjax.rewards.generator import GenRequest
from gsjax.rewards.generator_http import EditSettings, HttpGenerator
from gsjax.rewards.generator_jax import JaxGenerator
from gsjax.serve_generator import GeneratorServer, tiny_pipeline

FAST = EditSettings(num_inference_steps=2)


@pytest.fixture(scope="module")
def generator():
    return JaxGenerator(tiny_pipeline(seed=0), FAST)


@pytest.fixture(scope="module")
def server(generator):
    with GeneratorServer(generator) as s:
        yield s


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("refs") / "ref.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 70, 3), np.uint8)).save(path)
    return path


def _post(url, body: bytes) -> dict:
    req = urllib.request.Request(url + "/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_http_client_gets_images_from_the_jax_server(server, ref_path, tmp_path):
    with HttpGenerator([server.url], settings=FAST, timeout_s=300) as client:
        a = client.generate(GenRequest("a red fox on a banner", (str(ref_path),), seed=0), tmp_path / "a.png")
        b = client.generate(GenRequest("a red fox on a banner", (str(ref_path),), seed=0), tmp_path / "b.png")
        c = client.generate(GenRequest("a red fox on a banner", (str(ref_path),), seed=1), tmp_path / "c.png")
    assert a.error is None and b.error is None and c.error is None, (a, c)
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    with Image.open(a.path) as img:  # the output size rule of diffusers' pipeline at output_area = 64^2
        assert img.size == calculate_dimensions(64 * 64, 70 / 40) and img.mode == "RGB"
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()  # same seed, same image
    assert Path(a.path).read_bytes() != Path(c.path).read_bytes()


def test_bad_requests_get_failure_replies_and_the_server_keeps_serving(server, ref_path):
    good_url = "data:image/jpeg;base64," + base64.b64encode(ref_path.read_bytes()).decode()
    cases = {
        b"not json": "not JSON",
        json.dumps({"prompt": "x"}).encode(): "'image_urls' is required",
        json.dumps({"image_urls": ["data:image/png;base64,@@@"], "prompt": "x"}).encode(): "not valid base64",
        json.dumps({"image_urls": ["data:image/png;base64,aGVsbG8="], "prompt": "x"}).encode(): "not a readable image",
        json.dumps({"image_urls": [good_url], "prompt": 3}).encode(): "field 'prompt' must be str",
        json.dumps({"image_urls": [good_url], "prompt": "x", "num_images_per_prompt": 2}).encode(): "only 1",
    }
    for body, message in cases.items():
        reply = _post(server.url, body)
        assert reply["success"] is False and message in reply["message"], (body, reply)
    reply = _post(server.url, json.dumps({"image_urls": [good_url], "prompt": "x", "num_inference_steps": 2}).encode())
    assert reply["success"] is True
    with Image.open(io.BytesIO(base64.b64decode(reply["image"]))) as img:
        assert img.format == "PNG"


def test_a_generation_error_is_a_failed_result_not_a_crash(tmp_path):
    class Exploding:
        def generate(self, *a, **k):
            raise RuntimeError("out of device memory")

    result = JaxGenerator(Exploding()).generate(GenRequest("x", ()), tmp_path / "x.png")
    assert result.path is None and "out of device memory" in result.error


def test_a_reward_is_scored_through_the_jax_generator(generator, tmp_path):
    from gsjax.agent.types import Answer, AnswerRef, Termination
    from gsjax.rewards.compute import RewardComputer, RewardInput
    from gsjax.rewards.judge import WorldJudgeBackend
    from gsjax.rewards.types import RewardStatus
    from gsjax.world.build import build_world
    from gsjax.world.prompts import read_truth

    root = tmp_path / "world"
    build_world(root, seed=3, n_train_entities=20, n_eval_entities=10, n_train_prompts=2, n_eval_prompts=2)
    key = next(k for k in read_truth(root / "truth.json").values() if k.split == "eval")
    photo = str(root / "images" / Path(key.reference_images[0][0]).name)
    answer = Answer(key.gen_prompt, (AnswerRef("IMG_001", f"{key.names[0]} reference", photo),))
    computer = RewardComputer(generator, WorldJudgeBackend(root), tmp_path / "generated")
    scored = computer.score(RewardInput(key.id, key.prompt, str(root / key.gt_image), Termination.ANSWER, answer))
    assert scored.result.status is RewardStatus.SCORED, scored.result.reason
    assert scored.generated_path and Path(scored.generated_path).is_file()
    assert 0.0 <= scored.result.reward <= 1.0
    assert scored.image_scores is not None and scored.text_score is not None


def test_the_rewards_factory_knows_the_jax_backend_and_names_missing_folders():
    from gsjax.rewards.backends import GENERATORS, build_generator, reward_config

    cfg = reward_config()
    cfg.generator = "jax"
    assert "jax" in GENERATORS
    with pytest.raises(ValueError, match="reward.generator_model"):
        build_generator(cfg, None)
