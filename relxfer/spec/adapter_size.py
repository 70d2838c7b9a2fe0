"""How many parameters a LoRA adapter adds, from the spec and the model's shape (no torch).

The shape comes from what relxfer can read without a download: the built-in tiny model's sizes
and a local model directory's config.json. A hub model's shape is not known before its config is
fetched, so its adapter is left out of the floor (None).

LoRA puts two matrices, A (r x in) and B (out x r), beside each targeted linear layer: r * (in +
out) parameters a layer. `all-linear` targets the attention and MLP projections of every block,
not the output head (peft leaves it out). The fused 3-D expert weights of transformers 5's MoE
models are not linear layers; peft 0.22 still puts LoRA on them (and on the router) for Qwen3-MoE
and DeepSeek-V3, as parameters, but not for gpt-oss (tests/test_twins.py checks both). Counting the
dense projections only keeps this a floor either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relxfer.spec.types import LoraSpec, ModelSpec

# The built-in tiny model's sizes (relxfer.models.tiny.MODEL_SIZES; a test keeps them equal).
BUILTIN_SHAPES = {
    "builtin:tiny-llama": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    }
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int  # 0: no dense MLP in the blocks (MoE experts only)
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of one block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
        }
        if self.intermediate:
            shapes |= {
                "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate),
                "down_proj": (self.intermediate, self.hidden),
            }
        return shapes


def shape_from_config(config: dict[str, Any]) -> ModelShape | None:
    config = config.get("text_config") or config  # multimodal checkpoints nest the language model's
    try:
        hidden, layers, heads = (
            int(config["hidden_size"]),
            int(config["num_hidden_layers"]),
            int(config["num_attention_heads"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    moe = any(k in config for k in ("num_experts", "num_local_experts", "n_routed_experts"))
    return ModelShape(
        hidden=hidden,
        intermediate=0 if moe else int(config.get("intermediate_size") or 0),
        layers=layers,
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
    )


def model_shape(model: ModelSpec) -> ModelShape | None:
    """The shape of a built-in model or of a local directory's config.json; None otherwise."""
    source = model.source
    if source in BUILTIN_SHAPES:
        return shape_from_config(BUILTIN_SHAPES[source])
    if source.startswith(("/", ".", "~")):
        try:
            config = json.loads((Path(source).expanduser() / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return shape_from_config(config) if isinstance(config, dict) else None
    return None


def adapter_params(model: ModelSpec, lora: LoraSpec) -> int | None:
    """Parameters of the LoRA adapter `lora` (the spec's finetune.lora) on `model`, or None when
    the model's shape is not known here."""
    shape = model_shape(model)
    if shape is None:
        return None
    targets = lora.target_modules
    wanted = set(PROJECTIONS) if targets == "all-linear" else {t.rsplit(".", 1)[-1] for t in targets}
    per_layer = sum(i + o for name, (i, o) in shape.projections().items() if name in wanted)
    return lora.r * per_layer * shape.layers
