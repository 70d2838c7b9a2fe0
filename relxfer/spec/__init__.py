"""The spec stage: a JSON file read strictly, checked against schemas/spec.schema.json and by
the checks the schema cannot express, into a validated Spec (load.py). The schema is the home of
every default (defaults.py); the filled dict is parsed once into frozen dataclasses and enums
(types.py), which is what every later stage reads. Also what a declaration implies without
running anything: the engine kinds (engines.py), memory floors (memory.py) and the resources a
cell asks for (resources.py)."""
