"""The flagship's two single-GPU models at full size with random weights, through relxfer's own code:
QLoRA fine-tunes against the memory floor `relxfer plan` predicts, scoring and CoT speed.

On a machine with one GPU and no network (estimated at 5 to 8 minutes, not measured yet; give it
480 s: phases that would start after 300 s are skipped, and a second command runs them):

    # here, once (needs ../shared/data and PyPI): the real configs, tokenizers and Belebele files
    # (gzipped) and the wheels the GPU machine lacks, ~55 MB in .gpu-carry/ (git ignores it)
    python bench/gpu_flagship.py --pack .gpu-carry

    # there, from the repository root with .gpu-carry/ beside the code, 480 s limit ($OUT: the
    # folder whose files come back from that machine):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-carry/wheels/*.whl && PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 bench/gpu_flagship.py --data .gpu-carry/data --out $OUT/gpu_flagship.json

    # then keep the results: copy gpu_flagship.json to bench/results/gpu_flagship.json; a phase
    # skipped for time runs in a second command with --phases (e.g. --phases gpt-oss)

Phases, in this order (`--phases` picks some; a phase that would start after `--deadline-s` is
skipped and says so; the JSON is rewritten after every phase, so a run stopped by its time limit
still leaves what it measured):
  qwen      Qwen3-4B-Instruct-2507 (real config and tokenizer, random bfloat16 weights): QLoRA NF4
            through the `local` fine-tuning engine at specs/full.json's settings (batch 4 x
            accumulation 4, sequences up to 1,024 tokens, gradient checkpointing) for --steps
            optimizer steps on real Arabic Belebele items: peak GPU memory (allocated and
            reserved) against the floor `relxfer plan` predicts, the weights' bytes as loaded,
            step time and tokens/s.
  eval      the fine-tuned Qwen3-4B loaded as evaluation loads it (4-bit base + adapter):
            relxfer's scoring of --eval-items French Belebele questions (questions/s), then CoT
            generation of --cot-items prompts at the spec's max_new_tokens (tokens/s).
  fsdp      the same Qwen3-4B fine-tune through the `torchrun` engine (FSDP2, NCCL), world size 1.
  gpt-oss   gpt-oss-20b (real config and tokenizer, random weights, fused MoE experts in
            bfloat16 as relxfer's QLoRA leaves them): the same fine-tune, or the out-of-memory
            error it hits, against its floor.

`--tiny` runs every phase on the CPU with shrunken configs of the same architectures (2 layers,
64 wide, the real vocabularies and tokenizers): a check that the code paths run, not a
measurement; its output and JSON say that nothing was measured on a GPU. `--plan-only` writes the
predicted floors and weight counts without running anything. Every run also counts, on the
meta device, the bytes the full-size weights take once relxfer's QLoRA has prepared them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Everything is read from local files, and a GPU machine has no network: no hub look-ups (read by
# huggingface_hub when it is first imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tiny mode is a CPU check also where a GPU is visible (torchrun ranks included): hidden before
# anything can initialise CUDA.
if "--tiny" in sys.argv[1:]:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# The torchrun engine's ranks import relxfer from this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

from relxfer.data.belebele import load_belebele  # noqa: E402
from relxfer.evaluate.local_backend import LocalBackend  # noqa: E402
from relxfer.evaluate.loop import bind_backend, evaluate_items  # noqa: E402
from relxfer.models.chat_format import prompt_builder  # noqa: E402
from relxfer.spec.load import Spec, load_spec  # noqa: E402
from relxfer.spec.memory import estimate  # noqa: E402
from relxfer.spec.types import FinetuneSpec, ModelSpec  # noqa: E402
from tests.support import flagship_models as flagship  # noqa: E402
from tests.support.gpu_runs import GIB, engine_finetune, finetune_engine, machine, synchronize  # noqa: E402

SPEC = REPO / "specs" / "full.json"
SHARED_DATA = REPO.parent / "shared" / "data"
PHASES = ("qwen", "eval", "fsdp", "gpt-oss")
# The wheels a GPU machine with PyTorch, transformers and peft lacks (relxfer.spec validates with
# jsonschema); the versions this repository is tested with.
WHEELS = (
    "bitsandbytes==0.50.2",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
)
TINY_NOTE = (
    "TINY MODE: shrunken configs (2 layers, 64 wide) on the CPU; this checks that the code paths run "
    "and measured nothing on a GPU"
)
PLAN_NOTE = "predictions only: nothing was run (--plan-only)"


def log(message: str) -> None:
    print(f"[gpu_flagship {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- settings ----------------------------------------------------------------------------------


def bench_finetune(spec: Spec, steps: int, max_seq_len: int | None = None) -> FinetuneSpec:
    """The spec's fine-tune settings, cut to `steps` optimizer steps without checkpoints (and, for
    the CPU check, to shorter sequences)."""
    assert spec.finetune is not None, "specs/full.json declares a fine-tune"
    training = replace(spec.finetune.training, max_steps=steps, checkpoint_every=0)
    if max_seq_len:
        training = replace(training, max_seq_len=max_seq_len)
    return replace(spec.finetune, training=training)


def training_examples(spec: Spec, model: ModelSpec, belebele_dir: Path, n: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of the first `n` Arabic Belebele items, as the runner builds
    them for `model` (its prompt format, on its checkpoint's tokenizer)."""
    from transformers import AutoTokenizer

    items = load_belebele(["arb_Arab"], path=belebele_dir).items_by_language["arb_Arab"]
    builder = prompt_builder(spec, model, AutoTokenizer.from_pretrained(model.source))
    return [builder.training_example(item) for item in (items * (1 + n // len(items)))[:n]]


def floor_record(spec: Spec, name: str) -> dict:
    """The floor `relxfer plan specs/full.json` prints for the model (relxfer.spec.memory)."""
    floor = estimate(spec.model(name), spec.finetune)
    assert floor is not None, name
    return {
        "total_gb": round(floor.total_gb, 2),
        "per_device_gb": round(floor.per_device_gb, 2),
        "quantized_b": floor.quantized_b,
        "full_b": floor.full_b,
        "full_dtype": floor.full_dtype,
        "adapter_gb": round(floor.adapter_gb, 4),  # 0 for a hub model: its shape is not read before a run
        "plan_line": floor.describe(),
    }


def model_summary(config: dict) -> dict:
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_local_experts")
    return {k: config[k] for k in keys if k in config}


def parameter_count_b(config: dict) -> float:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    return round(sum(p.numel() for p in model.parameters()) / 1e9, 3)


def gb(totals: dict[str, int]) -> dict:
    return {**{k: round(v / 1e9, 3) for k, v in totals.items()}, "total": round(sum(totals.values()) / 1e9, 3)}


# -- measurements ------------------------------------------------------------------------------


class StepClock:
    """Per optimizer step (from the trainer's reports): wall-clock time since the previous report,
    tokens/s and loss. The first step's time is unknown (loading precedes it) and its speed
    includes warm-up: medians use steps 2 onwards when there are any."""

    def __init__(self):
        self.times, self.speeds, self.losses = [], [], []

    def __call__(self, step: int, metrics: dict) -> None:
        self.times.append(time.perf_counter())
        self.speeds.append(metrics["tokens_per_s"])
        self.losses.append(metrics["train_loss"])

    def summary(self) -> dict:
        steady = self.speeds[1:] or self.speeds
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return {
            "steps_reported": len(self.times),
            "step_s_median": round(statistics.median(gaps), 3) if gaps else None,
            "tokens_per_s_median": round(statistics.median(steady)) if steady else None,
            "tokens_per_s_first_step": round(self.speeds[0]) if self.speeds else None,
            "losses": [round(x, 4) for x in self.losses],
        }


def memory_after(result, device: str, in_this_process: bool) -> dict:
    """Peak memory of a finished fine-tune: the trainer's own figure (CUDA: max allocated since
    training began, weights included, the largest rank's; CPU: peak resident set size) and, for a
    fine-tune in this process on a GPU, the allocator's reserved peak (what the card must hold)."""
    record = {"peak_allocated_gib" if device == "cuda" else "peak_rss_gib": round(result.peak_memory_mb / 1024, 3)}
    if device == "cuda" and in_this_process:
        record["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    return record


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def failure(exc: BaseException, device: str) -> dict:
    """What a phase that failed leaves in the results: out-of-memory or another error, with the
    memory in use when it failed."""
    record: dict[str, object] = {
        "outcome": "out_of_memory" if out_of_memory(exc) else "error",
        "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}",
    }
    if device == "cuda":
        record["peak_allocated_gib_at_failure"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
    return record


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class DecodeCounter:
    """Tokens a generation produces, counted at the model: each forward pass of `generate` makes
    one new token per row (rows that already stopped included: the slots a batch computes)."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.shape[0]

    def close(self) -> None:
        self.handle.remove()


# -- phases ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, spec: Spec, work: Path):
        self.args, self.spec, self.work = args, spec, work
        self.device = "cpu" if args.tiny else "cuda"
        self.cache = work / "cache"
        self.belebele = flagship.unpack_belebele(args.data, work / "belebele")
        self.checkpoints: dict[str, Path] = {}
        self.adapters: dict[str, Path] = {}
        self.losses: dict[str, list[float]] = {}

    def model_entry(self, name: str) -> ModelSpec:
        """The spec's entry for `name`, reading the random-weight checkpoint instead of the hub."""
        if name not in self.checkpoints:
            started = time.perf_counter()
            self.checkpoints[name] = flagship.build_random_checkpoint(
                self.args.data, name, self.args.tiny, self.work / "models" / name, self.device
            )
            free_memory()
            log(f"{name}: random checkpoint written in {time.perf_counter() - started:.1f} s")
        return replace(self.spec.model(name), source=str(self.checkpoints[name]))

    def drop_checkpoint(self, name: str) -> None:
        """Free the disk a full-size checkpoint takes (gpt-oss-20b's is ~42 GB)."""
        import shutil

        path = self.checkpoints.pop(name, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def finetune(self, name: str, steps: int, engine, label: str) -> dict:
        finetune = bench_finetune(self.spec, steps, self.args.max_seq_len)
        training = finetune.training
        examples = training_examples(
            self.spec, self.model_entry(name), self.belebele, steps * training.batch_size * training.grad_accum_steps
        )
        model = self.model_entry(name)
        clock = StepClock()
        free_memory()
        result, wall = engine_finetune(model, finetune, engine, examples, self.work / label, self.cache, clock)
        record = {
            "outcome": "ok",
            "engine": str(engine.kind) + (f" x {engine.nproc_per_node}" if engine.kind == "torchrun" else ""),
            "steps": result.steps,
            "examples": len(examples),
            "wall_s": round(wall, 1),
            **memory_after(result, self.device, in_this_process=engine.kind == "local"),
            **clock.summary(),
            "tokens_per_s_mean_trainer": round(result.tokens_per_s),
        }
        if result.model is not None:  # one process: the trained model is still in memory
            record["weights_measured_gb"] = gb(flagship.measured_weight_bytes(result.model))
        self.adapters[label] = result.adapter_dir
        self.losses[label] = result.loss_history
        del result
        free_memory()
        return record

    def evaluate(self, name: str, adapter: Path) -> dict:
        spec, args = self.spec, self.args
        items = load_belebele(["fra_Latn"], path=self.belebele).items_by_language["fra_Latn"][: args.eval_items]
        started = time.perf_counter()
        backend = LocalBackend.load(self.model_entry(name), spec.eval_quantization, self.cache, adapter_dir=adapter)
        load_s = time.perf_counter() - started
        # The model's prompt format, on the backend's own chat template.
        builder = bind_backend(prompt_builder(spec, self.model_entry(name)), backend)
        evaluate_items(backend, items[:8], builder, progress=False)  # kernels warm up
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        synchronize(self.device)
        started = time.perf_counter()
        scored = evaluate_items(backend, items, builder, progress=False)
        synchronize(self.device)
        score_s = time.perf_counter() - started
        scoring = {
            "questions": len(items),
            "prompt_tokens": sum(len(backend.encode(builder.direct(i))) for i in items),
            "seconds": round(score_s, 2),
            "questions_per_s": round(len(items) / score_s, 1),
        }
        if self.device == "cuda":
            scoring["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        record: dict[str, object] = {"load_s": round(load_s, 1), "scoring": scoring}
        del scored

        cot_items = items[: args.cot_items]
        prompts = [backend.encode(builder.cot(item)) for item in cot_items]
        model = backend.model
        counter = DecodeCounter(model.get_base_model() if hasattr(model, "get_base_model") else model)
        synchronize(self.device)
        started = time.perf_counter()
        try:
            texts = backend.generate(prompts, max_new_tokens=args.cot_tokens, stop=spec.cot.stop)
        finally:
            counter.close()
        synchronize(self.device)
        cot_s = time.perf_counter() - started
        record["cot"] = {
            "prompts": len(prompts),
            "max_new_tokens": args.cot_tokens,
            "generated_token_slots": counter.tokens,
            "seconds": round(cot_s, 2),
            "tokens_per_s": round(counter.tokens / cot_s, 1),
            "nonempty": sum(bool(t) for t in texts),
        }
        del backend
        free_memory()
        return record


# Where each phase's record goes: (model, key).
PHASE_RECORDS = {
    "qwen": (flagship.QWEN, "finetune"),
    "eval": (flagship.QWEN, "evaluation"),
    "fsdp": (flagship.QWEN, "finetune_fsdp"),
    "gpt-oss": (flagship.GPT_OSS, "finetune"),
}


def run_phase(bench: Bench, phase: str) -> dict:
    args = bench.args
    if phase == "qwen":
        return bench.finetune(flagship.QWEN, args.steps, finetune_engine("local"), "qwen-local")
    if phase == "eval":
        adapter = bench.adapters.get("qwen-local")
        if adapter is None:
            raise RuntimeError("the eval phase scores the adapter of the qwen phase: run both")
        return bench.evaluate(flagship.QWEN, adapter)
    if phase == "fsdp":
        record = bench.finetune(flagship.QWEN, args.steps, finetune_engine("torchrun", nproc_per_node=1), "qwen-fsdp")
        single = bench.losses.get("qwen-local")
        if single:
            record["max_loss_diff_vs_local"] = round(
                max(abs(a - b) for a, b in zip(bench.losses["qwen-fsdp"], single)), 5
            )
        return record
    bench.drop_checkpoint(flagship.QWEN)  # gpt-oss-20b's checkpoint needs the disk
    return bench.finetune(flagship.GPT_OSS, args.oss_steps, finetune_engine("local"), "gpt-oss-local")


def compare_with_floor(model: dict, record: dict) -> None:
    """How far the plan's floor is from the measured peak, where a GPU measured one."""
    peak = record.get("peak_allocated_gib")
    if peak:
        floor_gib = model["plan_floor"]["per_device_gb"] * 1e9 / GIB
        record["peak_over_plan_floor"] = round(peak / floor_gib, 2)


def base_results(args, spec: Spec) -> dict:
    mode = "tiny" if args.tiny else "plan-only" if args.plan_only else "full"
    finetune = bench_finetune(spec, args.steps, args.max_seq_len)
    models = {}
    for name in (flagship.QWEN, flagship.GPT_OSS):
        full = flagship.architecture_config(args.data, name, tiny=False)
        models[name] = {
            "source_in_spec": spec.model(name).source,
            "architecture": model_summary(full),
            "params_b": parameter_count_b(full),
            "resources_in_spec": spec.model(name).resources.to_dict(),
            "plan_floor": floor_record(spec, name),
            "weights_expected_gb": gb(flagship.expected_weight_bytes(full, finetune)),
        }
        if args.tiny:
            tiny = flagship.architecture_config(args.data, name, tiny=True)
            models[name]["tiny_architecture"] = model_summary(tiny)
            models[name]["tiny_weights_expected_gb"] = gb(flagship.expected_weight_bytes(tiny, finetune))
        if args.plan_only:  # where a GPU run puts its measurements
            pending = {"outcome": "not run", "peak_allocated_gib": None, "peak_reserved_gib": None}
            models[name]["finetune"] = dict(pending)
            if name == flagship.QWEN:
                models[name]["finetune_fsdp"] = dict(pending)
    training = finetune.training
    return {
        "measured_on_gpu": False,
        "mode": mode,
        "note": TINY_NOTE if args.tiny else PLAN_NOTE if args.plan_only else "full size, random weights, on a GPU",
        "machine": machine(),
        "spec": str(SPEC.relative_to(REPO)),
        "settings": {
            **{
                k: getattr(training, k)
                for k in ("batch_size", "grad_accum_steps", "max_seq_len", "gradient_checkpointing")
            },
            "quantization": finetune.quantization.to_dict(),
            "lora_r": finetune.lora.r,
            "steps": {"qwen": args.steps, "gpt-oss": args.oss_steps},
            "eval_items": args.eval_items,
            "cot_items": args.cot_items,
            "cot_max_new_tokens": args.cot_tokens,
        },
        "weights_expected_note": (
            "bytes of the weights once relxfer's QLoRA has loaded and prepared them, counted from the "
            "config on the meta device: nn.Linear layers but the head in NF4, every other weight "
            "(embeddings, norms, fused MoE experts) in the bfloat16 it was loaded in, LoRA in float32"
        ),
        "phases": {},
        "models": models,
    }


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


# -- packing for a machine without network --------------------------------------------------------


def pack(target: Path, data_dir: Path, wheels: bool) -> int:
    written = flagship.pack_data(data_dir, target / "data")
    log(f"packed {len(written)} data files into {target / 'data'}")
    if wheels:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp",
            *[arg for n in (28, 27, 24, 17) for arg in ("--platform", f"manylinux_2_{n}_x86_64")],
            "--platform", "manylinux2014_x86_64", "-d", str(target / "wheels"), *WHEELS,
        ]  # fmt: skip
        subprocess.run(command, check=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    log(f"{target}: {size / 2**20:.1f} MiB in all")
    return 0


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="shrunken configs on the CPU (a check, not a measurement)")
    parser.add_argument("--plan-only", action="store_true", help="write the predictions, run nothing")
    parser.add_argument("--pack", type=Path, metavar="DIR", help="write the data and wheels to carry, then stop")
    parser.add_argument("--no-wheels", action="store_true", help="with --pack: the data only")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="../shared/data or a packed data folder")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/gpu_flagship.json)")
    parser.add_argument(
        "--work", type=Path, default=None, help="checkpoints and adapters (default: a temporary folder)"
    )
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument(
        "--deadline-s", type=float, default=None, help="start no phase after this (default 300; tiny: none)"
    )
    parser.add_argument("--steps", type=int, default=None, help="Qwen3-4B optimizer steps (default 6; tiny 2)")
    parser.add_argument("--oss-steps", type=int, default=None, help="gpt-oss-20b optimizer steps (default 3; tiny 2)")
    parser.add_argument("--eval-items", type=int, default=None, help="scored questions (default 200; tiny 12)")
    parser.add_argument("--cot-items", type=int, default=None, help="CoT prompts (default 16; tiny 2)")
    parser.add_argument("--cot-tokens", type=int, default=None, help="new tokens per CoT prompt (default: the spec's)")
    parser.add_argument(
        "--max-seq-len", type=int, default=None, help="training sequence cut (default: the spec's; tiny 256)"
    )
    args = parser.parse_args(argv)
    tiny = {"steps": 2, "oss_steps": 2, "eval_items": 12, "cot_items": 2, "cot_tokens": 8, "max_seq_len": 256}
    defaults = tiny if args.tiny else {
        "steps": 6, "oss_steps": 3, "eval_items": 200, "cot_items": 16, "cot_tokens": None, "deadline_s": 300.0
    }  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; known: {', '.join(PHASES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pack:
        return pack(args.pack, args.data, wheels=not args.no_wheels)
    if not args.tiny and not args.plan_only and not torch.cuda.is_available():
        print(
            "gpu_flagship: no CUDA GPU visible; use --tiny (a CPU check) or --plan-only (predictions)", file=sys.stderr
        )
        return 2
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        log(TINY_NOTE)
    spec = load_spec(SPEC)
    args.cot_tokens = args.cot_tokens or spec.cot.max_new_tokens
    out = args.out or REPO / "bench" / "results" / ("gpu_flagship_tiny.json" if args.tiny else "gpu_flagship.json")
    results = base_results(args, spec)
    results["measured_on_gpu"] = not args.tiny and not args.plan_only
    write(results, out)
    if args.plan_only:
        log(f"predictions written to {out}")
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="relxfer-flagship-"))
    bench = Bench(args, spec, work)
    started = time.perf_counter()
    for phase in [p for p in PHASES if p in args.phases.split(",")]:
        elapsed = time.perf_counter() - started
        if args.deadline_s is not None and elapsed > args.deadline_s:
            results["phases"][phase] = {"outcome": "skipped", "reason": f"{elapsed:.0f} s > --deadline-s"}
            log(f"{phase}: skipped (deadline)")
            continue
        log(f"{phase}: starting at {elapsed:.0f} s")
        phase_started = time.perf_counter()
        name, key = PHASE_RECORDS[phase]
        model = results["models"][name]
        try:
            model[key] = run_phase(bench, phase)
            compare_with_floor(model, model[key])
        except Exception as exc:  # noqa: BLE001 - an out-of-memory is a result; so is any failure of a phase
            model[key] = failure(exc, bench.device)
            log(f"{phase}: {model[key]['error']}")
            del exc
            free_memory()
        seconds = round(time.perf_counter() - phase_started, 1)
        results["phases"][phase] = {"outcome": model[key].get("outcome", "ok"), "seconds": seconds}
        write(results, out)
        log(f"{phase}: {results['phases'][phase]['outcome']} in {seconds} s")
    results["total_s"] = round(time.perf_counter() - started, 1)
    write(results, out)
    if args.tiny:
        log(TINY_NOTE)
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
