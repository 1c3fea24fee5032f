"""gsjax.data.formats: KnowGen-Bench, rl_data.json and sft_data.json readers and writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsjax.data.formats import (
    POP_CULTURE_AND_NEWS,
    SCIENCE_AND_KNOWLEDGE,
    KnowGenItem,
    Message,
    RLItem,
    SFTExample,
    category_group,
    read_knowgen,
    read_rl_data,
    read_sft_data,
    write_knowgen,
    write_rl_data,
    write_sft_data,
)


def _write(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_category_group_uses_knowgen_lists_case_insensitively():
    assert category_group("Biology") == SCIENCE_AND_KNOWLEDGE
    assert category_group(" sports ") == SCIENCE_AND_KNOWLEDGE
    assert category_group("multi-subject-anime") == POP_CULTURE_AND_NEWS
    assert category_group("Multi-subject-celebrities") == POP_CULTURE_AND_NEWS
    assert category_group("NEWS") == POP_CULTURE_AND_NEWS
    with pytest.raises(ValueError, match="'Cooking' is in neither KnowGen group"):
        category_group("Cooking")


def test_knowgen_round_trip_keeps_ids_and_writes_relative_paths(tmp_path):
    items = [KnowGenItem(3260, "Draw a moth.", "Biology", "easy", str(tmp_path / "gt" / "a.png")),
             KnowGenItem("eval-1", "Two heroes.", "Multi-subject-anime", "multiple subject",
                         str(tmp_path / "gt" / "b.png"))]
    path = tmp_path / "knowgen.json"
    write_knowgen(path, items)
    rows = json.loads(path.read_text())
    assert rows[0] == {"id": 3260, "prompt": "Draw a moth.",
                       "meta": {"category": "Biology", "difficulty": "easy"},
                       "gt_image": "gt/a.png"}
    assert read_knowgen(path) == items
    assert [i.group for i in items] == [SCIENCE_AND_KNOWLEDGE, POP_CULTURE_AND_NEWS]


def test_knowgen_reader_resolves_paths_against_the_file_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = _write(tmp_path / "sub" / "k.json", [
        {"id": 1, "prompt": "p", "meta": {"category": "Art", "difficulty": "easy", "extra": 1},
         "gt_image": "../gt/x.png"}])
    assert read_knowgen(path)[0].gt_image == str(tmp_path / "gt" / "x.png")


def test_rl_data_round_trip(tmp_path):
    items = [RLItem("0", "Draw the emblem of the Tessel Rovers.", str(tmp_path / "gt" / "0.png")),
             RLItem(1, "Another.", "/elsewhere/1.png")]
    path = tmp_path / "rl_data.json"
    write_rl_data(path, items)
    assert json.loads(path.read_text())[1]["gt_image"] == "/elsewhere/1.png"  # outside: absolute
    assert read_rl_data(path) == items


def _sft(images: int = 1, markers: int = 1) -> dict:
    return {"messages": [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Draw the emblem."},
        {"role": "assistant", "content": "<think>\nsearch\n</think>\n<tool_call>{}</tool_call>"},
        {"role": "user",
         "content": "<image>" * markers + "<tool_response>\nIMG_001\n</tool_response>"},
        {"role": "assistant", "content": "<think>\ndone\n</think>\n<answer>{}</answer>"}],
        "images": [f"img/{i}.jpg" for i in range(images)]}


def test_sft_round_trip(tmp_path):
    src = _write(tmp_path / "sft_data.json", [_sft(2, 2), _sft(0, 0)])
    examples = read_sft_data(src)
    assert examples[0].images == (str(tmp_path / "img" / "0.jpg"), str(tmp_path / "img" / "1.jpg"))
    assert examples[0].messages[1] == Message("user", "Draw the emblem.")
    out = tmp_path / "copy.json"
    write_sft_data(out, examples)
    assert json.loads(out.read_text()) == json.loads(src.read_text())
    assert read_sft_data(out) == examples


GOOD_KNOWGEN = {"id": 7, "prompt": "p", "meta": {"category": "Film", "difficulty": "easy"},
                "gt_image": "gt/7.png"}


@pytest.mark.parametrize("row, field, expected", [
    ({k: v for k, v in GOOD_KNOWGEN.items() if k != "prompt"}, "prompt", "it is missing"),
    ({**GOOD_KNOWGEN, "prompt": 5}, "prompt", "got int 5"),
    ({**GOOD_KNOWGEN, "id": True}, "id", "a string or an integer"),
    ({**GOOD_KNOWGEN, "meta": {"category": "Cooking", "difficulty": "easy"}}, "meta.category",
     "a KnowGen category"),
    ({**GOOD_KNOWGEN, "meta": {"category": "Film"}}, "meta.difficulty", "it is missing"),
    ({**GOOD_KNOWGEN, "meta": "Film"}, "meta", "an object"),
    ({**GOOD_KNOWGEN, "gt_image": ""}, "gt_image", "a non-empty string"),
])
def test_malformed_knowgen_rows_name_file_row_and_field(tmp_path, row, field, expected):
    path = _write(tmp_path / "bad_knowgen.json", [GOOD_KNOWGEN, row])
    with pytest.raises(ValueError) as err:
        read_knowgen(path)
    msg = str(err.value)
    assert "bad_knowgen.json: row 1: field " + repr(field) in msg and expected in msg


def test_malformed_rl_rows_name_file_row_and_field(tmp_path):
    path = _write(tmp_path / "rl.json", [{"id": "0", "prompt": "p", "gt_image": "a.png"},
                                         {"id": "1", "prompt": ["p"], "gt_image": "b.png"}])
    with pytest.raises(ValueError, match=r"rl.json: row 1: field 'prompt': expected a non-empty "
                                         r"string, got list"):
        read_rl_data(path)
    path = _write(tmp_path / "rl2.json", [["not", "an", "object"]])
    with pytest.raises(ValueError, match=r"rl2.json: row 0: expected a JSON object"):
        read_rl_data(path)
    path = _write(tmp_path / "rl3.json", {"id": 1})
    with pytest.raises(ValueError, match=r"rl3.json: expected a JSON array"):
        read_rl_data(path)


@pytest.mark.parametrize("mutate, field, expected", [
    (lambda r: r.update(images=[]), "images", "1 image path(s), one per <image> marker"),
    (lambda r: r.update(images=["a.jpg", "b.jpg"]), "images", "1 image path(s)"),
    (lambda r: r["messages"][2].update(role="tool"), "messages[2].role", "one of"),
    (lambda r: r["messages"][1].pop("content"), "messages[1].content", "it is missing"),
    (lambda r: r.update(messages=[]), "messages", "a non-empty list"),
    (lambda r: r.update(images=[3]), "images[0]", "a non-empty path string"),
    (lambda r: r["messages"][1].update(train=False), "messages[1].train", "false only on an assistant"),
    (lambda r: r["messages"][2].update(train="no"), "messages[2].train", "true or false"),
])
def test_malformed_sft_rows_name_file_row_and_field(tmp_path, mutate, field, expected):
    bad = _sft()
    mutate(bad)
    path = _write(tmp_path / "sft_bad.json", [_sft(), _sft(), bad])
    with pytest.raises(ValueError) as err:
        read_sft_data(path)
    msg = str(err.value)
    assert f"sft_bad.json: row 2: field {field!r}" in msg and expected in msg


def test_writers_refuse_what_readers_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="row 0: field 'meta.category'"):
        write_knowgen(tmp_path / "k.json", [KnowGenItem(1, "p", "Cooking", "easy", "gt.png")])
    with pytest.raises(ValueError, match="row 0: field 'images'"):
        write_sft_data(tmp_path / "s.json", [SFTExample((Message("user", "<image> hi"),), ())])
    assert not (tmp_path / "k.json").exists() and not (tmp_path / "s.json").exists()
