"""Validate and plan stay light: planning every shipped spec (built-in models' recipes, twins'
tokenizer digests and local data digests included) imports neither torch nor transformers, nor
a client library, so `relxfer plan` answers in seconds on a machine without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.shared_data import belebele_dir, sib200_dir, tokenizers_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "mlflow", "ray", "tinker", "openai")

PLAN_EVERY_SPEC = f"""
import json, sys
from pathlib import Path
from relxfer.plan.cells import plan
from relxfer.spec.load import load_spec
counts = {{p.name: len(plan(load_spec(p))) for p in sorted(Path("specs").glob("*.json"))}}
print(json.dumps([counts, sorted(m for m in {HEAVY!r} if m in sys.modules)]))
"""


def test_planning_every_shipped_spec_imports_no_heavy_library():
    env = {
        **os.environ,
        "BELEBELE_DIR": str(belebele_dir()),
        "SIB200_DIR": str(sib200_dir()),
        "RELXFER_TOKENIZERS_DIR": str(tokenizers_dir()),
    }
    done = subprocess.run(
        [sys.executable, "-c", PLAN_EVERY_SPEC], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts, imported = json.loads(done.stdout.splitlines()[-1])
    assert counts["families.json"] == 76 and counts["smoke.json"] == 31
    assert imported == []
