"""Belebele scoring throughput against one vLLM server: relxfer's server engine vs
lm-evaluation-harness 0.4.13's `local-completions` model, same server, same model, same
questions, in one run; questions/s, their ratio and per-item prediction agreement.

    python tests/servers/vllm_env.py          # builds vLLM's environment once (or set RELXFER_VLLM_PYTHON)
    python bench/server_throughput.py [--languages eng_Latn fra_Latn] [--limit 200] [--concurrency 16] [--rounds 2]
    python bench/server_throughput.py --model builtin:qwen3-twin --labels digits --limit 200 --rounds 1

The server: `python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, float32, eager, no
LoRA, prefix caching on (vLLM's default), the model from --model (the built-in tiny model by
default; `builtin:qwen3-twin`: a tiny random-weight Qwen3 with the real Qwen3 tokenizer,
relxfer/models/twins.py), started once. Its prefix cache is emptied before every timed run (`/reset_prefix_cache`,
VLLM_SERVER_DEV_MODE=1), so no run profits from an earlier one.

Both sides send token ids built with the model's tokenizer, with BOS (lm-eval's API models
default to none: add_bos_token=True aligns them), up to --concurrency requests in flight, and
score the harness's own Belebele prompt (relxfer's `lm-eval-belebele` preset), with the answer
choices A-D (--labels letters) or the options and choices numbered 1-4 (--labels digits: " 1"..
" 4" are two tokens each on the Qwen3 tokenizer, a shared space and the digit):
- lm-eval: one request per question and answer (4 a question), `echo: true, max_tokens: 1,
  logprobs: 1`, the log-likelihood read from the echoed prompt tokens; `batch_size=1`,
  `num_concurrent=--concurrency`.
- relxfer: `ServerBackend` as the `vllm` engine builds it: the start-up probe on the first
  prompts (timed too), then one request per question, `max_tokens: 1` with the four label ids
  (`logprob_token_ids`); questions of one passage share the passage's cached prefix. Labels that
  share leading tokens: the shared tokens go with the prompt and `prompt_logprobs: 0` gives
  their log-probs in the same answer (vLLM then reads no cached prefix for that request).
Timed end to end from the jsonl file to per-item predictions (lm-eval's `simple_evaluate` with
a local task config that includes the installed harness's Belebele template; relxfer's
`load_belebele` + `evaluate_items`). Sides alternate for --rounds rounds; the best time counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relxfer.data.belebele import load_belebele  # noqa: E402
from relxfer.data.prompts import PRESETS, PromptBuilder  # noqa: E402
from relxfer.evaluate.loop import evaluate_items  # noqa: E402
from relxfer.evaluate.server_backend import ScoringState, ServerBackend  # noqa: E402
from relxfer.models.loading import load_tokenizer, resolve_source  # noqa: E402
from relxfer.models.tiny import BUILTIN_ID as TINY_ID  # noqa: E402
from relxfer.services.openai_client import OpenAIClient  # noqa: E402
from relxfer.services.vllm_launch import VllmServer, free_port  # noqa: E402
from relxfer.spec.types import ModelSpec  # noqa: E402
from tests.support.lm_eval_tasks import DIGIT_LABELS, write_belebele_tasks  # noqa: E402

DEFAULT_BELEBELE = REPO.parent / "shared" / "data" / "belebele"
SERVED = "bench"


def prompt_builder(labels: str) -> PromptBuilder:
    """The harness's Belebele prompt, with its letters or with the digits of DIGIT_LABELS."""
    if labels == "letters":
        return PromptBuilder.from_spec({"preset": "lm-eval-belebele"})
    digits = tuple(DIGIT_LABELS["doc_to_choice"])
    preset = dataclasses.replace(PRESETS["lm-eval-belebele"], id="lm-eval-belebele-digits", labels=digits)
    return PromptBuilder(preset, digits)


def vllm_python() -> str:
    if os.environ.get("RELXFER_VLLM_PYTHON"):
        return os.environ["RELXFER_VLLM_PYTHON"]
    from tests.servers.vllm_env import vllm_python as build

    return str(build(log=lambda line: print(line, file=sys.stderr, flush=True)))


def start_server(model_dir: Path, log: Path) -> VllmServer:
    port = free_port()
    argv = [
        vllm_python(),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    return VllmServer(argv, port, log, startup_timeout_s=900, env=env).start(lambda line: print(line, flush=True))


def reset_prefix_cache(server: VllmServer) -> None:
    request = urllib.request.Request(server.root_url + "/reset_prefix_cache", method="POST")
    with urllib.request.urlopen(request, timeout=60):
        pass


def run_lm_eval(server: VllmServer, model_dir: Path, task_dir: Path, languages, limit: int, concurrency: int):
    import lm_eval
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    lm = LocalCompletionsAPI(
        base_url=server.root_url + "/v1/completions",
        model=SERVED,
        tokenizer=str(model_dir),
        tokenizer_backend="huggingface",
        add_bos_token=True,
        num_concurrent=concurrency,
        batch_size=1,
        max_length=2048,
        max_retries=3,
    )
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[f"belebele_local_{code}" for code in languages],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
    )
    seconds = time.perf_counter() - start
    scores = {}
    for code in languages:
        for sample in out["samples"][f"belebele_local_{code}"]:
            scores[(code, sample["doc_id"])] = [float(r[0]) for r in sample["filtered_resps"]]
    return seconds, scores


