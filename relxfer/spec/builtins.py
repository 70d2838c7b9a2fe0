"""Names of the built-in models, importable without torch so `relxfer validate` can check them.
`relxfer.models.loading.BUILTIN_MODELS` maps each to its builder (a test keeps the two equal)."""

BUILTIN_MODEL_IDS = ("builtin:gemma-3-270m", "builtin:tiny-llama")
