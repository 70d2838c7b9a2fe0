"""Screenshots of a fresh smoke study in MLflow's own UI, in a real headless Chromium (not part of CI).

What it does, as a user would from the README's main job:
1. starts `mlflow server` on 127.0.0.1 (free port, temporary store);
2. `mlflow run . -P spec=specs/smoke.json --env-manager local --experiment-name smoke`, then the
   same command again (nothing to run: no new parent run), then `relxfer compare --experiment
   smoke` twice (one comparison run, nested under the study's parent run);
3. opens the UI in Chromium (Playwright driving the Debian `chromium`) and saves:
   - `1-experiment-fresh-browser.png`: the experiment as a browser that never chose a workflow
     opens it (MLflow 3.17 shows its GenAI overview; the spec's description links to the runs);
   - `2-experiment-runs.png`: the link relxfer prints, the experiment's runs list;
   - `3-parent-run.png`: the study's parent run, named after the spec, with the answer (summary
     lines and plots) in its description;
   - `4-evaluation-run.png`: one evaluation run (params, tags, metrics);
   - `5-compare-runs.png`: MLflow's compare-runs page for one language's three conditions;
4. prints the run counts that show re-runs and repeated comparisons pile up nothing (parent runs,
   comparison runs).

Needs: `apt-get install -y chromium` and `pip install -e ".[ui]"` (Playwright's Python package;
its own browser download is not used). Run from the repository root:

    python bench/ui_screenshots.py --out /tmp/relxfer-ui --readme bench/results/ui
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from relxfer.tracking.study_view import RUNS_VIEW_QUERY  # noqa: E402
from tests.conftest import MlflowServer  # noqa: E402  (the tests' real-server helper)

EXPERIMENT = "smoke"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def run(command: list[str], env: dict, cwd: Path) -> str:
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result.stdout + result.stderr


def make_study(uri: str, workdir: Path, fresh: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": uri}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    mlflow_run = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO),
        "-P",
        f"spec={REPO / 'specs' / 'smoke.json'}",
        "--env-manager",
        "local",
        "--experiment-name",
        EXPERIMENT,
    ]
    if fresh:
        run(mlflow_run, env, workdir)
    output = run(mlflow_run, env, workdir)  # again: nothing to run
    print("\n".join(line for line in output.splitlines() if "nothing to run" in line))
    for _ in range(2):
        output = run([str(bin_dir / "relxfer"), "compare", "--experiment", EXPERIMENT], env, workdir)
        print("\n".join(line for line in output.splitlines() if line.startswith(("comparison run", "open:"))))


def study_runs(uri: str) -> dict:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_kind = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("relxfer.kind", "other"), []).append(r)
    top_level = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    print(
        f"active runs: {len(runs)}; top-level: {[r.info.run_name for r in top_level]}; "
        f"comparison runs: {[r.info.run_name for r in by_kind.get('compare', [])]}"
    )
    parent = by_kind["study"][0]
    evaluations = [r for r in by_kind["evaluate"] if r.data.tags["relxfer.language"] == "syn_Rela"]
    return {
        "experiment_id": experiment.experiment_id,
        "parent": parent.info.run_id,
        "evaluation": evaluations[0].info.run_id,
        "compare": [r.info.run_id for r in evaluations],
    }


def screenshots(uri: str, ids: dict, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    experiment = ids["experiment_id"]
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="relxfer-chromium-") as profile:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1000},
            headless=True,
        )
        page = browser.new_page()
        # MLflow's assistant panel opens on a browser's first visit and takes a third of the page.
        page.add_init_script(
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        )

        def shot(url: str, name: str, wait_for: str, height: int = 1000, then=None) -> None:
            page.set_viewport_size({"width": 1500, "height": height})
            page.goto(f"{uri}/#/{url}")
            page.get_by_text(wait_for).first.wait_for(timeout=180_000)
            page.wait_for_timeout(2000)
            if then:
                then()
            page.wait_for_timeout(3000)  # charts and images settle
            page.screenshot(path=str(out / name))
            print(f"{out / name}: {page.url}")

        def click(text: str) -> None:
            target = page.get_by_text(text, exact=True).first
            if target.count():
                target.click()

        def expand_parent() -> None:  # the study's parent row holds its cells (the UI remembers it open)
            child = page.get_by_text("eval/tiny/baseline/syn_Rela").first
            if not child.is_visible():
                page.locator("[data-component-id$='runnamecellrenderer.tsx_46']").first.click()
            child.wait_for()

        def scroll_to(text: str):
            return lambda: page.get_by_text(text, exact=True).first.scroll_into_view_if_needed()

        shot(
            f"experiments/{experiment}",
            "1-experiment-fresh-browser.png",
            "Open the runs list",
            then=lambda: click("Got it"),
        )
        shot(
            f"experiments/{experiment}/runs?{RUNS_VIEW_QUERY}",
            "2-experiment-runs.png",
            "matching runs",
            then=expand_parent,
        )

        shot(
            f"experiments/{experiment}/runs/{ids['parent']}?{RUNS_VIEW_QUERY}",
            "3-parent-run.png",
            "Result (compare)",
            height=2600,
            then=lambda: click("Show more"),
        )
        shot(
            f"experiments/{experiment}/runs/{ids['evaluation']}?{RUNS_VIEW_QUERY}",
            "4-evaluation-run.png",
            "eval/tiny/",
            height=1700,
        )
        runs = json.dumps(ids["compare"])
        shot(
            f"compare-runs?runs={runs}&experiments={json.dumps([experiment])}&{RUNS_VIEW_QUERY}",
            "5-compare-runs.png",
            "Parallel Coordinates Plot",
            height=1900,
            then=scroll_to("Run details"),
        )
        browser.close()


# The pictures README.md and docs/mlflow.md show: (screenshot, file name, height kept of the 1500 px wide page).
README_CROPS = [
    ("2-experiment-runs.png", "mlflow-runs-list.png", 1000),
    ("3-parent-run.png", "mlflow-parent-run.png", 1650),
    ("5-compare-runs.png", "mlflow-compare-runs.png", 1580),
]


def readme_pictures(shots: Path, out: Path) -> None:
    """Crop, scale to 1000 px and reduce to 96 colours (no dithering: text stays sharp, ~40 KB each)."""
    from PIL import Image

    for name, target, height in README_CROPS:
        image = Image.open(shots / name).convert("RGB").crop((0, 0, 1500, height))
        image = image.resize((1000, round(height * 1000 / 1500)), Image.LANCZOS)
        image.quantize(96, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out / target, optimize=True)
        print(f"{out / target}: {(out / target).stat().st_size // 1024} KB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "relxfer-out" / "ui", help="where the PNGs go")
    parser.add_argument("--store", type=Path, help="keep the server's store here (a study already in it is reused)")
    parser.add_argument("--screenshots-only", action="store_true", help="with --store: only take the screenshots")
    parser.add_argument("--readme", type=Path, help="also write the README's cropped pictures here (bench/results/ui)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relxfer-ui-") as tmp:
        store = args.store or Path(tmp) / "store"
        reuse = (store / "mlflow.db").exists()
        server = MlflowServer(store)
        try:
            server.start(timeout=600)  # a busy shared machine can take minutes
            if not args.screenshots_only:
                make_study(server.uri, Path(tmp), fresh=not reuse)
            screenshots(server.uri, study_runs(server.uri), args.out)
        finally:
            server.stop()
    if args.readme:
        readme_pictures(args.out, args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
