"""One tokenizer wrapper (Hugging Face `tokenizers`, the Rust library) and the ChatML renderer.

- `Tokenizer.from_pretrained(folder)` loads a checkpoint's `tokenizer.json` (a real Qwen3 / Qwen3-VL
  one, or one we saved); `Tokenizer.train_bpe(corpus, vocab_size, split)` builds a tiny byte-level BPE
  offline in milliseconds for the CPU world. Both behave like Qwen's tokenizer: NFC normalisation,
  Qwen's pre-tokenizer regex (or, with split "capitalised", the same with capitalised words standing
  alone), byte-level BPE, and the agent's control tokens as single added tokens
  that are recognised when they appear in text.
- `render_text` / `render_chat` write a conversation the way the Qwen3-VL chat template does
  (`<|im_start|>{role}\n{content}<|im_end|>\n`), with the training loss mask of the reference:
  1 on assistant content and its closing `<|im_end|>\n`, 0 on everything else.

Id layout of `train_bpe` (fixed, whatever the corpus):
  0..11    the control tokens, in the order of `CONTROL_TOKENS` (pad `<|endoftext|>` = 0,
           eos `<|im_end|>` = 2, `<|image_pad|>` = 11)
  12..267  the 256 byte symbols of the byte-level alphabet
  268..    learned merges, most frequent first, up to `vocab_size` (fewer when the corpus is small)
A real Qwen vocabulary puts the same tokens after its 151,643 BPE tokens instead (151643 and up);
nothing in gsjax may depend on either layout: look ids up with `token_to_id`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import tokenizers as tk
from tokenizers import decoders, normalizers, pre_tokenizers, processors, trainers

# The tokens that are single added tokens in the Qwen3 vocabulary and that the agent uses, in the
# order that gives their ids in `train_bpe`. `<answer>` is ordinary text in Qwen, and here too.
CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
)
# Qwen marks these as added but not special, so `decode(skip_special_tokens=True)` keeps them.
_NOT_SPECIAL = frozenset(
    {"<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"}
)

# Qwen2/Qwen3's pre-tokenizer split: letters with one leading non-letter, single digits,
# punctuation runs, newline runs, other whitespace.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The same split, except that a capitalised word stands alone, without the space or punctuation
# before it (the space becomes a token of its own). Qwen's split tokenizes a name differently
# after a space, a quote and a bracket (' Begodrath' -> 'ĠBego', 'd', 'rath'; '"Begodrath' -> '"',
# 'B', 'e', 'go', 'd', 'rath'), so writing a name from the prompt into a tool call's JSON string is
# a spelling task, not a copy; here every occurrence is the same tokens. Lower-case words keep
# their space: about 5% more tokens than Qwen's on the offline world's trajectories.
CAPITALISED_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|\p{Lu}\p{L}*|[^\r\n\p{L}\p{N}]?(?!\p{Lu})\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS: dict[str, str] = {"qwen": QWEN_SPLIT_PATTERN, "capitalised": CAPITALISED_SPLIT_PATTERN}

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
IMAGE_MARKER = "<image>"  # sharegpt's image placeholder in user/tool content
EMPTY_THINK = "<think>\n\n</think>\n\n"  # LLaMA-Factory's qwen3_vl reasoning template
DEFAULT_EOS = "<|im_end|>"
DEFAULT_PAD = "<|endoftext|>"

# The same text as `render_text` for string contents. `add_empty_think` (default true) and
# `image_pad_tokens` (default 1) can be passed to `apply_chat_template` as extra keywords.
CHATML_TEMPLATE = r"""{%- set empty_think = add_empty_think if add_empty_think is defined else true -%}
{%- set pads = image_pad_tokens if image_pad_tokens is defined else 1 -%}
{%- set image_text = '<|vision_start|>' + '<|image_pad|>' * pads + '<|vision_end|>' -%}
{%- for message in messages -%}
{%- if message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\n<tool_response>\n' + message.content | replace('<image>', image_text) + '\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}
{%- elif message.role == 'assistant' -%}
{%- set content = message.content -%}
{%- if empty_think and '<think>' not in content and '</think>' not in content -%}
{%- set content = '<think>\n\n</think>\n\n' + content -%}
{%- endif -%}
{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' -}}
{%- elif message.role == 'user' -%}
{{- '<|im_start|>user\n' + message.content | replace('<image>', image_text) + '<|im_end|>\n' -}}
{%- elif message.role == 'system' -%}
{{- '<|im_start|>system\n' + message.content + '<|im_end|>\n' -}}
{%- else -%}
{{- raise_exception('unknown role ' + message.role) -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""


@dataclasses.dataclass(frozen=True)
class RenderedChat:
    """A tokenised conversation: `loss_mask[i]` is 1 where token `ids[i]` is trained on;
    `written[i]` is 1 where the assistant wrote it (trained on or not: a turn marked
    `"train": False` is written, not trained on)."""

    ids: list[int]
    loss_mask: list[int]
    text: str
    written: list[int] = dataclasses.field(default_factory=list)


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the ids of the end-of-turn and padding tokens."""

    def __init__(
        self, backend: tk.Tokenizer, eos_token: str = DEFAULT_EOS, pad_token: str = DEFAULT_PAD
    ) -> None:
        self.backend = backend
        self.eos_token = eos_token
        self.pad_token = pad_token
        self._eos_id = self.token_to_id(eos_token)
        self._pad_id = self.token_to_id(pad_token)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Loads `path/tokenizer.json`; eos and pad come from `tokenizer_config.json` when present."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist")
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(
                f"tokenizer folder {str(folder)!r} has no tokenizer.json (expected {str(file)!r})"
            )
        backend = tk.Tokenizer.from_file(str(file))
        eos, pad = DEFAULT_EOS, DEFAULT_PAD
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{str(config_file)!r} is not valid JSON: {e}") from e
            eos = _token_content(config.get("eos_token")) or eos
            pad = _token_content(config.get("pad_token")) or pad
        for name, token in (("eos_token", eos), ("pad_token", pad)):
            if backend.token_to_id(token) is None:
                raise ValueError(f"{name} {token!r} (from {str(config_file)!r} or the default) is not in {str(file)!r}")
        return cls(backend, eos_token=eos, pad_token=pad)

    @classmethod
    def train_bpe(cls, corpus: Iterable[str], vocab_size: int, split: str = "qwen") -> Tokenizer:
        """A byte-level BPE learned from `corpus`; the same corpus always gives the same vocab.

        `vocab_size` counts everything (control tokens, 256 bytes, merges); see the module
        docstring for the id layout. `split` names the pre-tokenizer's pattern in `SPLITS`
        (the folder it is saved to keeps it: loading needs no setting).
        """
        minimum = len(CONTROL_TOKENS) + 256
        if vocab_size < minimum:
            raise ValueError(f"vocab_size must be at least {minimum} (control tokens + bytes), got {vocab_size}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        backend = tk.Tokenizer(tk.models.BPE())
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(tk.Regex(SPLITS[split]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(CONTROL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(corpus, trainer)
        # The trainer adds every control token as special; clear the flag where Qwen does.
        spec = json.loads(backend.to_str())
        for added in spec["added_tokens"]:
            if added["content"] in _NOT_SPECIAL:
                added["special"] = False
        return cls(tk.Tokenizer.from_str(json.dumps(spec)))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes `tokenizer.json` and `tokenizer_config.json` (with the ChatML template) to `path`.

        `transformers.AutoTokenizer.from_pretrained(path)` and `Tokenizer.from_pretrained(path)`
        both load the result.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": None,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "model_max_length": 131072,
            "chat_template": CHATML_TEMPLATE,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    # ---- vocabulary -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (for Qwen3: 151,669, less than its embedding rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        """End of turn: `<|im_end|>` unless tokenizer_config.json names another eos token."""
        return self._eos_id

    @property
    def pad_id(self) -> int:
        """Padding: `<|endoftext|>` unless tokenizer_config.json names another pad token."""
        return self._pad_id

    def token_to_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary (size {self.vocab_size})")
        return token_id

    def id_to_token(self, token_id: int) -> str:
        token = self.backend.id_to_token(int(token_id))
        if token is None:
            raise KeyError(f"id {token_id} is not in the vocabulary (ids 0..{self.vocab_size - 1})")
        return token

    # ---- text <-> ids ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; control-token strings in it become their single ids, as in Qwen."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. `skip_special_tokens` drops `<|im_end|>` etc. but keeps `<think>`,
        `<tool_call>` and `<tool_response>` tags (they are not special in Qwen either)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- chat -----------------------------------------------------------------------------------

    def render_text(
        self,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool,
        image_pad_tokens: int | Sequence[int] = 1,
        add_empty_think: bool = True,
    ) -> str:
        """The conversation as ChatML text, exactly what `render_chat` tokenises."""
        segments = _chat_segments(messages, add_generation_prompt, image_pad_tokens, add_empty_think)
        return "".join(text for text, _ in segments)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool,
        image_pad_tokens: int | Sequence[int] = 1,
        add_empty_think: bool = True,
    ) -> RenderedChat:
        """Tokenises a conversation with the reference's loss mask.

        Messages are `{"role": "system" | "user" | "assistant" | "tool", "content": str}`. Each one
        renders as `<|im_start|>{role}\\n{content}<|im_end|>\\n`; a run of `tool` messages renders
        as one user turn with each result wrapped in `\\n<tool_response>\\n...\\n</tool_response>`
        (Qwen's template; a single one is the reference's user message
        `<tool_response>\\n{text}\\n</tool_response>`). Each `<image>` in user/tool content becomes
        `<|vision_start|>` + `<|image_pad|>` * n + `<|vision_end|>`, with n = `image_pad_tokens`,
        or its i-th entry for the i-th image when it is a sequence (one count per image).

        With `add_empty_think`, an assistant turn holding neither `<think>` nor `</think>` gets
        `<think>\\n\\n</think>\\n\\n` in front, trained on (LLaMA-Factory's qwen3_vl template).

        Mask: 1 on assistant content and its `<|im_end|>\\n`; 0 on the `<|im_start|>assistant\\n`
        header and on all system, user and tool tokens, and on an assistant message whose
        `"train"` is False (a mistake shown as context, e.g. before an expert's recovery). The header and the content are tokenised
        separately, as the sampler produces them (prompt, then generated tokens). Every other
        boundary is a control token, so `ids == encode(text)` except when an assistant content
        starts with whitespace holding a newline, which BPE would merge with the header's `\\n`.
        """
        segments = _chat_segments(messages, add_generation_prompt, image_pad_tokens, add_empty_think)
        ids: list[int] = []
        mask: list[int] = []
        written: list[int] = []
        for (_, kind), seg_ids in zip(segments, self.encode_batch([text for text, _ in segments])):
            ids.extend(seg_ids)
            mask.extend([int(kind == _TRAINED)] * len(seg_ids))
            written.extend([int(kind != _READ)] * len(seg_ids))
        return RenderedChat(ids=ids, loss_mask=mask, text="".join(text for text, _ in segments), written=written)


def _token_content(value: object) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ..., ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


_READ, _TRAINED, _UNTRAINED = 0, 1, 2  # what the policy reads; writes and is trained on; writes only


def _chat_segments(
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool,
    image_pad_tokens: int | Sequence[int],
    add_empty_think: bool,
) -> list[tuple[str, int]]:
    """The conversation as (text, kind) pieces, kind one of _READ, _TRAINED, _UNTRAINED;
    neighbouring pieces of the same kind are joined, since the boundary between them is always a
    control token."""
    roles: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"message {index} must be a mapping with 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(f"message {index} has unknown role {message['role']!r}; allowed roles: {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise TypeError(
                f"message {index} ({message['role']}) content must be a str, got {type(message['content']).__name__}"
            )
        roles.append(message["role"])

    n_images = sum(m["content"].count(IMAGE_MARKER) for m in messages if m["role"] in ("user", "tool"))
    if isinstance(image_pad_tokens, int):
        pad_counts = [image_pad_tokens] * n_images
    else:
        pad_counts = [int(n) for n in image_pad_tokens]
        if len(pad_counts) != n_images:
            raise ValueError(
                f"image_pad_tokens has {len(pad_counts)} counts but the messages hold {n_images} {IMAGE_MARKER} markers"
            )
    if any(n < 1 for n in pad_counts):
        raise ValueError(f"image_pad_tokens must be >= 1 per image, got {image_pad_tokens!r}")
    counts = iter(pad_counts)

    def expand_images(content: str) -> str:
        pieces = content.split(IMAGE_MARKER)
        out = [pieces[0]]
        for piece in pieces[1:]:
            out.append("<|vision_start|>" + "<|image_pad|>" * next(counts) + "<|vision_end|>" + piece)
        return "".join(out)

    segments: list[tuple[str, int]] = []

    def emit(text: str, bit: int) -> None:
        if segments and segments[-1][1] == bit:
            segments[-1] = (segments[-1][0] + text, bit)
        else:
            segments.append((text, bit))

    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "tool":
            opens = index == 0 or roles[index - 1] != "tool"
            closes = index == len(messages) - 1 or roles[index + 1] != "tool"
            text = "\n<tool_response>\n" + expand_images(content) + "\n</tool_response>"
            emit(("<|im_start|>user" if opens else "") + text + ("<|im_end|>\n" if closes else ""), _READ)
        elif role == "assistant":
            if add_empty_think and "<think>" not in content and "</think>" not in content:
                content = EMPTY_THINK + content
            train = message.get("train", True)
            if not isinstance(train, bool):
                raise TypeError(f"message {index} (assistant) 'train' must be a bool, got {train!r}")
            emit("<|im_start|>assistant\n", _READ)
            emit(content + "<|im_end|>\n", _TRAINED if train else _UNTRAINED)
        else:
            body = expand_images(content) if role == "user" else content
            emit(f"<|im_start|>{role}\n{body}<|im_end|>\n", _READ)
    if add_generation_prompt:
        emit("<|im_start|>assistant\n", _READ)
    return segments
