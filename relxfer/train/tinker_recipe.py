"""How the spec's fine-tuning recipe maps onto what Tinker can express.

- LoRA rank: passed as is. Tinker trains whole groups of layers (attention, MLP, unembedding),
  so `target_modules` must name whole groups (`all-linear` = attention + MLP, as peft reads it).
- Optimizer: torch AdamW's settings passed explicitly (the SDK's defaults differ: beta2 0.95,
  eps 1e-12), the spec's weight decay (decoupled, scaled by the learning rate, like torch), and
  gradient clipping where the SDK has `grad_clip_norm`.
- Learning rate: the schedule is computed here, one value per optimizer step, exactly as
  `transformers.get_scheduler` gives it to the local trainer (the value it logs for step k is the
  scheduler's value after k - 1 steps), and sent with each step.
- Not expressible, recorded as tags instead: LoRA alpha (Tinker fixes 32), LoRA dropout (none),
  4-bit quantization of the base (Tinker trains on its own weights' precision).
"""

from __future__ import annotations

import math

from relxfer.errors import SpecError as RecipeError
from relxfer.spec.types import FinetuneMethod, FinetuneSpec, TrainingSpec
from relxfer.train.data import micro_batches

TORCH_ADAMW = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}  # torch.optim.AdamW defaults, as the local trainer uses
TINKER_LORA_ALPHA = 32.0
GROUPS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "unembed": ("lm_head",),
}


def lora_groups(target_modules) -> dict[str, bool]:
    """`train_attn`, `train_mlp`, `train_unembed` for the SDK, from the spec's target_modules."""
    if target_modules == "all-linear":
        return {"train_attn": True, "train_mlp": True, "train_unembed": False}
    named = set(target_modules)
    known = {name for members in GROUPS.values() for name in members}
    unknown = sorted(named - known)
    if unknown:
        raise RecipeError(
            f"/finetune/lora/target_modules: Tinker trains whole groups of layers; {', '.join(unknown)} is not one of "
            f"{', '.join(sorted(known))}"
        )
    chosen = {}
    for group, members in GROUPS.items():
        present = named & set(members)
        if present and present != set(members):
            missing = ", ".join(m for m in members if m not in present)
            raise RecipeError(
                f"/finetune/lora/target_modules: Tinker trains the whole {group} group; add {missing} or use all-linear"
            )
        chosen[group] = bool(present)
    return {"train_attn": chosen["attention"], "train_mlp": chosen["mlp"], "train_unembed": chosen["unembed"]}


def learning_rate(step: int, steps: int, training: TrainingSpec) -> float:
    """The learning rate of optimizer step `step` (1-based) of `steps`, as the local trainer's
    `transformers.get_scheduler` schedule gives it (its lambda after step - 1 scheduler steps)."""
    peak = float(training.learning_rate)
    warmup = round(training.warmup_ratio * steps)
    done = step - 1
    if done < warmup:
        return peak * done / max(1, warmup)
    kind = training.lr_scheduler
    if kind == "constant":
        return peak
    progress = (done - warmup) / max(1, steps - warmup)
    if kind == "linear":
        return peak * max(0.0, (steps - done) / max(1, steps - warmup))
    if kind == "cosine":
        return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise AssertionError(f"unknown lr_scheduler {kind!r}")  # the schema admits only the three above


def adam_params(types_module, lr: float, training: TrainingSpec) -> object:
    """The SDK's AdamParams with torch AdamW's betas and eps, the spec's weight decay and (where
    the SDK has the field) gradient clipping; every value explicit."""
    fields = dict(TORCH_ADAMW, learning_rate=lr, weight_decay=float(training.weight_decay))
    available = getattr(types_module.AdamParams, "model_fields", {})
    if "grad_clip_norm" in available:
        fields["grad_clip_norm"] = float(training.max_grad_norm or 0.0)  # 0.0 = no clipping
    return types_module.AdamParams(**fields)


def not_applied(finetune: FinetuneSpec, sdk_has_clipping: bool) -> str:
    """The recipe's settings Tinker cannot apply, for a run tag (empty when none)."""
    lora, training = finetune.lora, finetune.training
    notes = []
    if float(lora.alpha) != TINKER_LORA_ALPHA:
        notes.append(f"lora.alpha={lora.alpha} (Tinker fixes {TINKER_LORA_ALPHA:g})")
    if lora.dropout:
        notes.append(f"lora.dropout={lora.dropout} (Tinker has none)")
    if finetune.method is FinetuneMethod.QLORA:
        notes.append("method=qlora (Tinker trains on its own precision, no 4-bit base)")
    if training.max_grad_norm and not sdk_has_clipping:
        notes.append(f"training.max_grad_norm={training.max_grad_norm} (this SDK has no grad_clip_norm)")
    return "; ".join(notes)


def step_examples(n_rows: int, training: TrainingSpec, seed: int, step: int, total_micro: int) -> list[int]:
    """Example indices of optimizer step `step`: its micro-batches in the local trainer's order,
    concatenated (one forward_backward per step computes the same summed gradient)."""
    accum = training.grad_accum_steps
    batches = micro_batches(n_rows, training.batch_size, seed, (step - 1) * accum, min(step * accum, total_micro))
    return [i for batch in batches for i in batch]


def schedule_length(n_rows: int, training: TrainingSpec) -> tuple[int, int]:
    """(optimizer steps, micro-batches) of the run, as the local trainer counts them."""
    batch_size, accum = training.batch_size, training.grad_accum_steps
    if training.max_steps is not None:
        return training.max_steps, training.max_steps * accum
    total_micro = max(1, math.ceil(math.ceil(n_rows / batch_size) * training.epochs))
    return math.ceil(total_micro / accum), total_micro
