"""(Q)LoRA fine-tuning: a base model (4-bit NF4 for QLoRA) plus a peft LoRA adapter, trained on
(prompt, completion) pairs with the loss on the completion tokens only.

The loop reads top to bottom: load, tokenize, (resume), then per optimizer step: micro-batches
-> loss -> backward -> clip -> AdamW step -> scheduler step -> checkpoint -> callback. Everything
that decides the result is seeded: LoRA init and dropout (torch), the data order (a
`random.Random` per epoch, derived from the seed), and a resumed run restores the optimizer,
scheduler and RNG states, so it continues exactly where the interrupted run stopped.

Layout of `out_dir`:
    checkpoints/step-<N>/   adapter/, optimizer.pt, scheduler.pt, rng.pt, state.json
    adapter/                the final adapter (peft `save_pretrained`), the tokenizer files and
                            relxfer_finetune.json (full config, base model id and revision, result)
Both are written to a temporary directory and renamed into place, so they are complete or absent.
Only the last KEEP_CHECKPOINTS checkpoints are kept, and none once the final adapter is saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import resource
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backends.local import default_add_bos_token, encode_pair, left_pad
from .errors import DataError, ModelError
from .models import tiny
from .models.loading import load_causal_lm, resolve_model
from .spec import section_defaults

SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
KEEP_CHECKPOINTS = 2  # older checkpoints are deleted once a newer one is complete
FINETUNE_JSON = "relxfer_finetune.json"


@dataclass
class TrainResult:
    adapter_dir: Path
    n_items: int  # training examples
    steps: int  # optimizer steps of the whole run
    resumed_from_step: int  # 0 = started fresh; == steps when the run had already finished
    final_loss: float  # mean completion-token loss of the last step
    tokens_per_s: float  # mean over the steps run in this call (prompt + completion tokens)
    peak_memory_mb: float  # CUDA: max allocated; CPU: peak resident set size of the process
    loss_history: list[float]  # one mean loss per optimizer step, from step 1
    config_hash: str = ""
    # The trained PeftModel, in memory (None when the run had already finished). Not saved.
    model: object = field(default=None, repr=False, compare=False)


def resolve_finetune(finetune: dict | None) -> dict:
    """The fine-tuning entry with every default filled in from the spec schema, validated."""
    return section_defaults("finetune", finetune, ModelError)


def tokenize_examples(tokenizer, examples, add_bos_token: bool, max_seq_len: int) -> list[tuple[list[int], int]]:
    """(input_ids, n_completion) per example: the completion is the last n_completion tokens,
    split from the prompt exactly as scoring splits it (`encode_pair`). Too long examples keep
    their last `max_seq_len` tokens."""
    rows = []
    for i, (prompt, completion) in enumerate(examples):
        prompt_ids, completion_ids = encode_pair(tokenizer, prompt, completion, add_bos_token)
        if not completion_ids:
            raise DataError(f"training example {i} has an empty completion after tokenization: {completion!r}")
        ids = (prompt_ids + completion_ids)[-max_seq_len:]
        # The first token of a sequence has nothing before it to be predicted from.
        rows.append((ids, min(len(completion_ids), len(ids) - 1)))
    return rows


def micro_batches(n_items: int, batch_size: int, seed: int, start: int, stop: int):
    """Example indices of micro-batches start..stop-1 of an endless stream of epochs; epoch e is
    a permutation drawn from `random.Random(f"{seed}:{e}")`, cut into batches of `batch_size`."""
    per_epoch = math.ceil(n_items / batch_size)
    orders: dict[int, list[int]] = {}
    for j in range(start, stop):
        epoch, b = divmod(j, per_epoch)
        if epoch not in orders:
            order = list(range(n_items))
            random.Random(f"relxfer-finetune:{seed}:{epoch}").shuffle(order)
            orders[epoch] = order
        yield orders[epoch][b * batch_size : (b + 1) * batch_size]


def completion_loss(model, rows: Sequence[tuple[list[int], int]], pad_id: int, device) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the completion tokens of left-padded `rows`, and their number.
    Left padding puts every completion at the end, so logits are computed for the last
    (longest completion + 1) positions only."""
    ids, mask, positions = left_pad([r[0] for r in rows], pad_id, device)
    keep = max(n for _, n in rows) + 1
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False).logits
    targets = ids[:, -(keep - 1) :].clone()  # position t of `logits` predicts token t + 1
    for i, (_, n) in enumerate(rows):
        targets[i, : keep - 1 - n] = -100  # prompt (and padding): no loss
    loss = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, sum(n for _, n in rows)


