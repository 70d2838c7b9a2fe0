"""What each rank of a distributed fine-tune runs: `train_lora` with FSDP2 in the process group its
launcher set up, reporting through rank 0.

    torchrun --nproc_per_node N -m relxfer.train.worker REQUEST.json    (relxfer.train.torchrun_trainer)
    run(request, emit) inside a Ray Train worker                           (relxfer.train.ray_trainer)

REQUEST.json: {"model", "finetune", "examples", "out_dir", "seed", "cache_dir", "engine", "events"}
(`engine`: the model's engines.finetune entry; `events`: the JSON-lines file rank 0 appends to).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from relxfer.errors import RelxferError
from relxfer.spec.types import (
    FinetuneSpec,
    LocalFinetuneEngine,
    ModelSpec,
    TinkerFinetuneEngine,
    finetune_engine_from_dict,
)
from relxfer.train.records import result_record


def run(request: dict, emit: Callable[[dict], None]) -> None:
    """Train as one rank; rank 0 emits step, checkpoint and result events (relxfer.train.relay)."""
    from relxfer.train.loop import train_lora
    from relxfer.train.parallel import Fsdp

    engine = finetune_engine_from_dict(request["engine"])
    assert not isinstance(engine, (LocalFinetuneEngine, TinkerFinetuneEngine))  # launched for FSDP2 only
    parallel = Fsdp(engine)
    try:
        result = train_lora(
            ModelSpec.from_dict(request["model"]),
            FinetuneSpec.from_dict(request["finetune"]),
            [tuple(e) for e in request["examples"]],
            Path(request["out_dir"]),
            seed=request["seed"],
            cache_dir=Path(request["cache_dir"]),
            on_step=lambda step, metrics: emit({"event": "step", "step": step, "metrics": metrics}),
            progress=False,
            parallel=parallel,
            on_checkpoint=lambda step, path: emit({"event": "checkpoint", "step": step, "path": str(path)}),
        )
        if parallel.is_main:
            emit({"event": "result", "result": result_record(result)})
    except RelxferError as e:
        if parallel.is_main:
            emit({"event": "error", "message": str(e)})
        raise
    finally:
        parallel.close()


def main(argv: list[str]) -> int:
    from relxfer.train.relay import JsonLinesSink, die_with_parent

    die_with_parent()  # torchrun gone: this rank goes too
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    try:
        run(request, JsonLinesSink(Path(request["events"])))
    except RelxferError:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
