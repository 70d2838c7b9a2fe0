"""The `tinker` fine-tuning engine: LoRA training on the Tinker service through its SDK's
training client, reading top to bottom like the local loop.

Same examples, order and loss as the local trainer: examples are tokenized with the model's own
tokenizer by `relxfer.train.tokenize_examples`, optimizer step k takes the micro-batches
`relxfer.train.micro_batches` gives it, and only completion tokens carry weight. The service's
cross-entropy is a *sum* of weight x token loss, so every completion token of a step gets weight
1 / (completion tokens of the step): the sum is the local trainer's mean loss, and so is its
gradient. The reported loss is that sum, computed from the per-token log-probs the service
returns for the step (before its update, as the local trainer reports it).

Resume: every `checkpoint_every` steps the service saves the state (weights and optimizer);
its Tinker path, step and loss history are written atomically to
`<out_dir>/checkpoints/step-<N>/state.json`, handed to `request.on_checkpoint` (the runner
uploads it to the MLflow run's artifacts, like any trainer's checkpoint, so a retry on another
machine finds it) and reported as the run tag `relxfer.tinker.state_path`. A re-run finds the
newest such file, restores the state into a new training client, re-reports the steps it had
(the runner keeps only those the MLflow run lacks) and continues with step N + 1.

Layout of `out_dir`: checkpoints/step-<N>/state.json (while training; the newest only),
adapter/ (the peft export, tokenizer files and relxfer_finetune.json with the sampler path the
`tinker` evaluation engine samples).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from relxfer.provenance import VERSIONS
from relxfer.services.tinker_client import (
    TinkerError,
    call,
    check_base_model,
    check_environment,
    close_session,
    sdk,
    sdk_version,
    service_client,
    supports,
)
from relxfer.spec.engines import EngineContext
from relxfer.spec.types import FinetuneSpec, ModelSpec, TinkerFinetuneEngine
from relxfer.train.base import StepCallback, TrainRequest
from relxfer.train.data import Row
from relxfer.train.tinker_recipe import (
    adam_params,
    learning_rate,
    lora_groups,
    not_applied,
    schedule_length,
    step_examples,
)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"  # the name the checkpoint mirror waits for: the file is the whole checkpoint


def _submitted(request: object) -> Callable[[], object]:
    """What `call` waits for when the request is already submitted (never submitted again)."""
    return lambda: request


class TinkerTrainer:
    kind = "tinker"

    def __init__(self, config: TinkerFinetuneEngine, context: EngineContext):
        self.config = config
        self.context = context
        self.base_model = config.base_model or context.model.source
        self.timeout = float(config.request_timeout_s)

    def check(self) -> None:
        check_environment(f"model {self.context.model.name!r}'s fine-tune")
        if self.context.spec.finetune is not None:
            lora_groups(self.context.spec.finetune.lora.target_modules)

    def run_tags(self) -> dict[str, str]:
        tags = {"engine": self.kind, "tinker.base_model": self.base_model, VERSIONS + "tinker": sdk_version()}
        if self.context.spec.finetune is not None:
            clipping = "grad_clip_norm" in getattr(sdk().types.AdamParams, "model_fields", {})
            notes = not_applied(self.context.spec.finetune, clipping)
            if notes:
                tags["tinker.not_applied"] = notes
        return tags

    def train(self, request: TrainRequest, on_step: StepCallback):
        from relxfer.models.loading import load_tokenizer
        from relxfer.models.tokenization import default_add_bos_token
        from relxfer.train import TrainResult, tokenize_examples
        from relxfer.train.records import finished_result

        out_dir = Path(request.out_dir)
        model = request.model
        cfg = request.finetune
        train = cfg.training
        if not request.examples:
            raise TinkerError("no training examples")
        config_hash = self._config_hash(model, cfg, request)
        finished = finished_result(out_dir, config_hash)
        if finished is not None:
            return finished

        # -- data: the local trainer's tokenization, order and completion-only weights ----------
        tokenizer = load_tokenizer(model, request.cache_dir)
        rows = tokenize_examples(tokenizer, request.examples, default_add_bos_token(), train.max_seq_len)

        # -- the service: train (or resume), then save the weights the evaluation samples -------
        client = service_client(self.timeout)
        try:
            check_base_model(client, self.base_model, self.timeout)
            run = train_on_service(
                client,
                rows,
                base_model=self.base_model,
                finetune=cfg,
                seed=request.seed,
                out_dir=out_dir,
                config_hash=config_hash,
                timeout=self.timeout,
                on_step=on_step,
                on_checkpoint=request.on_checkpoint,
                progress=request.progress,
            )
            result = TrainResult(
                adapter_dir=out_dir / "adapter",
                n_items=len(rows),
                steps=run.steps,
                resumed_from_step=run.start_step,
                final_loss=run.loss_history[-1],
                tokens_per_s=sum(run.speeds) / len(run.speeds) if run.speeds else 0.0,
                peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this client process
                loss_history=run.loss_history,
                config_hash=config_hash,
            )
            self._export(client, run, tokenizer, model, cfg, request, result)
            return result
        finally:
            close_session(client, self.timeout, f"relxfer: {model.name}'s fine-tune")

    def _export(
        self,
        client,
        run: ServiceRun,
        tokenizer,
        model: ModelSpec,
        cfg: FinetuneSpec,
        request: TrainRequest,
        result,
    ) -> None:
        from relxfer.models.build_once import build_once
        from relxfer.train import FINETUNE_JSON
        from relxfer.train.records import result_record
        from relxfer.train.tinker_export import download_adapter, to_peft

        out_dir = Path(request.out_dir)

        def write(tmp: Path) -> None:
            raw = download_adapter(
                client, run.training, run.sampler_path, tmp.parent / f".{tmp.name}-raw", self.timeout
            )
            try:
                export = to_peft(raw, tmp, model.source, cfg.lora.r)
            finally:
                shutil.rmtree(raw, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            record = {
                "base_model": {
                    "name": model.name,
                    "source": model.source,
                    "revision": model.revision,
                    "dtype": model.dtype,
                },
                "finetune": cfg.to_dict(),
                "seed": request.seed,
                "config_hash": result.config_hash,
                "result": result_record(result),
                "tinker": {
                    "base_model": self.base_model,
                    "sampler_path": run.sampler_path,
                    "sdk": sdk_version(),
                    "state_paths": [c["path"] for c in run.state["checkpoints"]],
                    "export": export,
                },
            }
            (tmp / FINETUNE_JSON).write_text(json.dumps(record, indent=2) + "\n")

        build_once(out_dir / "adapter", write, complete_marker=FINETUNE_JSON)
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # the run is complete

    def _config_hash(self, model: ModelSpec, cfg: FinetuneSpec, request: TrainRequest) -> str:
        """Everything that decides the adapter: engine, service model, settings, seed, examples."""
        h = hashlib.sha256()
        identity = {
            "engine": self.kind,
            "base_model": self.base_model,
            "source": model.source,
            "revision": model.revision,
            "finetune": cfg.to_dict(),
            "seed": request.seed,
        }
        h.update(json.dumps(identity, sort_keys=True).encode())
        for prompt, completion in request.examples:
            h.update(json.dumps([prompt, completion]).encode())
        return h.hexdigest()[:16]


@dataclass
class ServiceRun:
    """What training on the service left: the client that holds the trained LoRA, the path of
    its sampler weights, the losses of every step, and the state record (`state.json`)."""

    training: Any
    sampler_path: str
    steps: int
    start_step: int
    loss_history: list[float]
    speeds: list[float]
    state: dict


def train_on_service(
    client,
    rows: list[Row],
    *,
    base_model: str,
    finetune: FinetuneSpec,
    seed: int,
    out_dir: Path,
    config_hash: str,
    timeout: float,
    on_step: StepCallback,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    progress: bool = False,
) -> ServiceRun:
    """Train a LoRA on the service from tokenized `rows` (or resume the newest saved state in
    `out_dir`) and save its sampler weights: every SDK call of a fine-tune but the download."""
    from tqdm.auto import tqdm

    tinker = sdk()
    train = finetune.training
    steps, total_micro = schedule_length(len(rows), train)
    state = _load_state(out_dir, config_hash)
    if state["checkpoints"]:
        latest = state["checkpoints"][-1]
        training = call(
            lambda: client.create_training_client_from_state_with_optimizer(latest["path"]),
            timeout,
            base_model=base_model,
        )
        start_step, loss_history = int(latest["step"]), list(latest["loss_history"])
    else:
        kwargs = dict(base_model=base_model, rank=finetune.lora.r, **lora_groups(finetune.lora.target_modules))
        if supports(tinker.ServiceClient.create_lora_training_client, "seed"):
            kwargs["seed"] = int(seed)
        training = call(lambda: client.create_lora_training_client(**kwargs), timeout, base_model=base_model)
        start_step, loss_history = 0, []
    # Steps the interrupted run had: the runner logs those its MLflow run is missing.
    for step, loss in enumerate(loss_history, start=1):
        on_step(step, {"train_loss": loss, "learning_rate": learning_rate(step, steps, train)})

    speeds: list[float] = []
    with tqdm(total=steps, initial=start_step, desc="fine-tuning (tinker)", disable=not progress) as bar:
        for step in range(start_step + 1, steps + 1):
            started = time.perf_counter()
            batch = [rows[i] for i in step_examples(len(rows), train, seed, step, total_micro)]
            data = step_data(tinker.types, batch)
            lr = learning_rate(step, steps, train)
            # Both submitted before waiting: the service runs them back to back, in order.
            backward = training.forward_backward(data, "cross_entropy")
            update = training.optim_step(adam_params(tinker.types, lr, train))
            output = call(_submitted(backward), timeout, base_model=base_model)
            call(_submitted(update), timeout, base_model=base_model)
            loss_history.append(weighted_loss(output, data))
            speeds.append(sum(len(ids) for ids, _ in batch) / (time.perf_counter() - started))
            metrics = {"train_loss": loss_history[-1], "learning_rate": lr, "tokens_per_s": speeds[-1]}
            if train.checkpoint_every and step % train.checkpoint_every == 0 and step < steps:
                saved = call(partial(training.save_state, f"relxfer-step-{step}"), timeout).path
                state["checkpoints"] = [{"step": step, "path": saved, "loss_history": loss_history}]
                directory = _write_state(out_dir, step, state)
                if on_checkpoint is not None:
                    on_checkpoint(step, directory)
                metrics |= {"tinker.state_path": saved, "tinker.state_step": str(step)}
            # After the state is saved: a kill before this line resumes from the previous
            # state and repeats the step; one after it re-reports the step (see above).
            on_step(step, metrics)
            bar.set_postfix(loss=f"{loss_history[-1]:.4f}")
            bar.update(1)

    sampler = call(lambda: training.save_weights_for_sampler("relxfer-final"), timeout).path
    on_step(steps, {"tinker.sampler_path": sampler})
    return ServiceRun(training, sampler, steps, start_step, loss_history, speeds, state)


def step_data(types_module, batch: list[Row]) -> list:
    """One optimizer step's Datums: every completion token of the step weighs 1 / (completion
    tokens of the step), so the service's summed cross-entropy is the step's mean token loss,
    the convention of every relxfer fine-tuning engine (`relxfer.train.loss`)."""
    n_targets = sum(n for _, n in batch)
    return [_datum(types_module, ids, n, 1.0 / n_targets) for ids, n in batch]


def _datum(types_module, ids: list[int], n_completion: int, weight: float):
    """Input ids[:-1], targets ids[1:]; the last `n_completion` targets weigh `weight`, the rest 0."""
    targets = ids[1:]
    weights = [0.0] * (len(targets) - n_completion) + [weight] * n_completion
    return types_module.Datum(
        model_input=types_module.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )


def weighted_loss(output, data) -> float:
    """sum(-logprob x weight) over the step's tokens, from the log-probs the service returned."""
    total = 0.0
    for result, datum in zip(output.loss_fn_outputs, data):
        logprobs = result["logprobs"]
        values = logprobs.to_numpy() if hasattr(logprobs, "to_numpy") else logprobs["data"]
        weights = datum.loss_fn_inputs["weights"].to_numpy()
        total -= float(sum(float(lp) * w for lp, w in zip(values, weights) if w))
    return total


def _load_state(out_dir: Path, config_hash: str) -> dict:
    """The newest saved state under `out_dir/checkpoints/` (none: a fresh state)."""
    saved = sorted(
        (
            (int(p.parent.name[5:]), p)
            for p in (out_dir / CHECKPOINTS).glob(f"step-*/{STATE_FILE}")
            if p.parent.name[5:].isdigit()
        ),
        reverse=True,
    )
    if not saved:
        return {"config_hash": config_hash, "checkpoints": []}
    path = saved[0][1]
    state = json.loads(path.read_text())
    if state.get("config_hash") != config_hash:
        raise TinkerError(
            f"{str(path)!r} belongs to a different Tinker fine-tune (other model, data, seed or settings); "
            "delete it or use another cache directory"
        )
    return state


def _write_state(out_dir: Path, step: int, state: dict) -> Path:
    """Write `checkpoints/step-<step>/state.json` atomically, drop older ones; the directory."""
    directory = out_dir / CHECKPOINTS / f"step-{step}"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, directory / STATE_FILE)
    for old in (out_dir / CHECKPOINTS).glob("step-*"):
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)
    return directory
