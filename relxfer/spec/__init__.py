"""The spec stage: a JSON file read strictly, checked against schemas/spec.schema.json and by
the checks the schema cannot express, into a validated Spec (load.py). Also what a declaration
implies without running anything: the engine kinds (engines.py), memory floors (memory.py) and
the resources a cell asks for (resources.py)."""
