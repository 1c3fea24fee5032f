"""Tiny random Qwen3 / Qwen2 checkpoints created by transformers (PyTorch) for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=8, num_key_value_heads=4, head_dim=16, max_position_embeddings=512,
    rms_norm_eps=1e-6,
)


def make_hf_model(family: str, *, tie: bool = False, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    kw = {**TINY, "tie_word_embeddings": tie, **overrides}
    if family == "qwen3":
        cfg = transformers.Qwen3Config(**kw, rope_parameters={"rope_theta": 10_000.0, "rope_type": "default"})
        model = transformers.Qwen3ForCausalLM(cfg)
    elif family == "qwen2":
        kw.pop("head_dim")
        cfg = transformers.Qwen2Config(**kw, rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"})
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(family)
    # Random init leaves norms at 1 and biases at 0; perturb them so the parity test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_hf_model(model: transformers.PreTrainedModel, folder: Path, **kw) -> Path:
    model.save_pretrained(folder, **kw)
    return folder
