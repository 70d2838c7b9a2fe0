"""The smoke study on the local executor vs a Ray cluster of 1 and of 2 workers, in one run.

    python bench/executor_scale.py [--spec specs/smoke.json] [--out bench/results/executor_scale.json]

What it does: starts a real `mlflow server` and, per configuration, a real one-node Ray cluster
on 127.0.0.1 (tests/ray_cluster.py, `--num-cpus` = workers; each cell asks for 1 CPU, so that
many cells run at once), then times `relxfer run SPEC` as a subprocess, end to end, into a
fresh experiment each:

    local            --executor local (OMP_NUM_THREADS=1: one worker's share of the machine)
    ray-1            --executor ray, 1 worker, evaluation cells batched per model and adapter
    ray-2            --executor ray, 2 workers, batched
    ray-2-per-cell   --executor ray, 2 workers, --cells-per-task 1

The built-in model is built once beforehand into a cache every configuration shares, so no
configuration pays for it. From each study's MLflow runs it splits the wall time: start-up
(process start to the parent run: imports, checks, connecting to Ray), first cell (parent run
to the first cell's run: worker processes starting, importing torch, rebuilding the study from
the parent run, loading the model), cells (sum of the cells' run times, over all workers), and
the rest. Ratios are local wall time / configuration wall time, measured in the same run.
Cluster start-up (`ray start`) is reported apart: a cluster outlives many studies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow import MlflowClient  # noqa: E402

from tests.conftest import MlflowServer  # noqa: E402
from tests.ray_cluster import RayCluster  # noqa: E402

CONFIGS = [("local", 0, []), ("ray-1", 1, []), ("ray-2", 2, []), ("ray-2-per-cell", 2, ["--cells-per-task", "1"])]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_model(cache: Path) -> None:
    from relxfer.models.loading import load_tokenizer
    from relxfer.spec.load import load_spec

    spec = load_spec(REPO / "specs" / "smoke.json")
    load_tokenizer(spec.models[0], cache)  # builds builtin:tiny-llama into the cache once


def run_study(name: str, workers: int, extra: list[str], spec: Path, uri: str, cache: Path, root: Path) -> dict:
    cluster = None
    result = {"config": name, "workers": workers}
    try:
        if workers:
            started = time.perf_counter()
            cluster = RayCluster(num_cpus=workers, root=root / name)
            cluster.node_cache = cache  # the model built beforehand
            cluster.start()
            result["cluster_start_s"] = time.perf_counter() - started
            env = cluster.env(MLFLOW_EXPERIMENT_NAME=name)
            args = ["--executor", "ray", "--ray-address", cluster.address, *extra]
        else:
            env = {**os.environ, "MLFLOW_EXPERIMENT_NAME": name, "OMP_NUM_THREADS": "1"}
            env.pop("MLFLOW_RUN_ID", None)
            args = []
        env["PYTHONPATH"] = str(REPO)
        command = [
            sys.executable,
            "-m",
            "relxfer.cli",
            "run",
            str(spec),
            "--tracking-uri",
            uri,
            "--cache-dir",
            str(cache),
            "--no-progress",
            *args,
        ]
        started_at = time.time()
        process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        ended_at = time.time()
        if process.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{process.stdout[-2000:]}{process.stderr[-4000:]}")
        result["wall_s"] = ended_at - started_at
        result |= breakdown(MlflowClient(uri), name, started_at, ended_at)
        result["summary"] = process.stdout.strip().splitlines()[-2:]
        return result
    finally:
        if cluster is not None:
            cluster.stop()


def breakdown(client: MlflowClient, experiment: str, started_at: float, ended_at: float) -> dict:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("relxfer.kind") == "study")
    cells = [r for r in runs if r.data.tags.get("relxfer.cell_key") and r.info.status == "FINISHED"]
    first = min(r.info.start_time for r in cells) / 1000
    last = max(r.info.end_time for r in cells) / 1000
    return {
        "cells": len(cells),
        "startup_s": parent.info.start_time / 1000 - started_at,
        "first_cell_s": first - parent.info.start_time / 1000,
        "cells_makespan_s": last - first,
        "cell_time_sum_s": sum((r.info.end_time - r.info.start_time) / 1000 for r in cells),
        "finish_s": ended_at - last,
        "finetune_s": sum(
            (r.info.end_time - r.info.start_time) / 1000 for r in cells if r.data.tags["relxfer.kind"] == "finetune"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "smoke.json")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "executor_scale.json")
    parser.add_argument("--root", type=Path, default=Path("/tmp/relxfer-executor-scale"))
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    cache = args.root / "cache"
    build_model(cache)
    server = MlflowServer(args.root / f"mlflow-{int(time.time())}").start(timeout=600)
    results = []
    try:
        for name, workers, extra in CONFIGS:
            if args.only and name not in args.only:
                continue
            load = os.getloadavg()[0]
            log(f"{name}: running (load average {load:.1f})")
            result = run_study(name, workers, extra, args.spec.resolve(), server.uri, cache, args.root)
            result["load_before"] = load
            results.append(result)
            log(
                f"{name}: {result['wall_s']:.1f} s "
                + json.dumps({k: round(v, 1) for k, v in result.items() if isinstance(v, float)})
            )
    finally:
        server.stop()
    local = next((r["wall_s"] for r in results if r["config"] == "local"), None)
    for r in results:
        r["speedup_vs_local"] = local / r["wall_s"] if local else None
        r["cell_time_ratio"] = r["cell_time_sum_s"] / r["cells_makespan_s"]  # > 1: cells overlapped
    report = {"spec": str(args.spec), "cpu_count": os.cpu_count(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'config':16} {'wall s':>8} {'vs local':>9} {'startup':>8} {'1st cell':>9} {'cells':>7} {'overlap':>8}")
    for r in results:
        print(
            f"{r['config']:16} {r['wall_s']:8.1f} {r['speedup_vs_local'] or 0:9.2f} {r['startup_s']:8.1f} "
            f"{r['first_cell_s']:9.1f} {r['cells_makespan_s']:7.1f} {r['cell_time_ratio']:8.2f}"
        )


if __name__ == "__main__":
    main()
