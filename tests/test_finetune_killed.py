"""A fine-tune killed (SIGKILL) in another process after a checkpoint resumes from it here and
ends where an uninterrupted run ends, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from relxfer.train import KEEP_CHECKPOINTS, train_lora
from tests import test_finetune
from tests.test_finetune import REPO, TINY, qlora

pytestmark = pytest.mark.integration
toy = test_finetune.toy  # the learnable toy data set (a fixture)

# One intra-op thread here and in the killed process: results are compared bit for bit.
torch.set_num_threads(1)


KILLED_RUN = textwrap.dedent(
    """
    import json, sys, time, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from relxfer.spec.types import FinetuneSpec, ModelSpec
    from relxfer.train import train_lora
    args = json.loads(sys.argv[1])
    def slow_after_checkpoint(step, metrics):
        if step >= 4:
            time.sleep(2.0)  # the parent kills the process during this sleep
    train_lora(ModelSpec.from_dict(args["model"]), FinetuneSpec.from_dict(args["finetune"]),
               [tuple(e) for e in args["examples"]], Path(args["out"]),
               seed=1, cache_dir=Path(args["cache"]), on_step=slow_after_checkpoint, progress=False)
    """
)


def test_killed_run_resumes_from_its_checkpoint(toy, relxfer_cache, tmp_path):
    finetune = qlora(max_steps=8, checkpoint_every=2)
    reference = train_lora(TINY, finetune, toy, tmp_path / "reference", seed=1, cache_dir=relxfer_cache, progress=False)

    out = tmp_path / "killed"
    args = {
        "model": TINY.to_dict(),
        "finetune": finetune.to_dict(),
        "examples": toy,
        "out": str(out),
        "cache": str(relxfer_cache),
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, json.dumps(args)], cwd=REPO, env=env, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while not (out / "checkpoints" / "step-4" / "state.json").exists():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 60 s"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (out / "adapter").exists()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-2", "step-4"] and len(kept) <= KEEP_CHECKPOINTS

    resumed = train_lora(TINY, finetune, toy, out, seed=1, cache_dir=relxfer_cache, progress=False)
    assert resumed.resumed_from_step == 4 and resumed.steps == 8
    # Adapter, optimizer, scheduler, RNG (LoRA dropout) and data position all restored: the
    # resumed run ends where the uninterrupted one does, here bit for bit (tolerance 1e-6).
    np.testing.assert_allclose(resumed.loss_history, reference.loss_history, atol=1e-6, rtol=0)
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "reference" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 28  # A and B of 7 projections x 2 layers
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
