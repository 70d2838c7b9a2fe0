"""The real tokenizers and chat templates of the flagship's model families, read from a directory
beside the repository (never copied into it): `qwen3/`, `qwen3-instruct-2507/`, `gpt-oss/` and
`deepseek-v3.1/` (a chat template only).

The directory is `$RELXFER_TOKENIZERS_DIR`, else `../shared/data/tokenizers` relative to the
repository that holds this package. The files are read-only inputs of the built-in twins
(relxfer.models.twins): their content digests enter each twin's recipe hash, so a changed file
builds a new cache entry instead of reusing a stale one.

DeepSeek-V3.1 has no tokenizer file here, only its template. Its twin pairs the template with the
Qwen3 tokenizer plus DeepSeek's own special tokens (`deepseek_tokenizer`): both are byte-level BPE
vocabularies of the same size class (151,669 vs DeepSeek-V3's 128,000 + specials) that split
digits one by one, and Qwen3 already has `<think>` and `</think>` as single tokens, as DeepSeek-V3.1
does, so the template's markers and the labels "1".."4" are single tokens as in the real model.
Token ids differ from DeepSeek's.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from relxfer.data.digest import file_sha256
from relxfer.errors import ModelError

TOKENIZERS_ENV = "RELXFER_TOKENIZERS_DIR"
FOLDERS = ("qwen3", "qwen3-instruct-2507", "gpt-oss", "deepseek-v3.1")

# DeepSeek-V3's special tokens (its tokenizer_config.json), added to the Qwen3 vocabulary in this
# order. Like DeepSeek's tokenizer, encoding with special tokens prepends the BOS.
DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"
DEEPSEEK_SPECIALS = (
    DEEPSEEK_BOS,
    DEEPSEEK_EOS,
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
)
DEEPSEEK_TEMPLATE = "chat_template.jinja"
MODEL_FILES = ("config.json", "generation_config.json")  # the real model's, not the tokenizer's
DEEPSEEK_MAX_LENGTH = 163840  # DeepSeek-V3.1's max_position_embeddings


def tokenizers_dir() -> Path:
    """Where the real tokenizer folders are: `$RELXFER_TOKENIZERS_DIR`, else
    `../shared/data/tokenizers` beside the repository."""
    configured = os.environ.get(TOKENIZERS_ENV)
    if configured:
        return Path(configured).expanduser()
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "tokenizers"


def folder(name: str) -> Path:
    """The folder of one family's files; a one-line ModelError when it is missing."""
    path = tokenizers_dir() / name
    if not path.is_dir() or not any(path.iterdir()):
        raise ModelError(
            f"the real {name} tokenizer files are not at {path}: set {TOKENIZERS_ENV} to the directory holding "
            f"{', '.join(f + '/' for f in FOLDERS)}"
        )
    return path


_digests: dict[tuple, dict[str, str]] = {}  # (folder, its files' names, sizes, mtimes) -> digests


def files_digest(name: str) -> dict[str, str]:
    """sha256 of every file of a family's folder (the LICENSE aside), by file name. Cached while
    the files keep their sizes and mtimes: planning asks once per cell of a twin."""
    base = folder(name)
    files = [p for p in sorted(base.iterdir()) if p.is_file() and p.name != "LICENSE"]
    key = (str(base.resolve()), *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _digests:
        _digests[key] = {p.name: file_sha256(p) for p in files}
    return dict(_digests[key])


def copy_tokenizer_files(name: str, target: Path) -> None:
    """The family's tokenizer files, byte for byte, into a model directory (not its model
    config.json and generation_config.json: a twin writes its own)."""
    for path in sorted(folder(name).iterdir()):
        if path.is_file() and path.name not in MODEL_FILES:
            shutil.copyfile(path, Path(target) / path.name)


def load_family_tokenizer(name: str):
    """The family's tokenizer with its chat template, as `AutoTokenizer` reads the folder."""
    from transformers import AutoTokenizer

    from relxfer.models.build_once import quiet_transformers

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(folder(name))


def deepseek_tokenizer():
    """DeepSeek-V3.1's chat template on the Qwen3 vocabulary with DeepSeek's special tokens (see
    the module docstring): BOS prepended on encoding, EOS `<｜end▁of▁sentence｜>`, which also pads."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    template = (folder("deepseek-v3.1") / DEEPSEEK_TEMPLATE).read_text(encoding="utf-8")
    backend = copy.deepcopy(load_family_tokenizer("qwen3").backend_tokenizer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in DEEPSEEK_SPECIALS])
    bos_id = backend.token_to_id(DEEPSEEK_BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{DEEPSEEK_BOS} $A",
        pair=f"{DEEPSEEK_BOS} $A {DEEPSEEK_BOS} $B",
        special_tokens=[(DEEPSEEK_BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=DEEPSEEK_BOS,
        eos_token=DEEPSEEK_EOS,
        pad_token=DEEPSEEK_EOS,
        additional_special_tokens=list(DEEPSEEK_SPECIALS[2:]),
        chat_template=template,
        model_max_length=DEEPSEEK_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
