"""relxfer: cross-lingual transfer studies on language models, declared as JSON specs and tracked in MLflow."""

__version__ = "0.1.0"

# Bumped whenever a change in relxfer alters results (scoring, prompts, training); part of every cell key.
RESULT_VERSION = "1"
