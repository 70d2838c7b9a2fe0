"""FSDP2 fine-tuning through Ray Train: 2 workers on a real local Ray cluster (gloo on the CPU),
plain LoRA with gradient checkpointing, give the loss curve and predictions of one process."""

from __future__ import annotations

import numpy as np
import pytest

from relxfer.train import train_lora
from tests.fsdp_helpers import LOSS_TOLERANCE, TINY, context, engine, predictions, recipe, request, toy
from tests.ray_cluster import RayCluster

pytestmark = pytest.mark.system

pytest.importorskip("ray.train.torch", reason='pip install "relxfer[ray]"')


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster().start()
    yield cluster
    cluster.stop()


def test_two_ray_train_workers_train_what_one_process_trains(ray_cluster, relxfer_cache, tmp_path):
    from relxfer.train.ray_trainer import RayTrainer

    finetune = recipe("lora")
    reference = train_lora(TINY, finetune, toy(), tmp_path / "single", seed=3, cache_dir=relxfer_cache, progress=False)
    config = engine(
        "ray",
        num_workers=2,
        resources_per_worker={"CPU": 1},
        address=ray_cluster.address,
        fsdp={"gradient_checkpointing": True},
    )
    trainer = RayTrainer(config, context(config, finetune, relxfer_cache))
    trainer.check()
    steps = []
    result = trainer.train(request(finetune, toy(), tmp_path / "ray", relxfer_cache), lambda s, m: steps.append((s, m)))

    assert [s for s, _ in steps] == list(range(1, 7))
    assert result.steps == 6 and result.resumed_from_step == 0
    difference = np.abs(np.array(result.loss_history) - np.array(reference.loss_history)).max()
    assert difference <= LOSS_TOLERANCE, (difference, result.loss_history, reference.loss_history)
    print(f"loss curve, 1 process vs Ray Train FSDP2 x 2: max difference {difference:.2e}")
    ray_labels = predictions(result.adapter_dir, None, toy(), relxfer_cache)
    single_labels = predictions(reference.adapter_dir, None, toy(), relxfer_cache)
    print(f"predictions equal: {(ray_labels == single_labels).sum()}/{len(single_labels)}")
    assert (ray_labels == single_labels).all()
