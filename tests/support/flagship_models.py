"""The flagship's architectures with random weights: model directories built from the real
configs and tokenizers in `../shared/data/tokenizers/` (or a packed copy of them), at full size
or shrunk to a few layers of a few dozen units, and the bytes their weights take once relxfer's
QLoRA has loaded and prepared them.

A directory holds config.json, random bfloat16 safetensors and the real tokenizer files, so
relxfer loads it like a downloaded checkpoint (`from_pretrained`), 4-bit quantization and all.
The packed copy (`pack_data`) gzips the large files so that they travel to a machine without
network access; the readers here take a file or its `.gz` alike.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# The two models the flagship spec fine-tunes on one GPU, by their `specs/full.json` names.
QWEN, GPT_OSS = "qwen3-4b", "gpt-oss-20b"


@dataclass(frozen=True)
class Flagship:
    spec_name: str  # the model's name in specs/full.json
    folder: str  # its folder under the tokenizers directory
    files: tuple[str, ...]  # tokenizer and generation files copied into the model directory
    tiny: dict  # config overrides that shrink the architecture and keep its kind


FLAGSHIPS = {
    QWEN: Flagship(
        QWEN,
        "qwen3-instruct-2507",
        ("vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json"),
        # Widths are multiples of 64, the NF4 block size; the real vocabulary stays (the real
        # tokenizer's ids must exist), as do tied embeddings and grouped-query attention.
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "max_window_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        },
    ),
    GPT_OSS: Flagship(
        GPT_OSS,
        "gpt-oss",
        ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"),
        # One sliding and one full attention layer (the real 128-token window), 4 experts, 2 a token.
        {
            "hidden_size": 64,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "layer_types": ["sliding_attention", "full_attention"],
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "experts_per_token": 2,
        },
    ),
}

# Data files the benchmark reads, relative to the data directory; the large ones travel gzipped.
BELEBELE_LANGUAGES = ("arb_Arab", "fra_Latn")
GZIP_ABOVE_BYTES = 100_000


def data_files() -> list[str]:
    files = [f"tokenizers/{f.folder}/{name}" for f in FLAGSHIPS.values() for name in (*f.files, "config.json")]
    return files + [f"belebele/{code}.jsonl" for code in BELEBELE_LANGUAGES]


def read_bytes(path: Path) -> bytes:
    """The file, or its gzipped copy `path.gz` decompressed."""
    if path.is_file():
        return path.read_bytes()
    packed = path.with_name(path.name + ".gz")
    if packed.is_file():
        return gzip.decompress(packed.read_bytes())
    raise FileNotFoundError(f"neither {path} nor {packed} exists")


def pack_data(data_dir: Path, out_dir: Path) -> list[Path]:
    """Copy what the benchmark reads from `data_dir` (../shared/data) into `out_dir`, files over
    GZIP_ABOVE_BYTES gzipped; returns the written files."""
    written = []
    for name in data_files():
        source, target = data_dir / name, out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.stat().st_size > GZIP_ABOVE_BYTES:
            target = target.with_name(target.name + ".gz")
            target.write_bytes(gzip.compress(source.read_bytes(), compresslevel=6, mtime=0))
        else:
            shutil.copyfile(source, target)
        written.append(target)
    return written


def unpack_belebele(data_dir: Path, out_dir: Path) -> Path:
    """A directory of plain `<code>.jsonl` files (what relxfer's Belebele loader reads)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for code in BELEBELE_LANGUAGES:
        (out_dir / f"{code}.jsonl").write_bytes(read_bytes(data_dir / "belebele" / f"{code}.jsonl"))
    return out_dir


def architecture_config(data_dir: Path, name: str, tiny: bool) -> dict:
    """The model's real config.json, shrunk when `tiny`; without the checkpoint's own
    quantization (gpt-oss ships MXFP4): the random weights are bfloat16, as relxfer trains them."""
    config = json.loads(read_bytes(data_dir / "tokenizers" / FLAGSHIPS[name].folder / "config.json"))
    config.pop("quantization_config", None)
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    if tiny:
        config.update(FLAGSHIPS[name].tiny)
    return config


def build_random_checkpoint(data_dir: Path, name: str, tiny: bool, out_dir: Path, device: str, seed: int = 0) -> Path:
    """A model directory with random bfloat16 weights (the config's own initialization, drawn on
    `device`), the config and the real tokenizer files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = architecture_config(data_dir, name, tiny)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out_dir), dtype=torch.bfloat16)
    model.save_pretrained(out_dir, max_shard_size="5GB")  # a bounded share of host memory at a time
    del model
    for file in FLAGSHIPS[name].files:
        source = data_dir / "tokenizers" / FLAGSHIPS[name].folder / file
        (out_dir / file).write_bytes(read_bytes(source))
    return out_dir


# -- weights in memory -------------------------------------------------------------------------


def _category(param) -> str:
    return "nf4" if type(param).__name__ == "Params4bit" else str(param.dtype).removeprefix("torch.")


def measured_weight_bytes(model) -> dict[str, int]:
    """Bytes of every parameter and buffer of a loaded model, by storage: "nf4" (bitsandbytes'
    packed 4-bit weights with their quantization constants) or the dtype."""
    totals: dict[str, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        key = _category(tensor)
        size = tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            size += sum(
                t.numel() * t.element_size()
                for t in (state.absmax, getattr(state.state2, "absmax", None), getattr(state.state2, "code", None))
                if t is not None
            )
        totals[key] = totals.get(key, 0) + size
    return totals


def _nf4_constant_bytes(n: int, double: bool) -> int:
    """Quantization constants of an n-weight layer: one float32 absmax per 64-weight block, or
    (double quantization) one 8-bit absmax per block, one float32 per 256 of those and the
    256-entry float32 code they are quantized with."""
    blocks = -(-n // 64)
    return blocks + 4 * -(-blocks // 256) + 4 * 256 if double else 4 * blocks


def expected_weight_bytes(config: dict, finetune) -> dict[str, int]:
    """What the same count gives for `config` under relxfer's QLoRA recipe `finetune` (a FinetuneSpec), computed on the meta device
    (no memory, any size): bitsandbytes turns every `nn.Linear` but the output head into NF4
    (4 bits a weight plus constants); every other parameter (embeddings, norms, fused MoE experts,
    router) keeps the bfloat16 it was loaded in, and the biases of 4-bit layers take the compute
    dtype (bitsandbytes casts them at the first forward); the LoRA adapter (r x (in + out) a
    targeted layer) is float32. Buffers (rotary tables) keep their dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    head = model.get_output_embeddings()
    double = finetune.quantization.double_quant
    compute = str(finetune.quantization.compute_dtype)
    rank = finetune.lora.r
    totals = {"nf4": 0, "float32": 0, "bfloat16": 0}
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            n = module.weight.numel()
            totals["nf4"] += -(-n // 2) + _nf4_constant_bytes(n, double)
            totals["float32"] += rank * (module.in_features + module.out_features) * 4  # LoRA A and B
            seen.add(id(module.weight))
            if module.bias is not None:  # bitsandbytes casts it to the compute dtype at the first forward
                totals[compute] = totals.get(compute, 0) + module.bias.numel() * DTYPE_BYTES[compute]
                seen.add(id(module.bias))
    for param in model.parameters():  # tied weights are listed once
        if id(param) not in seen:
            totals["bfloat16"] += param.numel() * 2
    for buffer in model.buffers():
        key = str(buffer.dtype).removeprefix("torch.")
        totals[key] = totals.get(key, 0) + buffer.numel() * buffer.element_size()
    return totals