def train_lora(
    model: dict,
    finetune: dict,
    examples: list[tuple[str, str]],
    out_dir: Path,
    seed: int,
    cache_dir: Path,
    on_step: Callable[[int, dict], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune a LoRA adapter on (prompt, completion) pairs; resumes from the latest checkpoint
    in `out_dir`, and returns the stored result when `out_dir` already holds a finished run."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    out_dir = Path(out_dir)
    model = resolve_model(model)
    cfg = resolve_finetune(finetune)
    train = cfg["training"]
    if not examples:
        raise DataError("no training examples")
    config_hash = _config_hash(model, cfg, examples, seed)
    finished = _finished_result(out_dir, config_hash)
    if finished is not None:
        return finished

    # -- model -----------------------------------------------------------------------------------
    quantization = cfg["quantization"] if cfg["method"] == "qlora" else None
    base, tokenizer = load_causal_lm(model, quantization, Path(cache_dir))
    # Seed after loading, so nothing the loader does (building a model, quantizing) can shift
    # the LoRA initialisation: a process that built the base and one that loaded it agree.
    _seed_everything(seed)
    gc_kwargs = {"use_reentrant": False}
    if quantization:
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=train["gradient_checkpointing"], gradient_checkpointing_kwargs=gc_kwargs
        )
    elif train["gradient_checkpointing"]:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    lora = cfg["lora"]
    target = lora["target_modules"]
    lora_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=target if isinstance(target, str) else list(target),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft reads a property that transformers has deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(base, lora_config)
    peft_model.config.use_cache = False
    device = peft_model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # -- data ------------------------------------------------------------------------------------
    rows = tokenize_examples(tokenizer, examples, default_add_bos_token(base), train["max_seq_len"])
    batch_size, accum = train["batch_size"], train["grad_accum_steps"]
    if train["max_steps"] is not None:
        steps, total_micro = train["max_steps"], train["max_steps"] * accum
    else:  # fractional epochs are allowed: 0.5 = the first half of one shuffled pass
        total_micro = max(1, math.ceil(math.ceil(len(rows) / batch_size) * train["epochs"]))
        steps = math.ceil(total_micro / accum)

    # -- optimizer, schedule, resume -------------------------------------------------------------
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train["learning_rate"], weight_decay=train["weight_decay"])
    scheduler = get_scheduler(
        SCHEDULERS[train["lr_scheduler"]],
        optimizer,
        num_warmup_steps=round(train["warmup_ratio"] * steps),
        num_training_steps=steps,
    )
    start_step, loss_history = 0, []
    latest = _latest_checkpoint(out_dir)
    if latest is not None:
        start_step, loss_history = _load_checkpoint(latest, peft_model, optimizer, scheduler, config_hash)

    # -- train -----------------------------------------------------------------------------------
    peft_model.train()
    speeds = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tqdm(total=steps, initial=start_step, desc="fine-tuning", disable=not progress) as bar:
        for step in range(start_step + 1, steps + 1):
            started = time.perf_counter()
            batches = [
                [rows[i] for i in idx]
                for idx in micro_batches(len(rows), batch_size, seed, (step - 1) * accum, min(step * accum, total_micro))
            ]
            # Normalise by the completion tokens of the whole step, so accumulation == one big batch.
            n_targets = sum(n for batch in batches for _, n in batch)
            step_loss = 0.0
            for batch in batches:
                loss_sum, _ = completion_loss(peft_model, batch, pad_id, device)
                (loss_sum / n_targets).backward()
                step_loss += loss_sum.item()
            if train["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(params, train["max_grad_norm"])
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
            if on_step is not None:
                on_step(step, {"train_loss": loss_history[-1], "learning_rate": learning_rate, "tokens_per_s": speeds[-1]})
            if train["checkpoint_every"] and step % train["checkpoint_every"] == 0 and step < steps:
                _save_checkpoint(out_dir, step, step * accum, peft_model, optimizer, scheduler, loss_history, config_hash)
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
        peak_memory_mb=_peak_memory_mb(device),
        loss_history=loss_history,
        config_hash=config_hash,
        model=peft_model,
    )
    record = {
        "base_model": {k: model.get(k) for k in ("name", "source", "revision", "dtype")},
        "finetune": cfg,
        "seed": seed,
        "config_hash": config_hash,
        "result": _result_record(result),
        "versions": _versions(),
    }
    with _atomic_dir(out_dir / "adapter") as tmp:
        peft_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / FINETUNE_JSON).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the run is complete
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _save_checkpoint(
    out_dir: Path, step: int, data_position: int, model, optimizer, scheduler, loss_history, config_hash: str
) -> None:
    with _atomic_dir(out_dir / "checkpoints" / f"step-{step}") as tmp:
        model.save_pretrained(tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        # Data position: micro-batches consumed so far (step x grad_accum_steps). The order is a
        # function of the seed, so the next micro-batch follows from (seed, position).
        state = {"step": step, "data_position": data_position, "loss_history": loss_history, "config_hash": config_hash}
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
    for old in sorted(_checkpoints(out_dir))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old[1], ignore_errors=True)


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith("step-") and (path / "state.json").is_file():
            found.append((int(path.name.split("-", 1)[1]), path))
    return found


