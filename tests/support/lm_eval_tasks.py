"""lm-evaluation-harness task configs that read Belebele from local files, for comparing relxfer
with the harness on the same data (tests and bench/eval_throughput.py). Needs `lm_eval`
installed (the `test` and `bench` extras); relxfer itself never imports it."""

from __future__ import annotations

import json
from pathlib import Path

# The harness's Belebele prompt with the options numbered 1-4 instead of lettered A-D, and the
# digits as the choices: the labels " 1".." 4" that many tokenizers split into a space and a digit.
DIGIT_LABELS = {
    "doc_to_text": "P: {{flores_passage}}\nQ: {{question.strip()}}\n1: {{mc_answer1}}\n2: {{mc_answer2}}\n"
    "3: {{mc_answer3}}\n4: {{mc_answer4}}\nAnswer:",
    "doc_to_choice": ["1", "2", "3", "4"],
}


def write_belebele_tasks(
    root: Path, languages, belebele_dir: Path, digits: bool = False, gen_prefix: str | None = None
) -> Path:
    """One task config per language, `belebele_local_<code>`: the installed harness's own
    Belebele template (`include`: prompt, choices, metrics) with the data from
    `<belebele_dir>/<code>.jsonl` (`digits`: options and choices 1-4, DIGIT_LABELS;
    `gen_prefix`: the task's `gen_prefix`, which opens the assistant's answer under a chat
    template). Returns `root`, for `TaskManager(include_path=root)`."""
    import lm_eval

    template = Path(lm_eval.__file__).parent / "tasks" / "belebele" / "_default_template_yaml"
    root.mkdir(parents=True, exist_ok=True)
    for code in languages:
        config = {
            "include": str(template),
            "task": f"belebele_local_{code}",
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {
                "data_files": {"test": str(belebele_dir / f"{code}.jsonl")},
                "cache_dir": str(root / "hf"),
            },
            "test_split": "test",
            "fewshot_split": "test",
        } | (DIGIT_LABELS if digits else {})
        if gen_prefix is not None:
            config["gen_prefix"] = gen_prefix
        (root / f"belebele_local_{code}.yaml").write_text(json.dumps(config))  # JSON is YAML
    return root
