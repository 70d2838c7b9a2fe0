"""The `ray` fine-tuning engine: FSDP2 across the nodes of a Ray cluster with Ray Train's
TorchTrainer, which starts `num_workers` workers (each with `resources_per_worker`) and their
process group (NCCL on GPUs, gloo on CPUs); each worker runs relxfer's training loop
(relxfer.train.worker.run). Rank 0's reports come back over a Ray queue and are relayed to the
runner in this process, so one loss curve and one adapter reach MLflow.

The cluster is the one this process is already connected to (the Ray executor runs cells inside
it), else `address` or $RAY_ADDRESS. Workers read and write the cell's directory (checkpoints,
the final adapter): across nodes it must be on a file system every node mounts at the same path.
"""

from __future__ import annotations

import logging
import os
import threading

from relxfer.errors import ModelError
from relxfer.provenance import VERSIONS, package_version
from relxfer.spec.engines import EngineContext
from relxfer.spec.types import RayFinetuneEngine
from relxfer.train import launch
from relxfer.train.base import StepCallback, TrainRequest
from relxfer.train.relay import Relay

POLL_S = 0.2


def _train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker: the process group is up; train and report via the queue."""
    from relxfer.train.worker import run

    queue = config["queue"]
    run(config["request"], queue.put)


class RayTrainer:
    kind = "ray"

    def __init__(self, config: RayFinetuneEngine, context: EngineContext):
        self.config = config
        self.context = context

    def _gpus_per_worker(self) -> float:
        return float(self.config.resources_per_worker.get("GPU", 0))

    def check(self) -> None:
        try:
            import ray  # noqa: F401
            from ray.train.torch import TorchTrainer  # noqa: F401
        except ImportError:
            raise ModelError(
                f'model {self.context.model.name!r} fine-tunes on Ray Train: pip install "relxfer[ray]"'
            ) from None
        if not (self._connected() or self.config.address or os.environ.get("RAY_ADDRESS")):
            raise ModelError(
                f"model {self.context.model.name!r}: engines.finetune kind 'ray' needs a Ray cluster: "
                "run under the Ray executor, set engines.finetune.address, or set RAY_ADDRESS"
            )
        launch.check_engine(self.context, self.config.num_workers, self._gpus_per_worker())

    @staticmethod
    def _connected() -> bool:
        try:
            import ray
        except ImportError:
            return False
        return ray.is_initialized()

    def run_tags(self) -> dict[str, str]:
        tags = launch.run_tags(self.kind, self.context, self.config.num_workers)
        return tags | {VERSIONS + "ray": package_version("ray") or "unknown"}

    def train(self, request: TrainRequest, on_step: StepCallback):
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Empty, Queue

        done = launch.finished(request, self.config, self.config.num_workers)
        if done is not None:
            return done
        name = self.context.model.name
        connected_here = not ray.is_initialized()
        if connected_here:
            ray.init(
                address=self.config.address or os.environ.get("RAY_ADDRESS"),
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        queue = Queue()
        resources = dict(self.config.resources_per_worker)
        gpus = resources.pop("GPU", 0)
        cpus = resources.pop("CPU", None)
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={"request": launch.write_request(request, self.config, None), "queue": queue},
            scaling_config=ScalingConfig(
                num_workers=self.config.num_workers,
                use_gpu=gpus > 0,
                resources_per_worker={
                    **({"GPU": gpus} if gpus else {}),
                    **({"CPU": cpus} if cpus else {}),
                    **resources,
                },
            ),
            run_config=RunConfig(
                name=f"relxfer-{name}",
                storage_path=str(launch.launch_dir(request) / "ray"),
                failure_config=FailureConfig(max_failures=self.config.max_failures),
            ),
        )
        outcome: dict = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as e:  # noqa: BLE001 - reported in the caller's thread
                outcome["error"] = e

        try:
            with launch.progress_bar(request, name) as bar:
                relay = Relay(on_step, request.on_checkpoint, bar)
                thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
                thread.start()
                while thread.is_alive() or not queue.empty():
                    try:
                        relay(queue.get(timeout=POLL_S))
                    except Empty:
                        pass
                thread.join()
        finally:
            queue.shutdown()
            if connected_here:
                ray.shutdown()
        error = outcome.get("error") or getattr(outcome.get("result"), "error", None)
        if error is not None and relay.error is None:
            detail = str(error).strip().splitlines()
            raise ModelError(
                f"Ray Train fine-tune of model {name!r} failed: {type(error).__name__}: {detail[-1][:300] if detail else ''}"
            )
        return relay.final(f"Ray Train fine-tune of model {name!r}", "no result event from rank 0")