def run_relxfer(
    server: VllmServer, tokenizer, belebele_dir: Path, languages, limit: int, concurrency: int, labels: str
):
    client = OpenAIClient(server.root_url + "/v1", max_in_flight=concurrency)
    backend = ServerBackend(client, tokenizer, SERVED, "bench", ScoringState())  # a fresh engine: the probe runs again
    builder = prompt_builder(labels)
    start = time.perf_counter()
    data = load_belebele(languages, path=belebele_dir)
    scores = {}
    for code in languages:
        records = evaluate_items(backend, data.items_by_language[code][:limit], builder, progress=False).records
        scores |= {(code, i): [r[f"logprob_{label}"] for label in builder.labels] for i, r in enumerate(records)}
    return time.perf_counter() - start, scores, backend.scoring.plan.tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--belebele-dir", type=Path, default=DEFAULT_BELEBELE)
    parser.add_argument("--languages", nargs="+", default=["eng_Latn"])
    parser.add_argument("--limit", type=int, default=200, help="questions per language (the first N rows)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, both sides")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=TINY_ID, help="a relxfer model source (built-in id or local directory)")
    parser.add_argument("--labels", choices=("letters", "digits"), default="letters", help="answer choices A-D or 1-4")
    parser.add_argument("--cache-dir", type=Path, default=Path(".relxfer-cache"))
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    model = ModelSpec.from_partial({"name": "bench", "source": args.model})
    model_dir = Path(resolve_source(model, args.cache_dir))
    tokenizer = load_tokenizer(model, args.cache_dir)
    n_questions = args.limit * len(args.languages)
    best = {"lm-eval": float("inf"), "relxfer": float("inf")}
    scores, mode = {}, ""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(model_dir, Path(tmp) / "vllm.log")
        try:
            task_dir = write_belebele_tasks(
                Path(tmp) / "tasks", args.languages, args.belebele_dir, digits=args.labels == "digits"
            )
            for round_ in range(args.rounds):
                for name in ("lm-eval", "relxfer"):
                    reset_prefix_cache(server)
                    if name == "lm-eval":
                        seconds, scores[name] = run_lm_eval(
                            server, model_dir, task_dir, args.languages, args.limit, args.concurrency
                        )
                    else:
                        seconds, scores[name], mode = run_relxfer(
                            server,
                            tokenizer,
                            args.belebele_dir,
                            args.languages,
                            args.limit,
                            args.concurrency,
                            args.labels,
                        )
                    best[name] = min(best[name], seconds)
                    print(
                        f"round {round_ + 1} {name:8s} {seconds:7.2f} s ({n_questions / seconds:6.2f} q/s)", flush=True
                    )
        finally:
            server.stop()
            started = server.started_in_s

    keys = sorted(scores["relxfer"])
    assert sorted(scores["lm-eval"]) == keys, "the two sides scored different questions"
    theirs = np.array([scores["lm-eval"][k] for k in keys])
    ours = np.array([scores["relxfer"][k] for k in keys])
    agree = theirs.argmax(1) == ours.argmax(1)
    import lm_eval

    result = {
        "model": f"{args.model} ({model_dir.name}), float32",
        "server": "vllm-cpu 0.32.0, --enforce-eager, prefix caching on, reset before each run",
        "languages": args.languages,
        "labels": " ".join(repr(c) for c in prompt_builder(args.labels).continuations())
        + f" = {[tokenizer.encode(c, add_special_tokens=False) for c in prompt_builder(args.labels).continuations()]}",
        "questions": n_questions,
        "concurrency": args.concurrency,
        "lm_eval_version": getattr(lm_eval, "__version__", ""),
        "relxfer_scoring_mode": mode,
        "server_start_s": started,
        "lm_eval_q_per_s": n_questions / best["lm-eval"],
        "relxfer_q_per_s": n_questions / best["relxfer"],
        "ratio": best["lm-eval"] / best["relxfer"],
        "identical_predictions": int(agree.sum()),
        "max_abs_logprob_diff": float(np.abs(theirs - ours).max()),
    }
    print(
        f"\n{n_questions} questions ({', '.join(args.languages)}), {args.concurrency} requests in flight, server ready in {started:.0f} s:\n"
        f"  lm-eval local-completions {result['lm_eval_q_per_s']:.2f} q/s, relxfer {result['relxfer_q_per_s']:.2f} q/s "
        f"({mode}), ratio {result['ratio']:.2f}x\n"
        f"  identical predictions {agree.sum()}/{len(keys)}; max |log-prob difference| {result['max_abs_logprob_diff']:.2e}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
