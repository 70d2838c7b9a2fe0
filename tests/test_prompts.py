"""Prompt presets render byte-exact text (checked against the installed lm-evaluation-harness on
real Belebele rows); the options change the template id; the CoT answer extractor is strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from relxfer.data.belebele import load_belebele
from relxfer.data.items import MCItem
from relxfer.data.prompts import INSTRUCTIONS, PromptBuilder, extract_answer
from relxfer.errors import SpecError
from relxfer.spec.types import ChatTemplateSettings
from tests.support import shared_data
from tests.support.lm_eval_tasks import write_belebele_tasks

pytestmark = pytest.mark.unit

ITEM = MCItem("q#1", "q", "eng_Latn", "The cat sat.", " Where did the cat sit? ", ("mat", "sofa", "roof", "tree"), 0)
V1 = {"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]}
LM_EVAL = {"preset": "lm-eval-belebele", "labels": ["1", "2", "3", "4"]}
BELEBELE = shared_data.BELEBELE
CHAT = ChatTemplateSettings.from_partial({}).to_dict()  # `chat_template: true`, resolved


class TagRenderer:
    """A chat renderer that wraps text in visible tags (the real one: tests/test_chat_formats.py)."""

    end_text = "</assistant>"
    digest = "tags"

    def answer_prompt(self, text: str) -> str:
        return f"<user>{text}</user><assistant>"

    def generation_prompt(self, text: str) -> str:
        return f"<user>{text}</user><assistant>"


def test_relxfer_v1_text():
    builder = PromptBuilder.from_spec(V1)
    assert builder.direct(ITEM) == (
        "Read the passage and answer the question with the number of the correct option.\n\n"
        "Passage: The cat sat.\nQuestion:  Where did the cat sit? \n1. mat\n2. sofa\n3. roof\n4. tree\nAnswer:"
    )
    assert builder.continuations() == [" 1", " 2", " 3", " 4"]
    assert builder.training_example(ITEM) == (builder.direct(ITEM), " 1")


def test_lm_eval_belebele_text_is_the_harness_prompt():
    builder = PromptBuilder.from_spec(LM_EVAL)
    assert (
        builder.direct(ITEM) == "P: The cat sat.\nQ: Where did the cat sit?\nA: mat\nB: sofa\nC: roof\nD: tree\nAnswer:"
    )
    assert builder.continuations() == [" A", " B", " C", " D"]
    assert builder.labels == ("A", "B", "C", "D")  # the preset's letters, whatever the spec says


def test_spec_defaults_for_missing_options():
    builder = PromptBuilder.from_spec({"preset": "relxfer-v1"})
    assert builder.labels == ("1", "2", "3", "4")
    assert (builder.instruction_language, builder.chat_template) == ("en", False)
    assert (
        builder.template_id
        == PromptBuilder.from_spec(V1 | {"instruction_language": "en", "chat_template": False}).template_id
    )


def test_template_id_names_preset_version_and_hash():
    builder = PromptBuilder.from_spec(V1)
    assert builder.template_id.startswith("relxfer-v1@1#") and len(builder.template_id.split("#")[1]) == 12
    assert PromptBuilder.from_spec(LM_EVAL).template_id.startswith("lm-eval-belebele@1#")


@pytest.mark.parametrize(
    "change",
    [
        {"labels": ["A", "B", "C", "D"]},
        {"instruction_language": "target"},
        {"chat_template": CHAT},
        {"chat_template": CHAT | {"template_args": {"enable_thinking": False}}},
        {"chat_template": CHAT | {"system_prompt": "Answer with a number."}},
        {"chat_template": CHAT | {"answer_prefix": "Answer:"}},
        {"chat_template": CHAT | {"date": "2026-12-07"}},
        {"preset": "lm-eval-belebele"},
    ],
)
def test_template_id_changes_with_every_option(change):
    assert PromptBuilder.from_spec(V1 | change).template_id != PromptBuilder.from_spec(V1).template_id


def test_cot_prompt_then_answer_cue():
    builder = PromptBuilder.from_spec(V1)
    cot = builder.cot(ITEM)
    assert cot.endswith("Answer: Let's think step by step.")
    assert builder.after_reasoning(cot, " The cat is on the mat.") == cot + " The cat is on the mat.\nThe answer is"
    assert builder.cot_continuations() == [" 1", " 2", " 3", " 4"]


def test_instruction_in_the_target_language():
    builder = PromptBuilder.from_spec(V1 | {"instruction_language": "target"})
    hebrew = MCItem("q#1", "q", "heb_Hebr", "החתול ישב.", "איפה?", ("א", "ב", "ג", "ד"), 0)
    assert builder.direct(hebrew).startswith(INSTRUCTIONS["relxfer-v1"]["heb_Hebr"] + "\n\nPassage: החתול ישב.\n")
    # English items keep the English instruction, so the English text is unchanged.
    assert builder.direct(ITEM) == PromptBuilder.from_spec(V1).direct(ITEM)
    for code in ("heb_Hebr", "amh_Ethi", "mlt_Latn", "jpn_Jpan", "kor_Hang", "fra_Latn", "arb_Arab", "arz_Arab"):
        assert INSTRUCTIONS["relxfer-v1"][code].strip()


def test_instruction_language_errors_say_how_to_fix():
    builder = PromptBuilder.from_spec(V1 | {"instruction_language": "target"})
    with pytest.raises(
        SpecError, match=r"no relxfer-v1@1 instruction for language 'xxx_Zzzz'.*set prompt.instruction_language to 'en'"
    ):
        builder.direct(MCItem("q#1", "q", "xxx_Zzzz", "p", "q", ("a", "b", "c", "d"), 0))
    with pytest.raises(SpecError, match="lm-eval-belebele@1 has none"):
        PromptBuilder.from_spec(LM_EVAL | {"instruction_language": "target"})
    with pytest.raises(SpecError, match="must be one of 'en', 'target'"):
        PromptBuilder.from_spec(V1 | {"instruction_language": "fr"})


def test_chat_template_wraps_the_user_text_and_drops_the_delimiter():
    builder = PromptBuilder.from_spec(LM_EVAL | {"chat_template": CHAT})
    with pytest.raises(SpecError, match=r"bind it to the model first"):
        builder.direct(ITEM)
    with pytest.raises(SpecError, match=r"resolve it to its settings first"):
        PromptBuilder.from_spec(LM_EVAL | {"chat_template": True})
    chat = builder.bind(TagRenderer())
    plain = PromptBuilder.from_spec(LM_EVAL)
    assert chat.direct(ITEM) == f"<user>{plain.direct(ITEM)}</user><assistant>"
    # As lm-eval with --apply_chat_template: the label opens the assistant turn, no delimiter.
    assert chat.continuations() == ["A", "B", "C", "D"]
    assert chat.cot(ITEM) == f"<user>{plain.direct(ITEM)} Let's think step by step.</user><assistant>"
    assert chat.cot_continuations() == [" A", " B", " C", " D"]  # after "The answer is"
    # What the renderer renders is part of the id: the same settings on another template differ.
    assert chat.template_id != builder.template_id
    assert chat.template_id == builder.bind(TagRenderer()).template_id
    # Training closes the answer as the template closes an assistant message.
    assert builder.training_example(ITEM, TagRenderer()) == (chat.direct(ITEM), "A</assistant>")


def test_an_answer_prefix_keeps_the_delimiter_unless_it_ends_in_whitespace():
    """lm-eval's rule with a gen_prefix: " A" after "Answer:", "A" after "Answer: "."""
    bound = PromptBuilder.from_spec(LM_EVAL | {"chat_template": CHAT | {"answer_prefix": "Answer:"}})
    assert bound.continuations() == [" A", " B", " C", " D"]
    spaced = PromptBuilder.from_spec(LM_EVAL | {"chat_template": CHAT | {"answer_prefix": "Answer: "}})
    assert spaced.continuations() == ["A", "B", "C", "D"]


