"""What a model's fine-tune needs in memory, from the spec alone (no torch, no download), and the
check that refuses one that cannot fit the resources declared for it.

The estimate is a floor: the base weights as they sit in memory during training, split evenly
over the devices that hold them (FSDP2 shards every weight; `device_map` spreads them). It leaves
out activations, the LoRA adapter with its gradients and AdamW state (well under 1% of the weights
at r=16), and the layer FSDP2 gathers at a time. A fine-tune whose floor does not fit is refused;
one whose floor fits may still need more.

What is 4-bit is what bitsandbytes quantizes: `nn.Linear` layers. The fused 3-D expert weights of
transformers' MoE models (gpt-oss, DeepSeek-V3, Qwen3-MoE) are not `nn.Linear`: under "QLoRA"
they stay in the compute dtype (checked on tiny random Qwen3-MoE models in tests/test_memory.py).
For a MoE model the expert share is taken as params_total_b - params_active_b, itself a floor (the
active experts are experts too).
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto: assumed 16-bit
NF4_BYTES = 0.5  # 4 bits a weight
# Quantization constants per weight: one float32 absmax per 64-weight block, or (double
# quantization) one 8-bit absmax per block plus one float32 per 256 blocks.
CONSTANT_BYTES = {False: 4 / 64, True: 1 / 64 + 4 / (64 * 256)}


@dataclass(frozen=True)
class FinetuneMemory:
    model: str
    engine: str
    devices: int  # devices the weights are spread over (GPUs, or ranks on the CPU)
    gpus: bool  # the devices are GPUs
    quantized_b: float  # billions of weights in 4 bits
    full_b: float  # billions of weights in `full_dtype` (MoE experts under QLoRA; all of them under LoRA)
    full_dtype: str
    quantized_gb: float
    full_gb: float

    @property
    def total_gb(self) -> float:
        return self.quantized_gb + self.full_gb

    @property
    def per_device_gb(self) -> float:
        return self.total_gb / self.devices

    def describe(self) -> str:
        parts = []
        if self.quantized_b:
            parts.append(f"4-bit NF4: {self.quantized_b:g}B weights, {self.quantized_gb:.1f} GB")
        if self.full_b:
            what = "fused MoE experts, not quantized" if self.quantized_b else "all weights"
            parts.append(f"{self.full_dtype} ({what}): {self.full_b:g}B weights, {self.full_gb:.1f} GB")
        where = (
            f"{self.devices} GPU{'s' if self.devices > 1 else ''}"
            if self.gpus
            else f"{self.devices} CPU process{'es' if self.devices > 1 else ''}"
        )
        return (
            f">= {self.total_gb:.1f} GB of weights ({'; '.join(parts)}), >= {self.per_device_gb:.1f} GB on each of "
            f"{where} on {self.engine}; activations and optimizer state not counted"
        )


def world_size(model: dict) -> int:
    """Processes (ranks) of the model's fine-tuning engine."""
    engine = model["engines"]["finetune"]
    if engine["kind"] == "torchrun":
        return engine["nproc_per_node"]
    if engine["kind"] == "ray":
        return engine["num_workers"]
    return 1


def estimate(model: dict, finetune: dict | None) -> FinetuneMemory | None:
    """The floor for `model` under the spec's resolved `finetune` section; None without
    `params_total_b` or without a fine-tune."""
    total = model.get("params_total_b")
    if finetune is None or not total:
        return None
    engine = model["engines"]["finetune"]
    if engine["kind"] == "ray":  # workers anywhere in the cluster, each with its own devices
        gpus = engine["resources_per_worker"].get("GPU", 0)
    else:
        gpus = model["resources"]["gpus"]
    devices = world_size(model) if engine["kind"] != "local" else max(1, gpus)
    if finetune["method"] == "qlora":
        q = finetune["quantization"]
        full_dtype = q["compute_dtype"]
        experts = _expert_params_b(model)
        quantized = total - experts
        quantized_gb = quantized * (NF4_BYTES + CONSTANT_BYTES[bool(q["double_quant"])])  # billions x bytes = GB
    else:
        full_dtype = model["dtype"]
        experts, quantized, quantized_gb = total, 0.0, 0.0
    return FinetuneMemory(
        model=model["name"],
        engine=engine["kind"],
        devices=devices,
        gpus=gpus > 0,
        quantized_b=round(quantized, 3),
        full_b=round(experts, 3),
        full_dtype=full_dtype,
        quantized_gb=quantized_gb,
        full_gb=experts * DTYPE_BYTES[full_dtype],
    )


def _expert_params_b(model: dict) -> float:
    if model.get("architecture") != "moe" or not model.get("params_active_b"):
        return 0.0
    return max(0.0, model["params_total_b"] - model["params_active_b"])


def misfit(model: dict, finetune: dict | None) -> str | None:
    """Why the fine-tune of `model` cannot fit its declared resources, or None (also when the
    resources or the size are not declared: nothing to check)."""
    floor = estimate(model, finetune)
    if floor is None:
        return None
    res = model["resources"]
    name = model["name"]
    if floor.gpus and res.get("gpu_memory_gb") and floor.per_device_gb > res["gpu_memory_gb"]:
        return (
            f"the fine-tune of model {name!r} cannot fit: it needs {floor.describe()}; resources.gpu_memory_gb "
            f"declares {res['gpu_memory_gb']:g} GB per GPU (shard over more ranks, or use method 'qlora')"
        )
    host = res.get("memory_gb")
    if host and floor.engine != "ray":
        # One node holds it all on the CPU; while loading, a GPU node holds one full copy per
        # rank loading at once (one at a time with cpu_ram_efficient_loading).
        copies = 1
        if floor.gpus and floor.engine == "torchrun":
            efficient = (model["engines"]["finetune"].get("fsdp") or {}).get("cpu_ram_efficient_loading", True)
            copies = 1 if efficient else floor.devices
        elif floor.gpus:
            copies = 0  # device_map loads straight onto the GPUs
        if copies and floor.total_gb * copies > host:
            return (
                f"the fine-tune of model {name!r} cannot fit: it needs {floor.total_gb * copies:.1f} GB of host "
                f"memory ({floor.describe()}); resources.memory_gb declares {host:g} GB"
            )
    return None


def finetune_tags(model: dict, finetune: dict | None) -> dict[str, str]:
    """What the fine-tune really is, as run tags: a MoE 'QLoRA' keeps its experts in the compute
    dtype, and says so."""
    if finetune is None:
        return {}
    if finetune["method"] != "qlora":
        return {"finetune_method": "lora", "quantized": "none"}
    compute = finetune["quantization"]["compute_dtype"]
    if model.get("architecture") == "moe":
        return {
            "finetune_method": "qlora-experts-unquantized",
            "quantized": f"nn.Linear layers 4-bit {finetune['quantization']['quant_type']}; fused MoE expert weights "
            f"stay {compute} (bitsandbytes does not quantize 3-D expert tensors)",
        }
    return {"finetune_method": "qlora", "quantized": f"nn.Linear layers 4-bit {finetune['quantization']['quant_type']}"}
