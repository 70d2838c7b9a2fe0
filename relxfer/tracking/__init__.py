"""The only package that talks to MLflow: runs, tags, tables and artifacts (client.py), how a
study looks in the MLflow UI (study_view.py), and fine-tune checkpoints mirrored to a run's
artifacts (checkpoint_mirror.py)."""
