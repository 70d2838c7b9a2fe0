"""What differs between one process and FSDP2 across processes, behind one small object, so the
training loop (relxfer.train.loop) is the same code for both.

`Single` is the one-process run: every method is the identity, so a single-process fine-tune
executes exactly the operations it always did. `Fsdp` runs inside a process group that a launcher
set up (torchrun, Ray Train): each rank trains on its slice of every global micro-batch, FSDP2
(`fully_shard`) shards weights, adapter, gradients and optimizer state across the ranks, and the
loss of a step is normalised by the completion tokens of the whole global step, so the gradient
equals the single-process one (up to float summation order).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch

from relxfer.models.loading import DTYPES
from relxfer.spec.types import FsdpFinetuneEngine, Quantization


@dataclass
class Single:
    """One process, no process group."""

    rank: int = 0
    world_size: int = 1
    is_main: bool = True

    def identity(self) -> dict | None:
        return None  # adds nothing to the run's config hash: one-process results never change

    def load_device_map(self, requested):
        return requested

    @contextlib.contextmanager
    def loading_turn(self):
        yield

    def quant_storage(self, quantization: Quantization | None):
        return None

    def gradient_checkpointing(self, recipe: bool) -> bool:
        return recipe

    def wrap(self, model):
        return model

    def device(self, model):
        return model.get_input_embeddings().weight.device

    def local_rows(self, batch: list) -> tuple[list, float]:
        """(this rank's rows of a global micro-batch, weight of its loss)."""
        return batch, 1.0

    def loss_scale(self) -> float:
        return 1.0

    def total(self, value: float) -> float:
        return value

    def maximum(self, value: float) -> float:
        return value

    def broadcast(self, value):
        return value

    def barrier(self) -> None:
        pass

    def trainable_state(self, model) -> dict | None:
        return None  # peft's save_pretrained reads the (unsharded) model itself

    def close(self) -> None:
        pass


@dataclass
class Fsdp:
    """FSDP2 in the process group a launcher started (env RANK/WORLD_SIZE/LOCAL_RANK, or Ray
    Train's). `engine` is the model's `engines.finetune` entry (kind, sharding, mixed precision)."""

    engine: FsdpFinetuneEngine
    rank: int = field(init=False)
    world_size: int = field(init=False)
    local_rank: int = field(init=False)
    local_world_size: int = field(init=False)
    is_main: bool = field(init=False)
    owns_group: bool = field(default=False, init=False)

    def __post_init__(self):
        import torch.distributed as dist

        self.sharding = self.engine.fsdp
        self.mixed_precision = self.engine.mixed_precision
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():  # torchrun: we start it; Ray Train started it already
            dist.init_process_group("nccl" if self.cuda else "gloo")
            self.owns_group = True
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh("cuda" if self.cuda else "cpu", (self.world_size,))

    # -- what the run's identity and loading see ----------------------------------------------

    def identity(self) -> dict:
        return fsdp_identity(self.world_size, self.engine)

    def load_device_map(self, requested):
        # Every rank loads onto the CPU; `fully_shard` then moves only its shard to its GPU.
        return "cpu"

    @contextlib.contextmanager
    def loading_turn(self):
        """With cpu_ram_efficient_loading, the ranks of a node load and shard the base model one
        after another, so host memory holds one full copy at a time (plus the shards), not one
        per rank. `fully_shard` needs no communication, so ranks may shard at different times."""
        import torch.distributed as dist

        if not self.sharding.cpu_ram_efficient_loading:
            yield
            return
        for turn in range(self.local_world_size):
            if turn == self.local_rank:
                yield
            dist.barrier()

    def quant_storage(self, quantization: Quantization | None):
        """`bnb_4bit_quant_storage`: 4-bit weights packed into the compute dtype shard (and cast)
        like every other weight; uint8 is bitsandbytes' default."""
        if not quantization or self.sharding.quant_storage == "uint8":
            return torch.uint8 if quantization else None
        return DTYPES[quantization.compute_dtype]

    def gradient_checkpointing(self, recipe: bool) -> bool:
        chosen = self.sharding.gradient_checkpointing
        return recipe if chosen is None else bool(chosen)

    def wrap(self, model):
        """FSDP2: one unit per decoder layer, then the root (embeddings, final norm, head)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = self.mixed_precision
        policy = MixedPrecisionPolicy(
            param_dtype=DTYPES[mp.param_dtype] if mp.param_dtype else None,
            reduce_dtype=DTYPES[mp.reduce_dtype],
        )
        kwargs = {
            "mesh": self.mesh,
            "mp_policy": policy,
            "reshard_after_forward": self.sharding.reshard_after_forward,
        }
        for layer in decoder_layers(model):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        _move_quant_states(model, self.device(model))
        return model

    def device(self, model):
        return torch.device("cuda", self.local_rank) if self.cuda else torch.device("cpu")

    # -- the step -------------------------------------------------------------------------------

    def local_rows(self, batch: list) -> tuple[list, float]:
        """Rank r takes rows r, r + world, ... of the global micro-batch. A rank left without a
        row (a short last batch) still runs forward and backward, on one row with weight 0, so
        every rank joins every collective."""
        rows = batch[self.rank :: self.world_size]
        return (rows, 1.0) if rows else (batch[:1], 0.0)

    def loss_scale(self) -> float:
        return float(self.world_size)  # FSDP averages gradients over ranks; the loss is a global sum

    def total(self, value: float) -> float:
        return self._reduce(value, "sum")

    def maximum(self, value: float) -> float:
        return self._reduce(value, "max")

    def _reduce(self, value: float, op: str) -> float:
        import torch.distributed as dist

        device = torch.device("cuda", self.local_rank) if self.cuda else torch.device("cpu")
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(tensor.item())

    def broadcast(self, value):
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def trainable_state(self, model) -> dict:
        """The full (unsharded) trainable tensors on the CPU, gathered on every rank (a collective:
        every rank must call it). Only the adapter is gathered, never the base weights."""
        state = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                full = param.full_tensor() if hasattr(param, "full_tensor") else param
                state[name] = full.detach().to("cpu")
        return state

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def fsdp_identity(world_size: int, engine: FsdpFinetuneEngine) -> dict:
    """What a distributed run adds to its config hash (relxfer.train.records.config_hash)."""
    return {"world_size": world_size, "mixed_precision": engine.mixed_precision.to_dict()}


def decoder_layers(model) -> list:
    """The repeated blocks of a transformers causal LM (under peft's wrappers): the modules whose
    class the model names in `_no_split_modules` (e.g. LlamaDecoderLayer), outermost only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers, inside = [], set()
    for module in model.modules():
        if type(module).__name__ in names and id(module) not in inside:
            layers.append(module)
            inside |= {id(m) for m in module.modules()}
    return layers


def _move_quant_states(model, device) -> None:
    """bitsandbytes keeps each 4-bit layer's quantization constants on the module too (to restore
    them after FSDP replaced the parameter object); they must live where the shards went."""
    for module in model.modules():
        state = getattr(module, "quant_state", None)
        if state is not None and hasattr(state, "to"):
            state.to(device)
