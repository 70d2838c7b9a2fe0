"""What a model's fine-tune needs in memory, from the spec alone (no torch, no download), and the
check that refuses one that cannot fit the resources declared for it.

The estimate is a floor: the base weights as they sit in memory during training, plus the LoRA
adapter with its gradients and AdamW state where the model's shape is known here
(relxfer.spec.adapter_size: peft keeps adapters in float32, so 16 bytes a parameter), split evenly
over the devices that hold them (FSDP2 shards every weight; `device_map` spreads them). It leaves
out activations and the layer FSDP2 gathers at a time. A fine-tune whose floor does not fit is
refused; one whose floor fits may still need more. At r=16 the adapter is well under 1% of the
weights; a mistyped rank (r=1000000000) makes it petabytes, refused before anything starts.

What is 4-bit is what bitsandbytes quantizes: `nn.Linear` layers. The fused 3-D expert weights of
transformers' MoE models (gpt-oss, DeepSeek-V3, Qwen3-MoE) are not `nn.Linear`: under "QLoRA"
they stay in the compute dtype (checked on tiny random Qwen3-MoE models in tests/test_memory.py).
For a MoE model the expert share is taken as params_total_b - params_active_b, itself a floor (the
active experts are experts too).
"""

from __future__ import annotations

from dataclasses import dataclass

from relxfer.spec.adapter_size import adapter_params
from relxfer.spec.types import (
    FinetuneEngineKind,
    FinetuneMethod,
    FinetuneSpec,
    ModelSpec,
    RayFinetuneEngine,
    TorchrunFinetuneEngine,
)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto: assumed 16-bit
NF4_BYTES = 0.5  # 4 bits a weight
# Quantization constants per weight: one float32 absmax per 64-weight block, or (double
# quantization) one 8-bit absmax per block plus one float32 per 256 blocks.
CONSTANT_BYTES = {False: 4 / 64, True: 1 / 64 + 4 / (64 * 256)}
# A LoRA parameter in training: float32 weight, gradient and AdamW's two moments.
ADAPTER_BYTES = 4 + 4 + 2 * 4


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
    lora_r: int = 0
    adapter_b: float | None = None  # billions of adapter parameters; None: the model's shape is not known here
    adapter_gb: float = 0.0

    @property
    def weights_gb(self) -> float:
        return self.quantized_gb + self.full_gb

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.adapter_gb

    @property
    def per_device_gb(self) -> float:
        return self.total_gb / self.devices

    def describe(self) -> str:
        parts: list[str] = []
        if self.adapter_b is not None:
            parts.append(
                f"LoRA r={self.lora_r}: {round(self.adapter_b * 1e9):,} adapter parameters with gradients and "
                f"AdamW state, {_size(self.adapter_gb)}"
            )
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
        held = "weights" if self.adapter_b is None else "weights and adapter" if self.weights_gb else "adapter"
        left_out = "activations and optimizer state" if self.adapter_b is None else "activations"
        return (
            f">= {_size(self.total_gb)} of {held} ({'; '.join(parts)}), >= {_size(self.per_device_gb)} on each of "
            f"{where} on {self.engine}; {left_out} not counted"
        )


def _size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 0.1 else f"{gb * 1e3:.2f} MB"


def world_size(model: ModelSpec) -> int:
    """Processes (ranks) of the model's fine-tuning engine."""
    engine = model.engines.finetune
    if isinstance(engine, TorchrunFinetuneEngine):
        return engine.nproc_per_node
    if isinstance(engine, RayFinetuneEngine):
        return engine.num_workers
    return 1


def estimate(model: ModelSpec, finetune: FinetuneSpec | None) -> FinetuneMemory | None:
    """The floor for `model` under the spec's resolved `finetune` section; None without a
    fine-tune, or when neither `params_total_b` nor the model's shape is known."""
    if finetune is None:
        return None
    total = model.params_total_b or 0.0
    adapter = adapter_params(model, finetune.lora)
    if not total and adapter is None:
        return None
    engine = model.engines.finetune
    gpus: float
    if isinstance(engine, RayFinetuneEngine):  # workers anywhere in the cluster, each with its own devices
        gpus = engine.resources_per_worker.get("GPU", 0)
    else:
        gpus = model.resources.gpus
    devices = world_size(model) if engine.kind is not FinetuneEngineKind.LOCAL else max(1, model.resources.gpus)
    full_dtype: str
    if finetune.method is FinetuneMethod.QLORA:
        q = finetune.quantization
        full_dtype = q.compute_dtype
        experts = _expert_params_b(model)
        quantized = total - experts
        quantized_gb = quantized * (NF4_BYTES + CONSTANT_BYTES[q.double_quant])  # billions x bytes = GB
    else:
        full_dtype = model.dtype
        experts, quantized, quantized_gb = total, 0.0, 0.0
    return FinetuneMemory(
        model=model.name,
        engine=str(engine.kind),
        devices=devices,
        gpus=gpus > 0,
        quantized_b=round(quantized, 3),
        full_b=round(experts, 3),
        full_dtype=full_dtype,
        quantized_gb=quantized_gb,
        full_gb=experts * DTYPE_BYTES[full_dtype],
        lora_r=finetune.lora.r,
        adapter_b=None if adapter is None else adapter / 1e9,
        adapter_gb=0.0 if adapter is None else adapter * ADAPTER_BYTES / 1e9,
    )


