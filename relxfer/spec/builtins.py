"""Names of the built-in models, importable without torch so `relxfer validate` can check them.
`relxfer.models.loading.BUILTIN_MODELS` maps each to its builder (a test keeps the two equal)."""

BUILTIN_MODEL_IDS = (
    "builtin:deepseek-v3-twin",
    "builtin:gemma-3-270m",
    "builtin:gpt-oss-twin",
    "builtin:qwen3-moe-twin",
    "builtin:qwen3-twin",
    "builtin:tiny-llama",
)
