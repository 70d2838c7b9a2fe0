"""Honest about MoE: what bitsandbytes quantizes (checked on tiny random MoE models with real
4-bit layers), the fine-tune memory floor `relxfer plan` shows, the refusal of a fine-tune that
cannot fit its declared resources, the run tags of a MoE "QLoRA", and which distributed-engine
settings enter cell keys."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from relxfer.cli import main
from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec
from relxfer.spec.memory import estimate, finetune_tags, misfit
from relxfer.spec.types import FinetuneMethod, Resources

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
FULL = REPO / "specs" / "full.json"


def tiny_moe(kind: str):
    from transformers import (
        GptOssConfig,
        GptOssForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    common = {
        "vocab_size": 256,
        "hidden_size": 128,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    if kind == "qwen3-moe":
        return Qwen3MoeForCausalLM(
            Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
        )
    return GptOssForCausalLM(
        GptOssConfig(
            **common,
            num_local_experts=4,
            num_experts_per_tok=2,
            head_dim=32,
            layer_types=["full_attention", "sliding_attention"],
        )
    )


@pytest.mark.parametrize("kind", ["qwen3-moe", "gpt-oss"])
def test_bitsandbytes_leaves_fused_moe_experts_in_the_compute_dtype(kind, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    tiny_moe(kind).save_pretrained(tmp_path)
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(
            tmp_path, dtype=torch.bfloat16, device_map="cpu", quantization_config=config
        )
    four_bit = {n for n, p in model.named_parameters() if isinstance(p, bnb.nn.Params4bit)}
    experts = {n: p for n, p in model.named_parameters() if ".experts." in n and p.dim() == 3}
    assert experts and not four_bit & set(experts)
    assert all(p.dtype == torch.bfloat16 for p in experts.values())
    assert "model.layers.0.self_attn.q_proj.weight" in four_bit  # nn.Linear layers are 4-bit
    # The experts are most of a MoE model's weights, as in the real ones.
    assert (
        sum(p.numel() for p in experts.values())
        > sum(p.numel() for n, p in model.named_parameters() if n not in experts) / 2
    )


def test_plan_shows_each_fine_tune_memory_floor_and_engine():
    result = CliRunner().invoke(main, ["plan", str(FULL)])
    assert result.exit_code == 0, result.output
    lines = {line.split(":")[0]: line for line in result.output.splitlines() if line.startswith("memory")}
    assert len(lines) == 7
    gpt = lines["memory    gpt-oss-120b"]
    assert (
        "4-bit NF4: 5.1B weights, 2.6 GB; bfloat16 (fused MoE experts, not quantized): 111.9B weights, 223.8 GB" in gpt
    )
    assert ">= 28.3 GB on each of 8 GPUs on torchrun" in gpt
    assert ">= 80.4 GB on each of 16 GPUs on ray" in lines["memory    deepseek-v3.1"]
    assert "fused MoE" not in lines["memory    qwen3-32b"]  # dense: all 4-bit
    assert "fine-tune on torchrun (nproc_per_node=8" in result.output


def test_a_fine_tune_that_cannot_fit_is_refused_naming_the_model_and_the_numbers(tmp_path):
    raw = json.loads(FULL.read_text())
    deepseek = next(m for m in raw["models"] if m["name"] == "deepseek-v3.1")
    deepseek["resources"]["gpu_memory_gb"] = 80  # H100s instead of H200s
    path = tmp_path / "too-small.json"
    path.write_text(json.dumps(raw))
    for command in ("validate", "plan"):
        result = CliRunner().invoke(main, [command, str(path)])
        assert result.exit_code == 2
        assert result.output.strip() == (
            f"Error: {path}: /models/6/resources: the fine-tune of model 'deepseek-v3.1' cannot fit: it needs "
            ">= 1287.1 GB of weights (4-bit NF4: 37B weights, 19.1 GB; bfloat16 (fused MoE experts, not quantized): "
            "634B weights, 1268.0 GB), >= 80.4 GB on each of 16 GPUs on ray; activations and optimizer state not "
            "counted; resources.gpu_memory_gb declares 80 GB per GPU (shard over more ranks, or use method 'qlora')"
        )


def test_host_memory_floor_on_the_cpu_and_undeclared_resources_are_not_checked():
    spec = load_spec(FULL)
    assert spec.finetune is not None
    cpu_only = Resources.from_partial({"gpus": 0, "cpus": 8, "memory_gb": 8})
    model = replace(spec.model("qwen3-32b"), resources=cpu_only)
    assert "needs 16.9 GB of host memory" in misfit(model, spec.finetune)
    assert misfit(replace(model, resources=replace(cpu_only, memory_gb=None)), spec.finetune) is None
    lora = replace(spec.finetune, method=FinetuneMethod.LORA)
    floor = estimate(spec.model("qwen3-32b"), lora)
    assert floor.quantized_b == 0 and floor.full_gb == pytest.approx(32.8 * 2)
    assert estimate(replace(model, params_total_b=None), spec.finetune) is None


def test_a_moe_qlora_is_labelled_for_what_it_is():
    spec = load_spec(FULL)
    moe = finetune_tags(spec.model("gpt-oss-120b"), spec.finetune)
    assert moe["finetune_method"] == "qlora-experts-unquantized"
    assert "fused MoE expert weights stay bfloat16" in moe["quantized"]
    assert finetune_tags(spec.model("qwen3-32b"), spec.finetune)["finetune_method"] == "qlora"


def test_distributed_settings_that_change_results_change_fine_tune_keys_only(tmp_path):
    raw = json.loads((REPO / "specs" / "smoke.json").read_text())

    def keys(engine: dict | None, name: str) -> dict:
        variant = json.loads(json.dumps(raw))
        if engine is not None:
            variant["models"][0]["engines"] = {"finetune": engine}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(variant))
        return {c.run_name: c.key for c in plan(load_spec(path))}

    local = keys(None, "local")
    two = keys({"kind": "torchrun", "nproc_per_node": 2}, "two")
    changed = {name for name in local if local[name] != two[name]}
    assert changed == {n for n in local if n.startswith("finetune/") or "/finetuned/" in n or "/finetuned_cot/" in n}
    assert keys({"kind": "torchrun", "nproc_per_node": 2, "fsdp": {"reshard_after_forward": False}}, "reshard") == two
    assert keys({"kind": "torchrun", "nproc_per_node": 4}, "four") != two
    assert keys({"kind": "torchrun", "nproc_per_node": 2, "mixed_precision": {"reduce_dtype": "bfloat16"}}, "mp") != two
