"""Load a causal LM and its tokenizer from a spec's model entry: the built-in tiny model, a local
directory or a Hugging Face hub id, optionally in 4-bit (bitsandbytes NF4) and with a LoRA adapter.

Local paths and hub ids go through the same `from_pretrained` call. Hub access uses the
standard Hugging Face cache (HF_HOME) and token (HF_TOKEN, read by huggingface_hub itself);
no credential ever passes through this code.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from relxfer.errors import ModelError
from relxfer.models import packaged_gemma, tiny, twins
from relxfer.models.build_once import quiet_transformers
from relxfer.spec.checks import is_local_path, local_source_problem
from relxfer.spec.types import ModelSpec, Quantization

# bitsandbytes warns on every start that an optional CPU kernel from the Hugging Face hub (the
# `kernels` package) is missing; its built-in kernel is used instead, with the same results.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

BUILTIN_MODELS = {
    tiny.BUILTIN_ID: tiny.build_tiny_model,
    packaged_gemma.BUILTIN_ID: packaged_gemma.build_gemma_270m,
    **{item.builtin_id: twins.builder(item.builtin_id) for item in twins.TWINS},
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def check_source(model: ModelSpec) -> None:
    """Fail fast, before any run starts, on a model that cannot be found: an unknown built-in
    id, a missing local directory or one without a checkpoint. Hub ids are checked at load."""
    source = model.source
    if source.startswith("builtin:"):
        if source not in BUILTIN_MODELS:
            raise ModelError(f"unknown built-in model {source!r}; known: {', '.join(sorted(BUILTIN_MODELS))}")
        if source in twins.BY_ID:
            twins.check_tokenizer_files(source)
    problem = local_source_problem(source, model.gguf_file)
    if problem:
        raise ModelError(problem)


def resolve_source(model: ModelSpec, cache_dir: Path) -> str:
    """The directory or hub id `from_pretrained` should read; builds a built-in model on demand."""
    check_source(model)
    source = model.source
    if source.startswith("builtin:"):
        return str(BUILTIN_MODELS[source](Path(cache_dir)))
    if is_local_path(source):
        return str(Path(source).expanduser())
    return source


def bnb_config(quantization: Quantization | None, quant_storage: torch.dtype | None = None):
    """A `BitsAndBytesConfig` for the spec's quantization entry, or None for full precision.
    `quant_storage`: the dtype the packed 4-bit weights are stored in (bitsandbytes' default is
    uint8; FSDP shards them like other weights when it equals the compute dtype)."""
    if quantization is None or not quantization.load_in_4bit:
        return None
    q = quantization
    from transformers import BitsAndBytesConfig

    storage = {} if quant_storage is None else {"bnb_4bit_quant_storage": quant_storage}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
        **storage,
    )


def _device_map(requested):
    # accelerate's "auto" would look for GPUs and fall back to CPU anyway; naming the CPU
    # directly keeps CPU-only runs free of offloading heuristics.
    if requested == "auto" and not torch.cuda.is_available():
        return "cpu"
    return requested


def _from_pretrained(auto_class, source: str, model: ModelSpec, **kwargs):
    """`auto_class.from_pretrained` with the model entry's revision, remote-code permission and
    GGUF file; every failure becomes one ModelError."""
    kwargs |= {"revision": model.revision, "trust_remote_code": model.trust_remote_code}
    if model.gguf_file:
        kwargs["gguf_file"] = model.gguf_file
    try:
        with quiet_transformers():
            return auto_class.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every loading failure becomes one ModelError
        raise _load_error(source, model, exc) from exc


def load_tokenizer(model: ModelSpec, cache_dir: Path):
    """The tokenizer of a spec's model entry, with a pad token (EOS when the model has none)."""
    source = resolve_source(model, cache_dir)
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, source, model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    model: ModelSpec,
    quantization: Quantization | None,
    cache_dir: Path,
    adapter_dir: Path | None = None,
    quant_storage: torch.dtype | None = None,
):
    """(model, tokenizer) for a spec's model entry, in eval mode.

    `quantization` (e.g. `Quantization.from_partial({"compute_dtype": "float32"})`) loads the
    linear layers as bitsandbytes `Linear4bit`, on the CPU or on CUDA (`quant_storage`: see
    `bnb_config`). `adapter_dir` puts a saved peft LoRA adapter on top. A direct call builds
    `model` with `ModelSpec.from_partial({"name": ..., "source": ...})`.
    """
    source = resolve_source(model, cache_dir)
    if not is_local_path(source):
        _check_hub_model(source, model)
    tokenizer = load_tokenizer(model, cache_dir)

    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": DTYPES[model.dtype], "device_map": _device_map(model.device_map)}
    quant_config = bnb_config(quantization, quant_storage)
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
    lm = _from_pretrained(AutoModelForCausalLM, source, model, **kwargs)
    if quant_config is not None:
        keep_compute_dtype(lm, quant_config.bnb_4bit_compute_dtype)

    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"adapter directory {str(adapter_dir)!r} has no adapter_config.json")
        from peft import PeftModel

        with warnings.catch_warnings():  # peft reads a property that transformers has deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            lm = PeftModel.from_pretrained(lm, str(adapter_dir), is_trainable=False)
    lm.eval()
    return lm, tokenizer


def keep_compute_dtype(model, compute_dtype) -> None:
    """Make bitsandbytes 4-bit layers compute in `compute_dtype` on the CPU too.

    On CPUs with AVX512-BF16, bitsandbytes' `Linear4bit` switches in eval mode to a fused kernel
    that computes in bfloat16 whatever the compute dtype says. Its results then change with the
    batch shape at bfloat16 precision (seen: 5e-3 in a log-prob between one sequence and the
    same sequence one token longer), so scores would depend on batching. Unless bfloat16 was
    asked for, keep the dequantize-then-matmul path in the requested dtype."""
    if compute_dtype == torch.bfloat16:
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _check_hub_model(source: str, model: ModelSpec) -> None:
    """Read the hub model's config first, so an unreachable or uncached model fails once, early."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise _load_error(source, model, exc) from exc


def _load_error(source: str, model: ModelSpec, exc: Exception) -> ModelError:
    """One line that says what failed and how to fix it."""
    text = str(exc).strip()
    detail = text.splitlines()[0][:300] if text else "no details"
    if is_local_path(source) or source.startswith("builtin:"):
        return ModelError(f"cannot load model from {source!r}: {detail}")
    revision = f" at revision {model.revision!r}" if model.revision else ""
    flag = f" --revision {model.revision}" if model.revision else ""
    return ModelError(
        f"cannot load hub model {source!r}{revision}: the weights must be downloaded and cached first "
        f"(e.g. `hf download {source}{flag}` on a machine with network access, then copy the Hugging Face "
        f"cache or point HF_HOME at it; gated models also need HF_TOKEN) ({type(exc).__name__}: {detail})"
    )
