"""GPU check: QLoRA-train the built-in tiny model in 4-bit on CUDA, evaluate it there, and compare
its predictions with the same base + adapter evaluated on the CPU.

    python bench/gpu_check.py [--steps 100] [--items 200] [--eval-items 600] [--min-agreement 0.95] [--dtype float32|bfloat16] [--fsdp-ranks N]

Prints training tokens/s, peak GPU memory, scoring and generation throughput, and the CPU/GPU
agreement of the predicted labels (and the largest log-prob difference). Then the same QLoRA
through the `torchrun` engine (FSDP2, NCCL): on 2 GPUs when the machine has them, else FSDP2 with
world size 1 on one GPU (`--fsdp-ranks 0` skips it); prints its loss curve's largest difference
from the one-process GPU run and how many of its predictions equal that run's (LoRA dropout is on
here and each rank draws its own masks: with 2 ranks the curves agree roughly, with 1 closely). Exits 0 without a
GPU (saying so), 1 when the agreement is below --min-agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relxfer.data.synthetic import SyntheticLanguage, generate  # noqa: E402
from relxfer.evaluate.local_backend import LocalBackend  # noqa: E402
from relxfer.models.tiny import BUILTIN_ID  # noqa: E402
from relxfer.train import train_lora  # noqa: E402
from tests.support.gpu_runs import engine_finetune, finetune_engine, machine, synchronize  # noqa: E402

LABELS = [" 1", " 2", " 3", " 4"]


def prompt(item) -> str:
    options = "".join(f"{k + 1}. {o}\n" for k, o in enumerate(item.options))
    return f"Passage: {item.passage}\nQuestion: {item.question}\n{options}Answer:"


def score(backend: LocalBackend, items) -> tuple[np.ndarray, float, int]:
    """Label log-probs, seconds, prompt tokens."""
    prompts, conts = [], []
    for item in items:
        pairs = [backend.split_continuation(prompt(item), label) for label in LABELS]
        prompts.append(pairs[0][0])
        conts.append([c for _, c in pairs])
    synchronize(backend.device)
    started = time.perf_counter()
    logprobs = backend.label_logprobs(prompts, conts)
    synchronize(backend.device)
    return logprobs, time.perf_counter() - started, sum(len(p) for p in prompts)


def fsdp_check(ranks, model, quant, finetune, examples, eval_items, single, single_lp, cache, work) -> dict:
    """The same fine-tune through the torchrun engine (FSDP2 over `ranks` GPUs); its loss curve and
    predictions against the one-process GPU run."""
    from relxfer.spec.types import ModelSpec

    entry = ModelSpec.from_partial({**model.to_dict(), "resources": {"gpus": ranks}})
    engine = finetune_engine("torchrun", nproc_per_node=ranks)
    result, wall = engine_finetune(entry, finetune, engine, examples, work / "fsdp", cache)
    backend = LocalBackend.load(model, quant, cache, adapter_dir=result.adapter_dir)
    lp, _, _ = score(backend, eval_items)
    report = {
        "ranks": ranks,
        "wall_s": round(wall, 1),
        "train_tokens_per_s": round(result.tokens_per_s),
        "peak_gpu_mib_largest_rank": round(result.peak_memory_mb, 1),
        "max_loss_diff_vs_one_process": float(
            np.abs(np.array(result.loss_history) - np.array(single.loss_history)).max()
        ),
        "predictions_equal": int((lp.argmax(1) == single_lp.argmax(1)).sum()),
        "predictions": len(eval_items),
    }
    print(f"fsdp: {report}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--items", type=int, default=200, help="training examples")
    parser.add_argument("--eval-items", type=int, default=600)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--min-agreement", type=float, default=0.95)
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="model and 4-bit compute dtype"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument(
        "--fsdp-ranks", type=int, default=None, help="FSDP2 processes (default: 2 with 2 GPUs, else 1; 0 skips)"
    )
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to check.")
        return 0

    torch.set_num_threads(4)  # the CPU reference pass
    work = Path(tempfile.mkdtemp(prefix="relxfer-gpu-check-"))
    cache = args.cache_dir or work / "cache"
    print(f"device: {machine()}; work dir {work}")

    n_passages = (args.items + args.eval_items) // 2 + 1
    items = generate([SyntheticLanguage("base")], n_passages=n_passages, seed=0)["base"]
    train_items, eval_items = items[: args.items], items[args.items : args.items + args.eval_items]
    examples = [(prompt(item), f" {item.gold + 1}") for item in train_items]

    from relxfer.spec.types import FinetuneSpec, ModelSpec, Quantization

    quant = Quantization.from_partial(
        {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": args.dtype}
    )
    gpu_model = ModelSpec.from_partial(
        {"name": "tiny", "source": BUILTIN_ID, "dtype": args.dtype, "device_map": "auto"}
    )
    cpu_model = replace(gpu_model, device_map="cpu")
    finetune = FinetuneSpec.from_partial(
        {
            "method": "qlora",
            "quantization": quant.to_dict(),
            "training": {"max_steps": args.steps, "batch_size": 8, "learning_rate": args.learning_rate},
        }
    )

    started = time.perf_counter()
    result = train_lora(gpu_model, finetune, examples, work / "finetune", seed=0, cache_dir=cache, progress=False)
    train_s = time.perf_counter() - started
    print(
        f"train: {result.steps} steps in {train_s:.1f} s (with loading), {result.tokens_per_s:,.0f} tokens/s, "
        f"peak GPU memory {result.peak_memory_mb:.1f} MiB, loss {result.loss_history[0]:.3f} -> {result.final_loss:.3f}"
    )

    gpu = LocalBackend.load(gpu_model, quant, cache, adapter_dir=result.adapter_dir)
    assert gpu.device.type == "cuda", gpu.device
    torch.cuda.reset_peak_memory_stats()
    score(gpu, eval_items[:16])  # warm up kernels
    gpu_lp, gpu_s, n_tokens = score(gpu, eval_items)
    eval_peak = torch.cuda.max_memory_allocated() / 2**20
    started = time.perf_counter()
    texts = gpu.generate([gpu.encode(prompt(i)) for i in eval_items[:100]], max_new_tokens=32, stop=["\n\n"])
    synchronize(gpu.device)
    gen_s = time.perf_counter() - started
    print(
        f"gpu eval: {len(eval_items)} prompts in {gpu_s:.2f} s ({n_tokens / gpu_s:,.0f} prompt tokens/s), "
        f"peak GPU memory {eval_peak:.1f} MiB; 100 generations x 32 tokens in {gen_s:.2f} s"
    )

    cpu = LocalBackend.load(cpu_model, quant, cache, adapter_dir=result.adapter_dir)
    cpu_lp, cpu_s, _ = score(cpu, eval_items)
    gold = np.array([item.gold for item in eval_items])
    agreement = float((gpu_lp.argmax(1) == cpu_lp.argmax(1)).mean())
    summary = {
        "device": torch.cuda.get_device_name(0),
        "dtype": args.dtype,
        "train_tokens_per_s": round(result.tokens_per_s),
        "train_peak_gpu_mib": round(result.peak_memory_mb, 1),
        "eval_prompt_tokens_per_s_gpu": round(n_tokens / gpu_s),
        "eval_prompt_tokens_per_s_cpu": round(n_tokens / cpu_s),
        "eval_peak_gpu_mib": round(eval_peak, 1),
        "cpu_gpu_agreement": agreement,
        "max_abs_logprob_diff": float(np.abs(gpu_lp - cpu_lp).max()),
        "accuracy_gpu": float((gpu_lp.argmax(1) == gold).mean()),
        "accuracy_cpu": float((cpu_lp.argmax(1) == gold).mean()),
        "label_mass_gpu": float(np.exp(gpu_lp).sum(1).mean()),
        "generations_nonempty": sum(bool(t) for t in texts),
    }
    ranks = args.fsdp_ranks if args.fsdp_ranks is not None else min(2, torch.cuda.device_count())
    if ranks:
        summary["fsdp"] = fsdp_check(
            ranks, gpu_model, quant, finetune, examples, eval_items, result, gpu_lp, cache, work
        )
    print(json.dumps(summary, indent=2))
    if agreement < args.min_agreement:
        print(f"gpu_check: CPU/GPU agreement {agreement:.3f} is below {args.min_agreement}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
