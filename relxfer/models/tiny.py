"""The built-in tiny model `builtin:tiny-llama`: a small Llama the project builds itself,
deterministically from a seed and offline, so tests and smoke studies never need the hub.

The recipe (model sizes, tokenizer settings, corpus, seed) is hashed into the cache directory
name, so a changed recipe builds a new directory instead of reusing a stale one, and the same
recipe always yields byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from relxfer.data.synthetic import tokenizer_corpus
from relxfer.models.build_once import build_once

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

# torch, tokenizers and transformers are imported where the model is built: the recipe (and its
# hash, which enters cell keys) is read by `relxfer plan`, which stays free of them.

BUILTIN_ID = "builtin:tiny-llama"

# Bump when the build code changes in a way the recipe below does not capture.
BUILD_VERSION = 1

# Model sizes: small enough that a smoke study (QLoRA on ~200 items, ~1,500 scored questions,
# ~100 short CoT generations) runs in well under two minutes on two CPU cores, large enough that
# LoRA visibly learns the answer format (width 64 learns it much more slowly). The widths are
# multiples of 64, the bitsandbytes NF4 block size.
MODEL_SIZES = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    # RoPE has no position table, so this only bounds what callers may assume; 4,096 leaves room
    # for real Belebele passages in scripts the byte-level tokenizer spells byte by byte.
    "max_position_embeddings": 4096,
    # Std of the normal init: 1/sqrt(hidden) rather than Llama's 0.02. The final RMSNorm fixes the
    # hidden state's norm at sqrt(hidden), so with 0.02 a random model's logits stay within
    # +-0.02 * hidden = +-2.6 whatever LoRA does to the layers below, and fine-tuning cannot
    # concentrate probability on the answer labels; with 1/sqrt(hidden) the bound is +-11.
    "initializer_range": 128**-0.5,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,  # a separate lm_head, like most instruction models
}

# Tokenizer: byte-level BPE, so any text (Arabic, Hebrew, Ethiopic) tokenizes without unknowns.
TOKENIZER_SETTINGS = {
    "vocab_size": 1024,  # 256 bytes + 6 special tokens + 762 merges (the trainer stops at the cap)
    "min_frequency": 1,  # merge even pairs seen once: the corpus is small
}
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")
PAD, BOS, EOS = SPECIAL_TOKENS[:3]
# A minimal chat template: role marker, content, end-of-turn (the EOS token).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|eos|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def recipe(seed: int = 0) -> dict:
    """Everything that determines the built files (the cache directory is named by its hash)."""
    return {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "model_sizes": MODEL_SIZES,
        "tokenizer_settings": TOKENIZER_SETTINGS,
        "special_tokens": list(SPECIAL_TOKENS),
        "chat_template": CHAT_TEMPLATE,
        "corpus": tokenizer_corpus(),
    }


def recipe_hash(seed: int = 0) -> str:
    blob = json.dumps(recipe(seed), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on the synthetic corpus. The `tokenizers` BPE trainer breaks ties
    between equally frequent pairs by the pair itself, so the result is deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SETTINGS["vocab_size"],
        min_frequency=TOKENIZER_SETTINGS["min_frequency"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    # Like Llama: `add_special_tokens=True` prepends BOS (lm-eval's HFLM encodes without it).
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_SIZES["max_position_embeddings"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama whose weights depend only on `seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SIZES,
    )
    # A private RNG stream: building the model (first use of a cache) must not change the global
    # RNG state, or a process that builds it would initialise LoRA differently from one that
    # loads it from the cache.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # transformers wraps PreTrainedModel.to with functools.wraps(Module.to); mypy then reads the
    # wrapper's first parameter as the model, so its call signature is wrong.
    return model.to(torch.float32).eval()  # type: ignore[arg-type]


def tiny_model_dir(cache_dir: Path, seed: int = 0) -> Path:
    return Path(cache_dir) / "builtin" / f"tiny-llama-{recipe_hash(seed)}"


def build_tiny_model(cache_dir: Path, seed: int = 0) -> Path:
    """Build the tiny model once into `cache_dir/builtin/tiny-llama-<recipe-hash>/` and return
    that directory (loadable with `from_pretrained`), written atomically (see build_once)."""

    def write(tmp: Path) -> None:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, seed)
        from relxfer.models.build_once import quiet_transformers

        with quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        (tmp / "relxfer_builtin.json").write_text(
            json.dumps({"id": BUILTIN_ID, "recipe_hash": recipe_hash(seed), "seed": seed}, indent=2) + "\n"
        )

    return build_once(tiny_model_dir(cache_dir, seed), write)
