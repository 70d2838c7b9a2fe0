"""What a built-in model is made of, as one short hash: the recipe that builds it (sizes, seed,
build version and the digests of the files it reads: a twin's real tokenizer and chat template),
or for the packaged Gemma the digest of its published weights. It names the model's cache
directory and enters every cell key of the model, so an edited recipe or tokenizer file re-runs
the cells it changes instead of reusing their results. Read without torch (`relxfer plan`)."""

from __future__ import annotations

from relxfer.errors import ModelError
from relxfer.models import packaged_gemma, tiny, twins


def builtin_recipe_hash(source: str) -> str:
    """The recipe hash of the built-in model `source` (`builtin:...`); a one-line ModelError for
    an unknown id or a twin whose tokenizer files are missing."""
    if source == tiny.BUILTIN_ID:
        return tiny.recipe_hash()
    if source == packaged_gemma.BUILTIN_ID:
        return packaged_gemma.GGUF_SHA256[:12]
    if source in twins.BY_ID:
        return twins.recipe_hash(twins.twin(source))
    known = ", ".join(sorted([tiny.BUILTIN_ID, packaged_gemma.BUILTIN_ID, *twins.BY_ID]))
    raise ModelError(f"unknown built-in model {source!r}; known: {known}")
