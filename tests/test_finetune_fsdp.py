"""FSDP2 fine-tuning launched by torchrun, on the CPU with gloo and real bitsandbytes 4-bit layers:
2 processes give the loss curve of 1 process with the same global batch, an adapter that predicts
what the 1-process adapter predicts, one report per step, and the same checkpoint layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from relxfer.train import train_lora
from relxfer.train.torchrun_trainer import TorchrunTrainer
from tests.fsdp_helpers import LOSS_TOLERANCE, NF4, TINY, context, engine, predictions, recipe, request, toy

pytestmark = pytest.mark.integration

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single(relxfer_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return train_lora(TINY, recipe("qlora"), toy(), out, seed=3, cache_dir=relxfer_cache, progress=False), out


def test_two_torchrun_processes_train_what_one_process_trains(single, relxfer_cache, tmp_path):
    reference, _ = single
    finetune = recipe("qlora")
    config = engine("torchrun", nproc_per_node=2)
    steps, checkpoints = [], []
    trainer = TorchrunTrainer(config, context(config, finetune, relxfer_cache))
    trainer.check()
    result = trainer.train(
        request(
            finetune, toy(), tmp_path / "fsdp", relxfer_cache, on_checkpoint=lambda s, p: checkpoints.append((s, p))
        ),
        lambda step, metrics: steps.append((step, metrics)),
    )

    # One report per step, from rank 0 only; checkpoints reported once each, complete on disk
    # (a checkpoint's layout: tests/test_finetune.py for one process; here the sharded state).
    assert [s for s, _ in steps] == list(range(1, 7))
    assert [s for s, _ in checkpoints] == [2, 4]
    assert [m["train_loss"] for _, m in steps] == result.loss_history
    assert result.steps == 6 and result.resumed_from_step == 0 and result.n_items == 25 and result.model is None
    difference = np.abs(np.array(result.loss_history) - np.array(reference.loss_history)).max()
    assert difference <= LOSS_TOLERANCE, (difference, result.loss_history, reference.loss_history)
    print(f"loss curve, 1 process vs FSDP2 x 2: max difference {difference:.2e}")

    adapter = tmp_path / "fsdp" / "adapter"
    record = json.loads((adapter / "relxfer_finetune.json").read_text())
    assert record["parallel"] == {"world_size": 2, "mixed_precision": {"param_dtype": None, "reduce_dtype": "float32"}}
    a, b = (
        load_file(adapter / "adapter_model.safetensors"),
        load_file(reference.adapter_dir / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and len(a) == 28
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=0)

    fsdp_labels = predictions(adapter, NF4, toy(), relxfer_cache)
    single_labels = predictions(reference.adapter_dir, NF4, toy(), relxfer_cache)
    print(f"predictions equal: {(fsdp_labels == single_labels).sum()}/{len(single_labels)}")
    assert (fsdp_labels == single_labels).all()

    # A re-run finds the finished adapter and returns its result without launching anything.
    log = tmp_path / "fsdp" / "launch" / "torchrun.log"
    launched = log.stat().st_size
    again = trainer.train(request(finetune, toy(), tmp_path / "fsdp", relxfer_cache), lambda s, m: steps.append(s))
    assert again.resumed_from_step == 6 and again.loss_history == result.loss_history and len(steps) == 6
    assert log.stat().st_size == launched


def test_settings_that_would_corrupt_4bit_weights_are_refused(relxfer_cache):
    from relxfer.errors import ModelError

    finetune = recipe("qlora")
    bad = engine("torchrun", nproc_per_node=2, mixed_precision={"param_dtype": "bfloat16"})
    with pytest.raises(ModelError, match=r"mixed_precision.param_dtype 'bfloat16' would cast the packed 4-bit weights"):
        TorchrunTrainer(bad, context(bad, finetune, relxfer_cache)).check()
