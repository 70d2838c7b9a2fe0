"""Belebele scoring throughput: relxfer vs lm-evaluation-harness on the same model and the same
real Belebele files, measured in the same run, reported as questions/s, their ratio and the
per-item prediction agreement.

    pip install -e ".[bench]"
    python bench/eval_throughput.py [--languages eng_Latn] [--limit 300] [--batch-size 16] [--rounds 2]

Both sides (the `bench` extra pins lm_eval 0.4.x):
- one model from --model: the built-in tiny model (default; 1,024-token vocabulary), the real
  Gemma 3 270M (`builtin:gemma-3-270m`, 262,144-token vocabulary, `pip install ".[gemma]"`) or
  a local transformers directory; float32, on the CPU with --threads intra-op threads (1 by
  default), loaded once before any timing;
- the first --limit questions of each language from --belebele-dir (<code>.jsonl files);
- zero-shot, the harness's Belebele prompt: lm-eval renders its own installed task template
  (a local task config `include`s lm_eval/tasks/belebele/_default_template_yaml and points the
  data at the jsonl file); relxfer uses its `lm-eval-belebele` preset;
- the same BOS policy, both on their defaults: lm-eval 0.4.13's add_bos_token=None and
  relxfer's (the tokenizer's own default, which for the tiny tokenizer prepends BOS);
- the same memory bound: --batch-size rows per forward pass for both, sorted longest first
  (lm-eval: contexts, after its logits cache groups the four one-token choices of a question
  into one, exactly --batch-size a pass; relxfer: rows of its own engine, at most --batch-size a
  pass, fewer where padding would cost more than another pass, and one row holds the questions
  of one passage, the passage run once: its defaults, `--shared-prefix 0` turns sharing off).

Timed per side, end to end from the jsonl file to per-item predictions: lm-eval's
`simple_evaluate` (task build from the local file, Jinja prompts, tokenization, scoring,
metrics; bootstrap_iters=0) and relxfer's `load_belebele` + `evaluate_items`. Also reported:
the part of each inside the model interface, tokenization and scoring (lm-eval's
`HFLM.loglikelihood`; relxfer's `split_continuation` + `label_logprobs`). The two sides alternate for --rounds
rounds and the best time of each counts, which damps noise from other processes.

Agreement: per question, relxfer's argmax label == lm-eval's argmax over its per-choice
log-likelihoods (log_samples). A disagreement is an "exact tie" when one side's top two scores
are equal. The largest absolute difference of the per-label log-probs is printed too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # both sides' progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relxfer.data.belebele import load_belebele  # noqa: E402
from relxfer.data.prompts import PromptBuilder  # noqa: E402
from relxfer.evaluate.local_backend import DEFAULT_MIN_SHARED_PREFIX, LocalBackend  # noqa: E402
from relxfer.evaluate.loop import evaluate_items  # noqa: E402
from relxfer.models.loading import resolve_source  # noqa: E402
from relxfer.models.packaged_gemma import BUILTIN_ID as GEMMA_ID  # noqa: E402
from relxfer.models.tiny import BUILTIN_ID as TINY_ID  # noqa: E402
from relxfer.spec.types import ModelSpec  # noqa: E402
from tests.support.lm_eval_tasks import write_belebele_tasks  # noqa: E402

DEFAULT_BELEBELE = Path(__file__).resolve().parents[2] / "shared" / "data" / "belebele"


class Timed:
    """Wraps a bound method and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def run_lm_eval(lm, task_dir: Path, languages: list[str], limit: int):
    """(seconds end to end, seconds in HFLM.loglikelihood, {(code, doc_id): [loglik per choice]})."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    timed = Timed(type(lm).loglikelihood.__get__(lm))
    lm.loglikelihood = timed  # instrumentation only: the harness's own method runs
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
    del lm.loglikelihood
    scores = {}
    for code in languages:
        for sample in out["samples"][f"belebele_local_{code}"]:
            scores[(code, sample["doc_id"])] = [float(r[0]) for r in sample["filtered_resps"]]
    return seconds, timed.seconds, scores


def run_relxfer(backend: LocalBackend, belebele_dir: Path, languages: list[str], limit: int, batch_size: int | None):
    """(seconds end to end, seconds in split_continuation + label_logprobs (tokenization and
    scoring, like HFLM.loglikelihood), {(code, doc_id): [logprob per label]})."""
    split, score = Timed(backend.split_continuation), Timed(backend.label_logprobs)
    backend.split_continuation, backend.label_logprobs = split, score  # instrumentation only
    builder = PromptBuilder.from_spec({"preset": "lm-eval-belebele"})
    start = time.perf_counter()
    data = load_belebele(languages, path=belebele_dir)
    records = []
    for code in languages:
        items = data.items_by_language[code][:limit]
        records += [
            (code, i, r)
            for i, r in enumerate(
                evaluate_items(backend, items, builder, batch_size=batch_size, progress=False).records
            )
        ]
    seconds = time.perf_counter() - start
    del backend.split_continuation, backend.label_logprobs
    scores = {(code, i): [r[f"logprob_{label}"] for label in builder.labels] for code, i, r in records}
    return seconds, split.seconds + score.seconds, scores


def is_tie(row) -> bool:
    top = sorted(row, reverse=True)
    return len(top) > 1 and top[0] == top[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--belebele-dir", type=Path, default=DEFAULT_BELEBELE)
    parser.add_argument("--languages", nargs="+", default=["eng_Latn"])
    parser.add_argument("--limit", type=int, default=300, help="questions per language (the first N rows)")
    parser.add_argument("--batch-size", type=int, default=16, help="the same fixed batch size for both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path(".relxfer-cache"))
    parser.add_argument(
        "--model",
        default=TINY_ID,
        help=f"a relxfer model source: {TINY_ID} (default), {GEMMA_ID} (pip install '.[gemma]') or a local transformers directory",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--shared-prefix",
        type=int,
        default=DEFAULT_MIN_SHARED_PREFIX,
        metavar="N",
        help=f"relxfer runs prompt prefixes of >= N shared tokens once (LocalBackend.min_shared_prefix, default {DEFAULT_MIN_SHARED_PREFIX}; 0: never)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model_dir = Path(resolve_source(ModelSpec.from_partial({"name": "bench", "source": args.model}), args.cache_dir))
    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=args.batch_size)
    # Both on their defaults: lm-eval 0.4.13 (PR #3347) encodes with the tokenizer's default
    # special tokens when add_bos_token is None, and so does relxfer's backend.
    backend = LocalBackend.load(
        ModelSpec.from_partial({"name": "bench", "source": str(model_dir), "dtype": "float32"}),
        None,
        args.cache_dir,
        min_shared_prefix=args.shared_prefix or None,
    )
    add_bos = backend.add_bos_token
    assert lm.tok_encode("Passage: x") == backend.encode("Passage: x"), "the two sides encode differently"
    n_questions = args.limit * len(args.languages)

    best = {"lm-eval": (float("inf"), float("inf")), "relxfer": (float("inf"), float("inf"))}
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = write_belebele_tasks(Path(tmp), args.languages, args.belebele_dir)
        for round_ in range(args.rounds):
            for name in ("lm-eval", "relxfer"):
                if name == "lm-eval":
                    total, inner, scores[name] = run_lm_eval(lm, task_dir, args.languages, args.limit)
                else:
                    total, inner, scores[name] = run_relxfer(
                        backend, args.belebele_dir, args.languages, args.limit, args.batch_size
                    )
                best[name] = min(best[name], (total, inner))
                print(
                    f"round {round_ + 1} {name:8s} {total:7.2f} s end to end ({n_questions / total:6.1f} q/s), "
                    f"{inner:7.2f} s in the model interface ({n_questions / inner:6.1f} q/s)",
                    flush=True,
                )

    keys = sorted(scores["relxfer"])
    assert sorted(scores["lm-eval"]) == keys, "the two sides scored different questions"
    theirs = np.array([scores["lm-eval"][k] for k in keys])
    ours = np.array([scores["relxfer"][k] for k in keys])
    agree = theirs.argmax(1) == ours.argmax(1)
    ties = sum(1 for i in np.flatnonzero(~agree) if is_tie(theirs[i]) or is_tie(ours[i]))
    result = {
        "model": f"{args.model} ({model_dir.name}), float32",
        "device": f"CPU, {args.threads} thread(s)",
        "languages": args.languages,
        "questions": n_questions,
        "batch_size": args.batch_size,
        "add_bos_token": add_bos,
        "relxfer_min_shared_prefix": args.shared_prefix,
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "",
        "torch": torch.__version__,
        "lm_eval_q_per_s": n_questions / best["lm-eval"][0],
        "relxfer_q_per_s": n_questions / best["relxfer"][0],
        "ratio": best["lm-eval"][0] / best["relxfer"][0],
        "lm_eval_model_interface_q_per_s": n_questions / best["lm-eval"][1],
        "relxfer_model_interface_q_per_s": n_questions / best["relxfer"][1],
        "model_interface_ratio": best["lm-eval"][1] / best["relxfer"][1],
        "agreement": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "disagreements_exact_ties": ties,
        "max_abs_logprob_diff": float(np.abs(theirs - ours).max()),
    }
    print(
        f"\n{n_questions} questions ({', '.join(args.languages)}), batch {args.batch_size}, {args.threads} thread(s), "
        f"add_bos_token={add_bos}:\n"
        f"  end to end:      lm-eval {result['lm_eval_q_per_s']:.1f} q/s, relxfer {result['relxfer_q_per_s']:.1f} q/s, "
        f"ratio {result['ratio']:.2f}x\n"
        f"  model interface: lm-eval {result['lm_eval_model_interface_q_per_s']:.1f} q/s, "
        f"relxfer {result['relxfer_model_interface_q_per_s']:.1f} q/s, ratio {result['model_interface_ratio']:.2f}x\n"
        f"  identical predictions {agree.sum()}/{len(keys)} ({100 * result['agreement']:.2f}%), "
        f"{result['disagreements']} differ ({ties} of them exact ties); "
        f"max |logprob difference| {result['max_abs_logprob_diff']:.2e}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
