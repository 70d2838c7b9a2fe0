"""The one (Q)LoRA training loop, for one process and for FSDP2 across processes alike.

It reads top to bottom: load, tokenize, (resume), then per optimizer step: micro-batches -> loss
-> backward -> clip -> AdamW step -> scheduler step -> report -> checkpoint. Everything that
decides the result is seeded: LoRA init and dropout (torch), the data order (a `random.Random`
per epoch, derived from the seed), and a resumed run restores the optimizer, scheduler and RNG
states, so it continues exactly where the interrupted run stopped.

What a distributed run does differently lives in `parallel` (relxfer.train.parallel): which
rows of a global micro-batch this rank trains on, sums over ranks, FSDP2 wrapping. With the
default `Single()` every one of those is the identity, so one-process runs are what they were.

Layout of `out_dir`:
    checkpoints/step-<N>/   see relxfer.train.checkpoints
    adapter/                the final adapter (peft `save_pretrained`), the tokenizer files and
                            relxfer_finetune.json (full config, base model id and revision, result)
Both are written to a temporary directory and renamed into place, so they are complete or absent.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from relxfer.errors import DataError
from relxfer.models.loading import load_causal_lm
from relxfer.models.tokenization import default_add_bos_token
from relxfer.spec.types import FinetuneMethod, FinetuneSpec, ModelSpec
from relxfer.train.checkpoints import (
    atomic_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from relxfer.train.data import micro_batches, step_counts, tokenize_examples
from relxfer.train.loss import completion_loss
from relxfer.train.parallel import Single
from relxfer.train.records import (
    FINETUNE_JSON,
    TrainResult,
    config_hash,
    finished_result,
    peak_memory_mb,
    result_record,
    versions,
)

SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
StepCallback = Callable[[int, dict], None]
CheckpointCallback = Callable[[int, Path], None]


def train_lora(
    model: ModelSpec,
    finetune: FinetuneSpec,
    examples: list[tuple[str, str]],
    out_dir: Path,
    seed: int,
    cache_dir: Path,
    on_step: StepCallback | None = None,
    progress: bool = True,
    *,
    parallel=None,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on (prompt, completion) pairs; resumes from the latest checkpoint
    in `out_dir`, and returns the stored result when `out_dir` already holds a finished run.
    `on_step(step, metrics)` and `on_checkpoint(step, directory)` are called on rank 0 only.
    A direct call builds its settings with `ModelSpec.from_partial` and `FinetuneSpec.from_partial`."""
    parallel = parallel or Single()
    out_dir = Path(out_dir)
    cfg = finetune
    train = cfg.training
    if not examples:
        raise DataError("no training examples")
    run_hash = config_hash(model, cfg, examples, seed, parallel.identity())
    finished = finished_result(out_dir, run_hash)
    if finished is not None:
        return finished

    peft_model, tokenizer = _load_peft_model(model, cfg, Path(cache_dir), seed, parallel)
    device = parallel.device(peft_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # -- data ------------------------------------------------------------------------------------
    rows = tokenize_examples(tokenizer, examples, default_add_bos_token(peft_model.get_base_model()), train.max_seq_len)
    batch_size, accum = train.batch_size, train.grad_accum_steps
    steps, total_micro = step_counts(len(rows), train)

    # -- optimizer, schedule, resume -------------------------------------------------------------
    from transformers import get_scheduler

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    scheduler = get_scheduler(
        SCHEDULERS[train.lr_scheduler],
        optimizer,
        num_warmup_steps=round(train.warmup_ratio * steps),
        num_training_steps=steps,
    )
    start_step = 0
    loss_history: list[float] = []
    latest = latest_checkpoint(out_dir)
    if latest is not None:
        start_step, loss_history = load_checkpoint(latest, peft_model, optimizer, scheduler, run_hash, parallel)

    # -- train -----------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    peft_model.train()
    speeds = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    scale = parallel.loss_scale()
    with tqdm(total=steps, initial=start_step, desc="fine-tuning", disable=not (progress and parallel.is_main)) as bar:
        for step in range(start_step + 1, steps + 1):
            started = time.perf_counter()
            batches = [
                [rows[i] for i in idx]
                for idx in micro_batches(
                    len(rows), batch_size, seed, (step - 1) * accum, min(step * accum, total_micro)
                )
            ]
            # Normalise by the completion tokens of the whole (global) step, so accumulation and
            # sharding over ranks both equal one big batch.
            n_targets = sum(n for batch in batches for _, n in batch)
            step_loss = 0.0
            for batch in batches:
                local, weight = parallel.local_rows(batch)
                loss_sum, _ = completion_loss(peft_model, local, pad_id, device)
                factor = weight * scale
                (loss_sum / n_targets if factor == 1.0 else loss_sum * factor / n_targets).backward()
                step_loss += loss_sum.item() * weight
            step_loss = parallel.total(step_loss)
            if train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            n_tokens = sum(len(ids) for batch in batches for ids, _ in batch)
            speeds.append(n_tokens / elapsed)
            loss_history.append(step_loss / n_targets)
            # Report the step before checkpointing it: a process killed in between resumes from an
            # earlier checkpoint and repeats reported steps (the caller skips those), instead of
            # resuming after a step nobody reported.
            if on_step is not None and parallel.is_main:
                on_step(
                    step, {"train_loss": loss_history[-1], "learning_rate": learning_rate, "tokens_per_s": speeds[-1]}
                )
            if train.checkpoint_every and step % train.checkpoint_every == 0 and step < steps:
                saved = save_checkpoint(
                    out_dir, step, step * accum, peft_model, optimizer, scheduler, loss_history, run_hash, parallel
                )
                if on_checkpoint is not None and parallel.is_main:
                    on_checkpoint(step, saved)
            bar.set_postfix(loss=f"{loss_history[-1]:.4f}")
            bar.update(1)

    # -- save ------------------------------------------------------------------------------------
    peft_model.eval()
    result = TrainResult(
        adapter_dir=out_dir / "adapter",
        n_items=len(rows),
        steps=steps,
        resumed_from_step=start_step,
        final_loss=loss_history[-1],
        tokens_per_s=float(np.mean(speeds)) if speeds else 0.0,
        peak_memory_mb=parallel.maximum(peak_memory_mb(device)),
        loss_history=loss_history,
        config_hash=run_hash,
        model=peft_model if isinstance(parallel, Single) else None,
    )
    record = {
        "base_model": {"name": model.name, "source": model.source, "revision": model.revision, "dtype": model.dtype},
        "finetune": cfg.to_dict(),
        "seed": seed,
        "config_hash": run_hash,
        "result": result_record(result),
        "versions": versions(),
    }
    if parallel.identity() is not None:
        record["parallel"] = parallel.identity()
    adapter_state = parallel.trainable_state(peft_model)  # a collective when distributed
    if parallel.is_main:
        with atomic_dir(out_dir / "adapter") as tmp:
            peft_model.save_pretrained(tmp, state_dict=adapter_state)
            tokenizer.save_pretrained(tmp)
            (tmp / FINETUNE_JSON).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the run is complete
    parallel.barrier()
    return result


def _load_peft_model(model: ModelSpec, cfg: FinetuneSpec, cache_dir: Path, seed: int, parallel):
    """(PeftModel ready to train, tokenizer): the base (4-bit for QLoRA), LoRA on top, sharded by
    `parallel` (nothing happens to it in one process)."""
    from peft import LoraConfig, get_peft_model

    quantization = cfg.quantization if cfg.method is FinetuneMethod.QLORA else None
    checkpointing = parallel.gradient_checkpointing(cfg.training.gradient_checkpointing)
    with parallel.loading_turn():
        placed = dataclasses.replace(model, device_map=parallel.load_device_map(model.device_map))
        base, tokenizer = load_causal_lm(
            placed, quantization, cache_dir, quant_storage=parallel.quant_storage(quantization)
        )
        # Seed after loading, so nothing the loader does (building a model, quantizing) can shift
        # the LoRA initialisation: a process that built the base and one that loaded it agree,
        # and so do all ranks of a distributed run.
        seed_everything(seed)
        # Frozen weights keep the dtype they were loaded in. peft's prepare_model_for_kbit_training
        # would upcast every weight bnb did not quantize (embeddings, norms, fused MoE experts) to
        # float32: twice the memory of a bfloat16 model's experts, for weights that never train.
        # The trainable LoRA weights are float32 all the same (peft's autocast_adapter_dtype).
        for param in base.parameters():
            param.requires_grad = False
        if checkpointing:
            # Non-reentrant checkpointing needs no input that requires grad.
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = cfg.lora
        target = lora.target_modules
        lora_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft says int; any positive number works
            lora_dropout=lora.dropout,
            target_modules=target if isinstance(target, str) else list(target),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft reads a property that transformers has deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(base, lora_config)
        peft_model.config.use_cache = False
        peft_model = parallel.wrap(peft_model)
    return peft_model, tokenizer