def _expert_params_b(model: ModelSpec) -> float:
    if model.architecture != "moe" or not model.params_active_b or model.params_total_b is None:
        return 0.0
    return max(0.0, model.params_total_b - model.params_active_b)


def misfit(model: ModelSpec, finetune: FinetuneSpec | None) -> str | None:
    """Why the fine-tune of `model` cannot fit its declared resources, or None (also when the
    resources or the size are not declared: nothing to check)."""
    floor = estimate(model, finetune)
    if floor is None:
        return None
    res = model.resources
    name = model.name
    if floor.gpus and res.gpu_memory_gb and floor.per_device_gb > res.gpu_memory_gb:
        return (
            f"the fine-tune of model {name!r} cannot fit: it needs {floor.describe()}; resources.gpu_memory_gb "
            f"declares {res.gpu_memory_gb:g} GB per GPU (shard over more ranks, or use method 'qlora'){_lower(floor)}"
        )
    host = res.memory_gb
    if host and floor.engine != FinetuneEngineKind.RAY:
        # One node holds it all on the CPU; while loading, a GPU node holds one full copy per
        # rank loading at once (one at a time with cpu_ram_efficient_loading).
        copies = 1
        engine = model.engines.finetune
        if floor.gpus and isinstance(engine, TorchrunFinetuneEngine):
            copies = 1 if engine.fsdp.cpu_ram_efficient_loading else floor.devices
        elif floor.gpus:
            copies = 0  # device_map loads straight onto the GPUs
        needed = floor.weights_gb * copies + (0.0 if floor.gpus else floor.adapter_gb)
        if needed > host:
            return (
                f"the fine-tune of model {name!r} cannot fit: it needs {needed:.1f} GB of host "
                f"memory ({floor.describe()}); resources.memory_gb declares {host:g} GB{_lower(floor)}"
            )
    return None


def misfit_here(model: ModelSpec, finetune: FinetuneSpec | None, host_gb: float, gpu_gb: float | None) -> str | None:
    """Why the fine-tune of `model` cannot fit on the machine that runs it (`host_gb` of memory;
    GPUs of `gpu_gb` each, None without GPUs), or None."""
    floor = estimate(model, finetune)
    if floor is None:
        return None
    name = model.name
    if floor.gpus and gpu_gb:
        if floor.per_device_gb > gpu_gb:
            return (
                f"the fine-tune of model {name!r} cannot fit on this machine: it needs {floor.describe()}; its GPUs "
                f"have {gpu_gb:.1f} GB each{_lower(floor)}"
            )
    elif floor.total_gb > host_gb:
        return (
            f"the fine-tune of model {name!r} cannot fit on this machine: it needs {floor.describe()}; this machine "
            f"has {host_gb:.1f} GB of memory{_lower(floor)}"
        )
    return None


def _lower(floor: FinetuneMemory) -> str:
    """What to lower when most of the floor is the adapter (a rank far too large)."""
    return (
        f"; lower finetune.lora.r ({floor.lora_r}): the adapter is most of it"
        if floor.adapter_gb > floor.weights_gb
        else ""
    )


def finetune_tags(model: ModelSpec, finetune: FinetuneSpec | None) -> dict[str, str]:
    """What the fine-tune really is, as run tags: a MoE 'QLoRA' keeps its experts in the compute
    dtype, and says so."""
    if finetune is None:
        return {}
    if finetune.method is not FinetuneMethod.QLORA:
        return {"finetune_method": "lora", "quantized": "none"}
    quantization = finetune.quantization
    if model.architecture == "moe":
        return {
            "finetune_method": "qlora-experts-unquantized",
            "quantized": f"nn.Linear layers 4-bit {quantization.quant_type}; fused MoE expert weights "
            f"stay {quantization.compute_dtype} (bitsandbytes does not quantize 3-D expert tensors)",
        }
    return {"finetune_method": "qlora", "quantized": f"nn.Linear layers 4-bit {quantization.quant_type}"}
