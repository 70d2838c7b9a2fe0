"""Built-in twins of the flagship's model families: tiny random-weight models in the real
architectures (transformers' Qwen3, Qwen3-MoE, GptOss and DeepseekV3 classes, scaled down) on
the real tokenizers and chat templates (relxfer.models.real_tokenizers), built offline and
deterministically from a seed, like the built-in tiny model.

What a twin keeps of its family: the model class and its architecture flags (QK-norm, grouped-query
attention, attention biases and sinks, sliding-window layers, RoPE and YaRN settings, multi-head
latent attention, a dense first layer before the MoE layers, shared and routed experts with top-k
routing), the padded vocabulary size, the special token ids and the generation settings. What it
drops: width, depth and expert counts, so each twin is a few tens of MB. The hidden size stays at
64 because the 151k-201k-row embeddings are most of each model; layer widths are multiples of 64
(the bitsandbytes NF4 block size; its CPU kernel needs output widths that divide by 32).

The recipe (sizes, seed, the digests of the tokenizer files read) names the cache directory, so
a changed recipe or tokenizer file builds a new directory instead of reusing a stale one. Weights
are stored in bfloat16 (half the size on disk; a spec's `dtype` loads them as it says).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relxfer.models import real_tokenizers
from relxfer.models.build_once import build_once, quiet_transformers

# Bump when the build code changes in a way the recipe does not capture.
BUILD_VERSION = 1
HIDDEN = 64
# Std of the normal init, 1/sqrt(hidden) as in the built-in tiny model: with transformers' 0.02
# the logits of a random model stay too flat for fine-tuning to move probability onto the labels.
INIT_STD = HIDDEN**-0.5
STORED_DTYPE = "bfloat16"  # a torch dtype's name: the recipe is read without importing torch


@dataclass(frozen=True)
class Twin:
    name: str
    stands_for: str  # the real models whose architecture and format it carries
    architecture: str  # the spec's `architecture`: dense or moe
    tokenizer: str  # the tokenizer folder (real_tokenizers.FOLDERS); deepseek-v3.1 is paired
    config_class: str  # a transformers config class
    sizes: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin_id(self) -> str:
        return f"builtin:{self.name}"


_ATTENTION = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4, "initializer_range": INIT_STD}

TWINS = (
    Twin(
        name="qwen3-twin",
        stands_for="Qwen3-8B, Qwen3-32B (hybrid thinking)",
        architecture="dense",
        tokenizer="qwen3",
        config_class="Qwen3Config",
        sizes={
            **_ATTENTION,
            "vocab_size": 151936,
            "intermediate_size": 128,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 40960,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,  # Qwen3-8B and -32B have an untied output head
        },
    ),
    Twin(
        name="qwen3-moe-twin",
        stands_for="Qwen3-30B-A3B-Instruct-2507",
        architecture="moe",
        tokenizer="qwen3-instruct-2507",
        config_class="Qwen3MoeConfig",
        sizes={
            **_ATTENTION,
            "vocab_size": 151936,
            "intermediate_size": 128,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "num_experts": 8,  # 128 in the real model
            "num_experts_per_tok": 2,  # 8
            "moe_intermediate_size": 64,  # 768
            "norm_topk_prob": True,
            "max_position_embeddings": 262144,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0},
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
    ),
    Twin(
        name="gpt-oss-twin",
        stands_for="gpt-oss-20b, gpt-oss-120b (harmony format)",
        architecture="moe",
        tokenizer="gpt-oss",
        config_class="GptOssConfig",
        sizes={
            **_ATTENTION,
            "vocab_size": 201088,
            "intermediate_size": 64,  # the experts' width (2880)
            "num_key_value_heads": 2,
            "head_dim": 32,
            "num_local_experts": 8,  # 32 / 128
            "num_experts_per_tok": 2,  # 4
            "sliding_window": 128,
            "layer_types": ["sliding_attention", "full_attention"],
            "attention_bias": True,
            "swiglu_limit": 7.0,
            "max_position_embeddings": 131072,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 4096,
            },
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
    ),
    Twin(
        name="deepseek-v3-twin",
        stands_for="DeepSeek-V3.1 (template on the Qwen3 vocabulary: no DeepSeek tokenizer file at hand)",
        architecture="moe",
        tokenizer="deepseek-v3.1",
        config_class="DeepseekV3Config",
        sizes={
            **_ATTENTION,
            "vocab_size": 151936,  # the paired Qwen3 vocabulary, padded as Qwen pads it
            "intermediate_size": 128,  # the dense first layer
            "num_key_value_heads": 4,
            "q_lora_rank": 64,  # 1536
            # The real latent attention sizes: vLLM's CPU kernel only runs a latent cache of
            # kv_lora_rank + qk_rope_head_dim = 576.
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "first_k_dense_replace": 1,  # 3: the first layers are dense
            "n_routed_experts": 8,  # 256
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,  # 8
            "n_group": 2,  # 8
            "topk_group": 1,  # 4
            "moe_intermediate_size": 64,  # 2048
            "routed_scaling_factor": 2.5,
            "norm_topk_prob": True,
            # Not read by transformers (it always routes this way) but by servers: without them
            # vLLM routes by softmax without the score-correction bias.
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "num_nextn_predict_layers": 0,  # no multi-token-prediction weights
            "max_position_embeddings": 163840,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 40.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "original_max_position_embeddings": 4096,
            },
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
    ),
)
BY_ID = {twin.builtin_id: twin for twin in TWINS}


def twin(builtin_id: str) -> Twin:
    return BY_ID[builtin_id]


def recipe(item: Twin, seed: int = 0) -> dict:
    """Everything that determines the built files (the cache directory is named by its hash)."""
    return {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "name": item.name,
        "config_class": item.config_class,
        "sizes": item.sizes,
        "stored_dtype": f"torch.{STORED_DTYPE}",
        "tokenizer_files": {name: real_tokenizers.files_digest(name) for name in tokenizer_sources(item)},
        "deepseek_specials": list(real_tokenizers.DEEPSEEK_SPECIALS) if item.tokenizer == "deepseek-v3.1" else None,
    }


def recipe_hash(item: Twin, seed: int = 0) -> str:
    blob = json.dumps(recipe(item, seed), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def twin_dir(cache_dir: Path, item: Twin, seed: int = 0) -> Path:
    return Path(cache_dir) / "builtin" / f"{item.name}-{recipe_hash(item, seed)}"


def tokenizer_sources(item: Twin) -> list[str]:
    """The tokenizer folders a twin reads (DeepSeek's template comes with the Qwen3 vocabulary)."""
    return ["qwen3", "deepseek-v3.1"] if item.tokenizer == "deepseek-v3.1" else [item.tokenizer]


def check_tokenizer_files(builtin_id: str) -> None:
    """A one-line ModelError when a twin's tokenizer files are missing (before anything runs)."""
    for name in tokenizer_sources(twin(builtin_id)):
        real_tokenizers.folder(name)


def build_tokenizer(item: Twin):
    if item.tokenizer == "deepseek-v3.1":
        return real_tokenizers.deepseek_tokenizer()
    return real_tokenizers.load_family_tokenizer(item.tokenizer)


def _real_json(item: Twin, name: str) -> dict:
    """A JSON file of the family's folder ({} when the family ships none, as DeepSeek here)."""
    if item.tokenizer == "deepseek-v3.1":
        return {}
    path = real_tokenizers.folder(item.tokenizer) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def build_config(item: Twin, tokenizer):
    """The scaled-down config: the twin's sizes, the family's special token ids."""
    import transformers

    real = _real_json(item, "config.json")
    ids = {
        key: real.get(key, getattr(tokenizer, key, None)) for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    return getattr(transformers, item.config_class)(**ids, **item.sizes)


def build_generation_config(item: Twin, config):
    """The family's generation settings (sampling defaults and end tokens) where it ships them."""
    from transformers import GenerationConfig

    real = _real_json(item, "generation_config.json")
    real.pop("transformers_version", None)
    return GenerationConfig(**real) if real else GenerationConfig.from_model_config(config)


def build_model(item: Twin, tokenizer, seed: int = 0):
    """A randomly initialised model of the twin's class whose weights depend only on `seed`."""
    import torch
    from transformers import AutoModelForCausalLM

    config = build_config(item, tokenizer)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{item.name}: {len(tokenizer)} tokens do not fit vocab_size {config.vocab_size}")
    # A private RNG stream: building (the first use of a cache) must not move the global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = build_generation_config(item, config)
    return model.eval()


def build_twin(cache_dir: Path, builtin_id: str, seed: int = 0) -> Path:
    """Build the twin once into `cache_dir/builtin/<name>-<recipe-hash>/` and return that
    directory (loadable with `from_pretrained`), written atomically (see build_once)."""
    item = twin(builtin_id)

    def write(tmp: Path) -> None:
        import torch

        tokenizer = build_tokenizer(item)
        model = build_model(item, tokenizer, seed)
        with quiet_transformers():
            model.to(getattr(torch, STORED_DTYPE)).save_pretrained(tmp, safe_serialization=True)
            if item.tokenizer == "deepseek-v3.1":
                tokenizer.save_pretrained(tmp)
            else:
                real_tokenizers.copy_tokenizer_files(item.tokenizer, tmp)
        (tmp / "relxfer_builtin.json").write_text(
            json.dumps(
                {
                    "id": item.builtin_id,
                    "stands_for": item.stands_for,
                    "recipe_hash": recipe_hash(item, seed),
                    "seed": seed,
                },
                indent=2,
            )
            + "\n"
        )

    return build_once(twin_dir(cache_dir, item, seed), write)


def builder(builtin_id: str):
    """`build(cache_dir) -> directory` for relxfer.models.loading.BUILTIN_MODELS."""

    def build(cache_dir: Path) -> Path:
        return build_twin(cache_dir, builtin_id)

    build.__name__ = f"build_{twin(builtin_id).name.replace('-', '_')}"
    return build
