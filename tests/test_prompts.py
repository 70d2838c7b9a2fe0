"""Prompt presets render byte-exact text; the CoT answer extractor is strict."""

from __future__ import annotations

import pytest

from relxfer.data.items import MCItem
from relxfer.prompts import PromptBuilder, extract_answer

ITEM = MCItem("q#1", "q", "eng_Latn", "The cat sat.", " Where did the cat sit? ", ("mat", "sofa", "roof", "tree"), 0)


def test_relxfer_v1_text():
    builder = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]})
    assert builder.direct(ITEM) == (
        "Read the passage and answer the question with the number of the correct option.\n\n"
        "Passage: The cat sat.\nQuestion:  Where did the cat sit? \n1. mat\n2. sofa\n3. roof\n4. tree\nAnswer:"
    )
    assert builder.continuations() == [" 1", " 2", " 3", " 4"]
    assert builder.training_example(ITEM) == (builder.direct(ITEM), " 1")


def test_lm_eval_belebele_text_is_the_harness_prompt():
    builder = PromptBuilder.from_spec({"preset": "lm-eval-belebele", "labels": ["1", "2", "3", "4"]})
    assert builder.direct(ITEM) == "P: The cat sat.\nQ: Where did the cat sit?\nA: mat\nB: sofa\nC: roof\nD: tree\nAnswer:"
    assert builder.continuations() == [" A", " B", " C", " D"]


def test_template_id_names_preset_version_and_hash():
    builder = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]})
    assert builder.template_id.startswith("relxfer-v1@1#") and len(builder.template_id.split("#")[1]) == 12


def test_cot_prompt_then_answer_cue():
    builder = PromptBuilder.from_spec({"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]})
    cot = builder.cot(ITEM)
    assert cot.endswith("Answer: Let's think step by step.")
    assert builder.after_reasoning(cot, " The cat is on the mat.") == cot + " The cat is on the mat.\nThe answer is"


LABELS = ("1", "2", "3", "4")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The cat is on the mat, so the answer is 1.", 0),
        ("Answer: (3)", 2),
        ("First I thought the answer is 2, but the answer is 4", 3),
        ("It must be the roof.\n3", 2),
        ("answer: 12 cats", None),  # "12" is not a label
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text, LABELS) == expected


def test_extract_letter_labels_case_insensitively():
    assert extract_answer("so the Answer is c", ("A", "B", "C", "D")) == 2
