"""The SIB-200 Gemma study (specs/sib200-gemma.json) over fine-tuning seeds: run, compare, tabulate.

    SIB200_DIR=../shared/data/sib200 python bench/sib200_seeds.py [--seeds 0 1 2]
        [--max-steps N --batch-size N --learning-rate X --train-items N --eval-items N]
        [--tracking-uri URI] [--cache-dir DIR] [--out bench/results/sib200_seeds.json]
    python bench/sib200_seeds.py --existing NAME [--parent RUN_ID] --tracking-uri URI --seeds 0   # a study run before
    python bench/sib200_seeds.py --table bench/results/sib200_seeds.json       # reprint a table

For every seed it writes a variant of the spec (`seeds` = [seed]; SIB-200's splits are fixed, so
the seed changes the LoRA initialisation and the order of the training items), optionally
smaller (the size options: on a busy 2-core machine the full study takes hours), runs it with
`relxfer run` as a subprocess (wall time measured around that command, with the 1-minute load
average before and after, since the development machine is shared), reads the result back with
`relxfer compare --format json --no-log`, and prints one row per seed: baseline and fine-tuned
accuracy of the Semitic and control groups, every language's fine-tuned gain, and the family gap
with its interval and exact permutation p (4 + 6 languages: 210 assignments).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "sib200-gemma.json"
sys.path.insert(0, str(REPO))

from tests.smoke_study import findings  # noqa: E402


def relxfer(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    # cwd: a sqlite store keeps its artifacts in ./mlruns of the working directory
    return subprocess.run(
        [sys.executable, "-m", "relxfer.cli", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def write_variant(seed: int, sizes: argparse.Namespace, work: Path) -> Path:
    raw = json.loads(SPEC.read_text())
    raw["$schema"] = str(REPO / "schemas" / "spec.schema.json")
    raw["name"] = f"sib200-gemma-seed{seed}"
    raw["seeds"] = [seed]
    training = raw["finetune"]["training"]
    for option, key in (("max_steps", "max_steps"), ("batch_size", "batch_size"), ("learning_rate", "learning_rate")):
        if getattr(sizes, option) is not None:
            training[key] = getattr(sizes, option)
    training["checkpoint_every"] = min(training["checkpoint_every"], training["max_steps"])
    if sizes.train_items is not None:
        raw["train"]["max_items_per_language"] = sizes.train_items
    if sizes.eval_items is not None:
        raw["evaluation"] = {"max_items": sizes.eval_items}
    path = work / f"{raw['name']}.json"
    path.write_text(json.dumps(raw, indent=2, ensure_ascii=False))
    return path


def summarize(name: str, seed: int, uri: str, env: dict, work: Path, parent: str | None = None) -> dict:
    selector = ["--parent", parent] if parent else ["--experiment", name]
    done = relxfer("compare", *selector, "--tracking-uri", uri, "--format", "json", "--no-log", env=env, cwd=work)
    if done.returncode != 0:
        raise SystemExit(f"relxfer compare {name} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    accuracy = {(r["condition"], r["language"]): r for r in report["accuracy"]}
    found = findings(report, condition="finetuned")
    groups = {"related": list(found.related_gains), "control": list(found.control_gains)}

    def mean_accuracy(condition: str, role: str) -> float:
        values = [accuracy[(condition, lang)]["accuracy"] for lang in groups[role]]
        return sum(values) / len(values)

    return {
        "experiment": name,
        "seed": seed,
        "n_items": min(int(r["n_items"]) for r in report["accuracy"]),
        "accuracy": {f"{c}/{lang}": accuracy[(c, lang)]["accuracy"] for c, lang in accuracy},
        "mean_accuracy": {f"{c}/{role}": mean_accuracy(c, role) for c in ("baseline", "finetuned") for role in groups},
        **asdict(found),
    }


def run_one(seed: int, sizes: argparse.Namespace, uri: str, cache: Path, work: Path, env: dict) -> dict:
    variant = write_variant(seed, sizes, work)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    args = ["run", str(variant), "--tracking-uri", uri, "--cache-dir", str(cache), "--no-progress"]
    done = relxfer(*args, env=env, cwd=work)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"relxfer run {variant} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    name = json.loads(variant.read_text())["name"]
    result = summarize(name, seed, uri, env, work)
    return {**result, "wall_s": round(wall, 1), "load_before": load_before, "load_after": os.getloadavg()[0]}


HEADER = (
    "| seed | items/lang | baseline Semitic / control | fine-tuned Semitic / control | Semitic gains (points) "
    "| control gains (points) | family gap, points [95% CI] | permutation p | verdict | wall s (load) |\n"
    "|---:|---:|---|---|---|---|---|---:|---|---:|"
)


def row(r: dict) -> str:
    def points(gains: dict) -> str:
        return " ".join(f"{lang[:3]} {100 * g:+.1f}" for lang, g in gains.items())

    acc = r["mean_accuracy"]
    low, high = r["gap_ci"]
    wall = f"{r['wall_s']:.0f} ({r['load_before']:.1f})" if "wall_s" in r else "-"
    return (
        f"| {r['seed']} | {r['n_items']} | {acc['baseline/related']:.3f} / {acc['baseline/control']:.3f} | "
        f"{acc['finetuned/related']:.3f} / {acc['finetuned/control']:.3f} | {points(r['related_gains'])} | "
        f"{points(r['control_gains'])} | {100 * r['gap_estimate']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | "
        f"{r['gap_perm_p']:.3f} | {r['gap_conclusion']} | {wall} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--train-items", type=int, help="training items (of the 701 Arabic ones)")
    parser.add_argument("--eval-items", type=int, help="test items per language (of 204)")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--existing", help="tabulate this experiment, already run, instead of running")
    parser.add_argument("--parent", help="with --existing: the cells of this parent run only")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/sib200_seeds.json")
    parser.add_argument("--table", type=Path, help="only print the table of a results file written before")
    args = parser.parse_args()
    if args.table:
        print("\n".join([HEADER, *(row(r) for r in json.loads(args.table.read_text()))]))
        return
    work = Path(tempfile.mkdtemp(prefix="relxfer-sib200-seeds-"))
    uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    cache = args.cache_dir or work / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if args.existing:
        results = [summarize(args.existing, args.seeds[0], uri, env, work, args.parent)]
    else:
        if not os.environ.get("SIB200_DIR"):
            raise SystemExit("set SIB200_DIR to the SIB-200 directory (<code>/{train,dev,test}.tsv)")
        results = []
    print(HEADER)
    for seed in [] if args.existing else args.seeds:
        results.append(run_one(seed, args, uri, cache, work, env))
        print(row(results[-1]), flush=True)
    if args.existing:
        print(row(results[0]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}; the runs stay in {work} (delete it when done)")


if __name__ == "__main__":
    main()
