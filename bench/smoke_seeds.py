"""The smoke study and its null twin over data and training seeds: run, compare, tabulate.

    python bench/smoke_seeds.py [--specs specs/smoke.json specs/smoke-null.json] [--seeds 0 1 2 3 4]
                                [--tracking-uri URI] [--cache-dir DIR] [--out bench/results/smoke_seeds.json]
    python bench/smoke_seeds.py --specs specs/smoke-null.json --seeds 5 6 7 8 9 10 11 12 13 14 \
        --conditions baseline finetuned --out bench/results/smoke_null_more_seeds.json
    python bench/smoke_seeds.py --table bench/results/smoke_seeds.json   # reprint a table

For every spec and seed it writes the seed variant (tests/smoke_study.py: `data.source.seed`,
`data.split.seed` and `seeds` all set to the seed), runs it with `relxfer run` as a subprocess
(wall time measured around that command, with the 1-minute load average before and after, since
the development machine is shared), reads the result back with `relxfer compare --format json
--no-log`, and prints one row per run: every related and control language's fine-tuned gain, the
Holm-adjusted p-values, the family gap with its interval and permutation p, and whether the
spec's criteria hold (smoke: the positive control's; smoke-null: the interval covers 0).
Without --tracking-uri the runs go to a sqlite store in a temporary directory.
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
sys.path.insert(0, str(REPO))

from tests.smoke_study import (  # noqa: E402
    findings,
    null_failures,
    smoke_failures,
    write_seed_variant,
)


def relxfer(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    # cwd: a sqlite store keeps its artifacts in ./mlruns of the working directory
    return subprocess.run(
        [sys.executable, "-m", "relxfer.cli", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def run_one(spec: Path, seed: int, uri: str, cache: Path, work: Path, env: dict, conditions: list[str] | None) -> dict:
    variant = write_seed_variant(spec, seed, work, conditions)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = relxfer(
        "run", str(variant), "--tracking-uri", uri, "--cache-dir", str(cache), "--no-progress", env=env, cwd=work
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"relxfer run {variant} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    name = json.loads(variant.read_text())["name"]
    report = relxfer(
        "compare", "--experiment", name, "--tracking-uri", uri, "--format", "json", "--no-log", env=env, cwd=work
    )
    if report.returncode != 0:
        raise SystemExit(f"relxfer compare {name} failed:\n{report.stderr[-3000:]}")
    found = findings(json.loads(report.stdout))
    null = "null" in spec.stem
    failures = null_failures(found) if null else smoke_failures(found)
    return {
        "spec": spec.name,
        "seed": seed,
        "wall_s": round(wall, 1),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "criteria": "null" if null else "smoke",
        "failures": failures,
        **asdict(found),
    }


HEADER = (
    "| spec | seed | related gains (points) | mean | control gains (points) | mean | family gap, points [95% CI] "
    "| permutation p | largest related Holm p | verdict | wall s | criteria |\n"
    "|---|---:|---|---:|---|---:|---|---:|---:|---|---:|---|"
)


def row(r: dict) -> str:
    def points(gains: dict) -> str:
        return " ".join(f"{100 * g:+.0f}" for g in gains.values())

    def mean(gains: dict) -> str:
        return f"{100 * sum(gains.values()) / len(gains):+.1f}"

    holm = max((r["holm_p"][lang] for lang in r["related_gains"]), default=float("nan"))
    low, high = r["gap_ci"]
    return (
        f"| {r['spec']} | {r['seed']} | {points(r['related_gains'])} | {mean(r['related_gains'])} | "
        f"{points(r['control_gains'])} | {mean(r['control_gains'])} | "
        f"{100 * r['gap_estimate']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {r['gap_perm_p']:.3f} | "
        f"{holm:.2g} | {r['gap_conclusion']} | {r['wall_s']:.0f} (load {r['load_before']:.1f}) | "
        f"{'met' if not r['failures'] else '; '.join(r['failures'])} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--specs", nargs="+", type=Path, default=[REPO / "specs/smoke.json", REPO / "specs/smoke-null.json"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--conditions", nargs="+", help="run only these conditions (default: the spec's)")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/smoke_seeds.json")
    parser.add_argument("--table", type=Path, help="only print the table of a results file written before")
    args = parser.parse_args()
    if args.table:
        print("\n".join([HEADER, *(row(r) for r in json.loads(args.table.read_text()))]))
        return
    work = Path(tempfile.mkdtemp(prefix="relxfer-smoke-seeds-"))
    uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    cache = args.cache_dir or work / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    results = []
    print(HEADER)
    for spec in args.specs:
        for seed in args.seeds:
            results.append(run_one(spec.resolve(), seed, uri, cache, work, env, args.conditions))
            print(row(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}; the runs stay in {work} (delete it when done)")


if __name__ == "__main__":
    main()