LABELS = ("1", "2", "3", "4")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The cat is on the mat, so the answer is 1.", 0),
        ("Answer: (3)", 2),
        ("**Answer:** 2", 1),
        ("First I thought the answer is 2, but the answer is 4", 3),
        ("It must be the roof.\n3", 2),
        ("It must be the roof.\n(3).", 2),
        ("answer: 12 cats", None),  # "12" is not a label
        ("the answer is 1.5 metres", None),  # nor is "1.5"
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text, LABELS) == expected


def test_extract_letter_labels_are_case_sensitive():
    letters = ("A", "B", "C", "D")
    assert extract_answer("so the Answer is C", letters) == 2
    assert extract_answer("so the answer is c", letters) is None
    assert extract_answer("The answer is a bit unclear.", letters) is None


# ---------------------------------------------------------------------------------------------
# Byte-exact against the installed lm-evaluation-harness (the `bench` extra)


def lm_eval_requests(task_dir: Path, code: str, limit=None, chat_template=None) -> dict[int, list[tuple[str, str]]]:
    """The harness's loglikelihood requests (context, continuation) per document, zero-shot,
    for the first `limit` documents (all when None)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([f"belebele_local_{code}"], TaskManager(include_path=str(task_dir), include_defaults=False))
    task = task[f"belebele_local_{code}"]
    task.build_all_requests(
        limit=limit, rank=0, world_size=1, apply_chat_template=chat_template is not None, chat_template=chat_template
    )
    requests: dict[int, list[tuple[str, str]]] = {}
    for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        requests.setdefault(instance.doc_id, []).append(tuple(instance.arguments))
    return requests


@pytest.fixture(scope="module")
def belebele_codes(belebele_dir) -> list[str]:
    pytest.importorskip("lm_eval", reason='the `test` extra: pip install -e ".[test]"')
    return sorted(p.stem for p in BELEBELE.glob("*_*.jsonl"))


def test_lm_eval_belebele_preset_is_byte_identical_to_the_harness(belebele_codes, tmp_path):
    """Real Belebele rows (all 900 English ones, the first 120 of each other language): relxfer's
    prompt and continuations equal the harness's loglikelihood requests byte for byte
    (question.strip(), unstripped options, the " " target delimiter, zero-shot context). The
    harness compiles its Jinja template anew for every document (~3 ms), hence the subset."""
    task_dir = write_belebele_tasks(tmp_path, belebele_codes, BELEBELE)
    builder = PromptBuilder.from_spec(LM_EVAL)
    data = load_belebele(belebele_codes, path=BELEBELE)
    checked = 0
    for code in belebele_codes:
        limit = None if code == "eng_Latn" else 120
        requests = lm_eval_requests(task_dir, code, limit=limit)
        items = data.items_by_language[code][:limit]
        assert len(requests) == len(items) == (limit or 900)
        for doc_id, item in enumerate(items):
            ours = [(builder.direct(item), c) for c in builder.continuations()]
            assert [(c.encode(), t.encode()) for c, t in requests[doc_id]] == [
                (c.encode(), t.encode()) for c, t in ours
            ], (code, doc_id)
            checked += 1
    # English has questions with stray whitespace and options with trailing spaces: covered.
    english = data.items_by_language["eng_Latn"]
    assert sum(i.question != i.question.strip() for i in english) == 20
    assert any(o != o.strip() for i in english for o in i.options)
    assert checked == 900 + 120 * (len(belebele_codes) - 1)
