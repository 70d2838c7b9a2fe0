"""relxfer: cross-lingual transfer studies on language models, declared as JSON specs and tracked in MLflow."""

__version__ = "0.1.0"

# Bumped whenever a change in relxfer alters results (scoring, prompts, training); part of every cell key.
RESULT_VERSION = "1"
# Bumped whenever a change alters what fine-tuning produces (for some model) while leaving scoring
# alone; part of every fine-tune key, and so of the fine-tuned evaluations' keys, not the baselines'.
FINETUNE_VERSION = "2"
