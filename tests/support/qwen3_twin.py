"""A tiny random-weight Qwen3 (dense) with the real Qwen3 tokenizer, for the server tests and the
throughput bench: the architecture vLLM serves as `Qwen3ForCausalLM`, the config of Qwen3-1.7B
scaled down, the tokenizer files of `../shared/data/tokenizers/qwen3` (read there, never copied
into the repository). With this tokenizer the answer labels " 1".." 4" are two tokens each,
[220, 16..19]: a shared space, then the digit.

Built once into the cache, deterministically from a seed, like the built-in tiny model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from relxfer.models.build_once import build_once, quiet_transformers
from tests.support.shared_data import SHARED_DATA, need

QWEN3_TOKENIZER = SHARED_DATA / "tokenizers" / "qwen3"
SEED = 0
# Qwen3-1.7B's config with every size cut down (head_dim 64: a size vLLM's CPU attention takes).
SIZES = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "max_position_embeddings": 4096,
    "initializer_range": 128**-0.5,  # logits spread enough that labels differ clearly
}


def qwen3_twin(cache_dir: Path) -> Path:
    """The model directory (config, float32 safetensors, tokenizer), built on first use."""
    source = need(QWEN3_TOKENIZER, "the Qwen3 tokenizer")
    base = json.loads((source / "config.json").read_text())
    config = {**base, **SIZES, "torch_dtype": "float32"}
    digest = hashlib.sha256(
        json.dumps({"config": config, "seed": SEED, "vocab": (source / "vocab.json").stat().st_size}).encode()
    ).hexdigest()[:12]

    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source)
            torch.manual_seed(SEED)
            model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in config.items() if k != "architectures"}))
            model.to(torch.float32).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

    return build_once(Path(cache_dir) / "models" / f"qwen3-twin-{digest}", write)