def _latest_checkpoint(out_dir: Path) -> Path | None:
    found = _checkpoints(out_dir)
    return max(found)[1] if found else None


def _load_checkpoint(path: Path, model, optimizer, scheduler, config_hash: str) -> tuple[int, list[float]]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state["config_hash"] != config_hash:
        raise ModelError(
            f"checkpoint {str(path)!r} belongs to a different fine-tuning run (other model, data, seed or "
            "settings); delete it or use another output directory"
        )
    device = model.get_input_embeddings().weight.device
    set_peft_model_state_dict(model, load_file(path / "adapter" / "adapter_model.safetensors", device=str(device)))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return int(state["step"]), list(state["loss_history"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict:
    # Plain lists and tensors only, so the file loads with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _atomic_dir:
    """Context manager: yields a temporary directory next to `final`; on success replaces
    `final` with it by a rename, on failure removes it."""

    def __init__(self, final: Path):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.chmod(self.tmp, 0o755)
            if self.final.exists():
                shutil.rmtree(self.final)
            os.rename(self.tmp, self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


# ---------------------------------------------------------------------------------------------
# Provenance


def _config_hash(model: dict, cfg: dict, examples, seed: int) -> str:
    """Everything that decides the adapter: base model, settings, seed and the examples."""
    h = hashlib.sha256()
    base = {k: model.get(k) for k in ("source", "revision", "dtype")}
    if str(model["source"]) == tiny.BUILTIN_ID:  # a rebuilt tiny model is another base model
        base["recipe"] = tiny.recipe_hash()
    h.update(json.dumps({"model": base, "finetune": cfg, "seed": seed}, sort_keys=True).encode())
    for prompt, completion in examples:
        h.update(json.dumps([prompt, completion]).encode())
    return h.hexdigest()[:16]


def _finished_result(out_dir: Path, config_hash: str) -> TrainResult | None:
    path = out_dir / "adapter" / FINETUNE_JSON
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("config_hash") != config_hash:
        raise ModelError(
            f"{str(out_dir)!r} holds a finished fine-tuning run with other settings, model, data or seed; "
            "delete it or use another output directory"
        )
    result = dict(record["result"])
    result["adapter_dir"] = out_dir / "adapter"
    result["resumed_from_step"] = result["steps"]
    return TrainResult(**result)


def _result_record(result: TrainResult) -> dict:
    record = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "model"}
    record["adapter_dir"] = str(result.adapter_dir)
    return record


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _versions() -> dict:
    import bitsandbytes
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }
