"""The plan stage: a Spec expanded into cells with content keys (cells.py), and the study's
data loaded or summarised for it (study_data.py)."""
