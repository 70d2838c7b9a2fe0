"""Training step time: relxfer's `train_lora` vs a bare peft + torch loop on the same tiny model,
the same examples, the same batches, measured in the same run, reported as a ratio; then relxfer in
one process vs FSDP2 over `--world-size` torchrun processes (gloo) with the same global batch.

    python bench/train_throughput.py [--steps 60] [--batch-size 8] [--threads 1] [--rounds 2] [--world-size 2]

Both sides load the built-in tiny model in 4-bit NF4 (real bitsandbytes layers), wrap it with
the same LoRA config and train with AdamW + a linear schedule. The bare loop is the textbook
one: right padding, `labels` with -100 on prompt and padding, `model(...).loss` over full logits.
Step time is the median over steps after a warmup; the two sides alternate for `--rounds` rounds
and the best median of each side counts, which damps noise from other processes on the machine.
Target: relxfer / bare <= 1.1.

FSDP2 case: the same recipe through the `torchrun` engine (relxfer.train.torchrun_trainer), each rank
with `--threads` threads. Step time is taken inside the loop on both sides (the step's global
tokens / the tokens/s that rank 0 reports), so process start-up and model loading are not in it;
the launch's wall time is printed apart. On a CPU with gloo this measures what sharding and
gradient reduction cost (overhead), not a speed-up: the model is tiny and the ranks share the
machine's cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relxfer.data.synthetic import SyntheticLanguage, generate  # noqa: E402
from relxfer.models.loading import bnb_config, keep_compute_dtype, quiet_transformers  # noqa: E402
from relxfer.models.tiny import BUILTIN_ID, build_tiny_model  # noqa: E402
from relxfer.spec.types import FinetuneSpec, ModelSpec, TorchrunFinetuneEngine  # noqa: E402
from relxfer.train import micro_batches, tokenize_examples, train_lora  # noqa: E402
from relxfer.train.data import step_counts  # noqa: E402

TINY_ENTRY = {"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"}
TINY = ModelSpec.from_partial(TINY_ENTRY)


def examples(n: int) -> list[tuple[str, str]]:
    items = generate([SyntheticLanguage("base")], n_passages=n // 2 + 1, seed=0)["base"][:n]
    out = []
    for item in items:
        options = "".join(f"{k + 1}. {o}\n" for k, o in enumerate(item.options))
        out.append((f"Passage: {item.passage}\nQuestion: {item.question}\n{options}Answer:", f" {item.gold + 1}"))
    return out


def relxfer_step_times(finetune: FinetuneSpec, data, cache: Path, seed: int) -> list[float]:
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        train_lora(
            TINY,
            finetune,
            data,
            Path(out),
            seed,
            cache,
            on_step=lambda s, m: stamps.append(time.perf_counter()),
            progress=False,
        )
    return [b - a for a, b in zip(stamps, stamps[1:])]


def step_tokens(finetune: FinetuneSpec, data, cache: Path, seed: int) -> list[int]:
    """Prompt + completion tokens of each optimizer step (the global batch), as the loop counts them."""
    from relxfer.models.loading import load_tokenizer

    train = finetune.training
    rows = tokenize_examples(load_tokenizer(TINY, cache), data, True, train.max_seq_len)
    steps, total_micro = step_counts(len(rows), train)
    accum = train.grad_accum_steps
    return [
        sum(
            len(rows[i][0])
            for idx in micro_batches(len(rows), train.batch_size, seed, (s - 1) * accum, min(s * accum, total_micro))
            for i in idx
        )
        for s in range(1, steps + 1)
    ]


def in_loop_step_times(
    finetune: FinetuneSpec, data, cache: Path, seed: int, world_size: int
) -> tuple[list[float], float]:
    """(step seconds from the loop's own tokens/s, wall seconds of the whole call) for one process
    (world_size 1) or FSDP2 over `world_size` torchrun processes."""
    from types import SimpleNamespace

    from relxfer.spec.engines import EngineContext
    from relxfer.train.base import TrainRequest
    from relxfer.train.torchrun_trainer import TorchrunTrainer

    rates = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if world_size == 1:
            train_lora(
                TINY,
                finetune,
                data,
                Path(out),
                seed,
                cache,
                on_step=lambda s, m: rates.append(m["tokens_per_s"]),
                progress=False,
            )
        else:
            config = TorchrunFinetuneEngine.from_partial({"kind": "torchrun", "nproc_per_node": world_size})
            model = ModelSpec.from_partial(
                {
                    **TINY_ENTRY,
                    "architecture": "dense",
                    "engines": {"finetune": config.to_dict()},
                    "resources": {"gpus": 0},
                }
            )
            context = EngineContext(model, SimpleNamespace(finetune=finetune), cache)
            request = TrainRequest(TINY, finetune, data, Path(out), seed, cache, progress=False)
            TorchrunTrainer(config, context).train(request, lambda s, m: rates.append(m["tokens_per_s"]))
    wall = time.perf_counter() - started
    return [n / r for n, r in zip(step_tokens(finetune, data, cache, seed), rates)], wall


def bare_step_times(finetune: FinetuneSpec, data, cache: Path, seed: int) -> list[float]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    cfg = finetune
    train, lora = cfg.training, cfg.lora
    path = build_tiny_model(cache)
    torch.manual_seed(seed)
    quant = bnb_config(cfg.quantization)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, device_map="cpu", quantization_config=quant
        )
    keep_compute_dtype(model, quant.bnb_4bit_compute_dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    for param in model.parameters():  # relxfer's QLoRA: frozen weights stay as loaded
        param.requires_grad = False
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(model, config)
    rows = tokenize_examples(tokenizer, data, False, train.max_seq_len)  # the same token ids
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    steps = train.max_steps
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps)
    model.train()
    times = []
    for indices in micro_batches(len(rows), train.batch_size, seed, 0, steps):
        started = time.perf_counter()
        batch = [rows[i] for i in indices]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        for r, (ids, n) in enumerate(batch):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            labels[r, len(ids) - n : len(ids)] = torch.tensor(ids[len(ids) - n :])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path(".relxfer-cache"))
    parser.add_argument("--world-size", type=int, default=2, help="FSDP2 processes (0: skip the FSDP2 case)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # each torchrun rank

    data = examples(args.items)
    finetune = FinetuneSpec.from_partial(
        {
            "method": "qlora",
            "training": {"max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": 2e-4},
        }
    )
    best = {"relxfer": float("inf"), "bare": float("inf")}
    for round_ in range(args.rounds):
        for name, fn in (("relxfer", relxfer_step_times), ("bare", bare_step_times)):
            times = fn(finetune, data, args.cache_dir, seed=0)[args.warmup :]
            median = statistics.median(times)
            best[name] = min(best[name], median)
            print(f"round {round_ + 1} {name:8s} median step {median * 1000:7.2f} ms over {len(times)} steps")
    ratio = best["relxfer"] / best["bare"]
    print(
        f"tiny model, 4-bit NF4, batch {args.batch_size}, {args.threads} thread(s): relxfer {best['relxfer'] * 1000:.2f} ms/step, "
        f"bare peft+torch {best['bare'] * 1000:.2f} ms/step, ratio {ratio:.3f} (target <= 1.1)"
    )
    if args.world_size > 1:
        compare_fsdp(finetune, data, args)


def compare_fsdp(finetune: FinetuneSpec, data, args) -> None:
    """One process vs FSDP2 over args.world_size processes, alternating; the best median counts."""
    tokens = statistics.mean(step_tokens(finetune, data, args.cache_dir, 0)[args.warmup :])
    best: dict[int, float] = {}
    for round_ in range(args.rounds):
        for world in (1, args.world_size):
            times, wall = in_loop_step_times(finetune, data, args.cache_dir, 0, world)
            median = statistics.median(times[args.warmup :])
            best[world] = min(best.get(world, float("inf")), median)
            print(
                f"round {round_ + 1} {world} process(es): median step {median * 1000:7.2f} ms, "
                f"{tokens / median:,.0f} tokens/s, wall {wall:.1f} s (with start-up and loading)"
            )
    one, many = best[1], best[args.world_size]
    print(
        f"FSDP2 (gloo, CPU) x {args.world_size} processes, {args.threads} thread(s) each, global batch {args.batch_size}: "
        f"{many * 1000:.2f} ms/step, {tokens / many:,.0f} tokens/s; one process {one * 1000:.2f} ms/step, "
        f"{tokens / one:,.0f} tokens/s; step time ratio {many / one:.2f}; core time per step ratio "
        f"{many * args.world_size / one:.2f} (what sharding and gloo reductions cost on a CPU: not a speed-up measure)"
    )


if __name__ == "__main__":
    main()
