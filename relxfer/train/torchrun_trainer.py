"""The `torchrun` fine-tuning engine: FSDP2 on one node, `torchrun --standalone --nproc_per_node N`
running relxfer's training loop (relxfer.train.worker) in N processes, one per GPU (gloo
processes on a machine without CUDA). The parent process relays rank 0's step reports to the
runner, so one loss curve and one adapter reach MLflow, and only through relxfer.tracking.client.

A killed rank ends the whole group (torchrun stops the others) and the cell fails; the next
`relxfer run` resumes from the last checkpoint in the cell's directory, inside the same MLflow
run. `max_restarts` > 0 lets torchrun itself restart the group, which then resumes the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from relxfer.errors import ModelError
from relxfer.spec.engines import EngineContext
from relxfer.spec.types import TorchrunFinetuneEngine
from relxfer.train import launch
from relxfer.train.base import StepCallback, TrainRequest
from relxfer.train.relay import JsonLinesTail, Relay, die_with_parent

POLL_S = 0.2


class TorchrunTrainer:
    kind = "torchrun"

    def __init__(self, config: TorchrunFinetuneEngine, context: EngineContext):
        self.config = config
        self.context = context

    def check(self) -> None:
        launch.check_engine(self.context, self.config.nproc_per_node, 1)

    def run_tags(self) -> dict[str, str]:
        return launch.run_tags(self.kind, self.context, self.config.nproc_per_node)

    def train(self, request: TrainRequest, on_step: StepCallback):
        done = launch.finished(request, self.config, self.config.nproc_per_node)
        if done is not None:
            return done
        events = launch.new_events_file(request)
        request_file = launch.save_request(launch.write_request(request, self.config, events), request)
        log_path = launch.launch_dir(request) / "torchrun.log"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.config.nproc_per_node}",
            f"--max_restarts={self.config.max_restarts}",
            "-m",
            "relxfer.train.worker",
            str(request_file),
        ]
        tail = JsonLinesTail(events)
        with open(log_path, "ab") as log, launch.progress_bar(request, self.context.model.name) as bar:
            relay = Relay(on_step, request.on_checkpoint, bar)
            # A session of its own: stopping it stops torchrun and every rank, nothing else. And
            # torchrun dies with this process (kill -9 included), so no orphaned group trains on.
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
            )
            try:
                while process.poll() is None:
                    for event in tail.read():
                        relay(event)
                    time.sleep(POLL_S)
                for event in tail.read():  # what rank 0 wrote before the group ended
                    relay(event)
            except BaseException:
                _stop(process)
                raise
        if process.returncode != 0 and relay.error is None:
            raise ModelError(
                f"torchrun fine-tune of model {self.context.model.name!r} failed (exit code {process.returncode}): "
                f"{_last_error(log_path)}; log: {log_path}"
            )
        return relay.final(f"torchrun fine-tune of model {self.context.model.name!r}", f"see {log_path}")


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _last_error(log_path) -> str:
    """The most telling line of the log: the last exception line, else its last line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line and not line.startswith(("File ", "raise ", "torch.distributed.elastic")):
            return line[-300:]
    for line in reversed(lines):
        if "exitcode" in line or "Signal" in line:
            return line[-300:]
    return lines[-1][-300:] if lines else "no output"
