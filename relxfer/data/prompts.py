"""Prompt presets: named, versioned templates that turn an item into a prompt and its answer
continuations. Training uses the same prompt with the gold continuation as the completion.

Options (the spec's `prompt` object): the preset, the answer labels, the language of the
instruction (`instruction_language`: "en" or "target", from the fixed table below) and whether
the prompt is wrapped in the model's chat template (`chat_template`). Every option that changes
the rendered text changes `PromptBuilder.template_id`, a tag of every evaluation run.

The chat template belongs to the model, so a builder only applies it once bound to a backend
(`builder.bind(backend.chat)`; `evaluate_items` does this itself). Evaluation code never calls
the tokenizer: the backend renders the chat turn.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from relxfer.data.items import MCItem
from relxfer.errors import SpecError


@dataclass(frozen=True)
class Preset:
    id: str  # name@version; the version changes whenever the rendered text would change
    template: str  # direct prompt; fields: instruction, passage, question, options (rendered)
    option_line: str  # one line per option; fields: label, text
    labels: tuple[str, ...]  # default answer labels
    delimiter: str  # between the prompt and the label (lm-eval's `target_delimiter`)
    cot_cue: str  # appended to the direct prompt to ask for reasoning
    answer_cue: str  # appended after the reasoning before the label is scored
    strip_question: bool = False  # lm-eval's Belebele template renders `question.strip()`
    fixed_labels: bool = False  # the labels are part of the preset; the spec's labels are ignored
    instruction: str = ""  # the English instruction ("" = the preset has none)

    def fields(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


PRESETS = {
    # The paper's style: an instruction, numbered options, the label scored after "Answer:".
    "relxfer-v1": Preset(
        id="relxfer-v1@1",
        template="{instruction}\n\nPassage: {passage}\nQuestion: {question}\n{options}\nAnswer:",
        option_line="{label}. {text}",
        labels=("1", "2", "3", "4"),
        delimiter=" ",
        cot_cue=" Let's think step by step.",
        answer_cue="\nThe answer is",
        instruction="Read the passage and answer the question with the number of the correct option.",
    ),
    # Byte-identical to lm-evaluation-harness 0.4.x's Belebele task (lm_eval/tasks/belebele/
    # _default_template_yaml): doc_to_text "P: {{flores_passage}}\nQ: {{question.strip()}}\n
    # A: {{mc_answer1}}\n...D: {{mc_answer4}}\nAnswer:", doc_to_choice A-D, the default
    # target_delimiter " " (and "" under a chat template, as lm-eval does without a gen_prefix).
    # tests/test_prompts.py compares it with the installed harness on real Belebele rows.
    "lm-eval-belebele": Preset(
        id="lm-eval-belebele@1",
        template="P: {passage}\nQ: {question}\n{options}\nAnswer:",
        option_line="{label}: {text}",
        labels=("A", "B", "C", "D"),
        delimiter=" ",
        cot_cue=" Let's think step by step.",
        answer_cue="\nThe answer is",
        strip_question=True,
        fixed_labels=True,
    ),
}

# ---------------------------------------------------------------------------------------------
# FIXED STRING TABLE: the relxfer-v1 instruction in the languages of the paper (Semitic targets,
# non-Semitic controls, the Arabic training varieties) and of the Belebele files at hand.
# Bump INSTRUCTIONS_VERSION whenever any string changes: the version is part of template_id.
# Translations by the relxfer authors, not by native speakers; review before publishing.
# Written instructions across the Arabic varieties use Modern Standard Arabic, as Belebele's
# own dialectal prompts do not exist and MSA is the usual register for written instructions.
INSTRUCTIONS_VERSION = "instructions@1"
_MSA = "اقرأ النص وأجب عن السؤال برقم الخيار الصحيح."
INSTRUCTIONS: dict[str, dict[str, str]] = {
    "relxfer-v1": {
        "eng_Latn": "Read the passage and answer the question with the number of the correct option.",
        "arb_Arab": _MSA,
        "acm_Arab": _MSA,
        "apc_Arab": _MSA,
        "ars_Arab": _MSA,
        "ary_Arab": _MSA,
        "arz_Arab": _MSA,
        "heb_Hebr": "קראו את הקטע וענו על השאלה באמצעות מספר האפשרות הנכונה.",
        "amh_Ethi": "ምንባቡን ያንብቡ እና ጥያቄውን በትክክለኛው አማራጭ ቁጥር ይመልሱ።",
        "mlt_Latn": "Aqra s-silta u wieġeb il-mistoqsija bin-numru tal-għażla t-tajba.",
        "jpn_Jpan": "文章を読んで、正しい選択肢の番号で質問に答えてください。",
        "kor_Hang": "지문을 읽고 정답 선택지의 번호로 질문에 답하십시오.",
        "fra_Latn": "Lisez le passage et répondez à la question avec le numéro de la bonne option.",
        "tur_Latn": "Metni okuyun ve soruyu doğru seçeneğin numarasıyla yanıtlayın.",
        "zho_Hans": "阅读文章，并用正确选项的编号回答问题。",
    },
}
INSTRUCTION_LANGUAGES = ("en", "target")

ChatFn = Callable[[str], str]


@dataclass(frozen=True)
class PromptBuilder:
    preset: Preset
    labels: tuple[str, ...]
    instruction_language: str = "en"  # "en" or "target" (the item's language)
    chat_template: bool = False
    # The backend's chat renderer (user text -> templated prompt); set by `bind`.
    chat: ChatFn | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.instruction_language not in INSTRUCTION_LANGUAGES:
            raise SpecError(
                f"prompt.instruction_language must be one of {', '.join(map(repr, INSTRUCTION_LANGUAGES))}, "
                f"got {self.instruction_language!r}"
            )
        if self.instruction_language == "target" and not self.preset.instruction:
            raise SpecError(
                f"prompt.instruction_language 'target' needs a preset with an instruction; "
                f"{self.preset.id} has none (use 'en' or the preset 'relxfer-v1')"
            )

    @classmethod
    def from_spec(cls, prompt: dict) -> PromptBuilder:
        """A builder for the spec's `prompt` object (missing options take the schema defaults)."""
        name = prompt.get("preset", "relxfer-v1")
        if name not in PRESETS:
            raise SpecError(f"unknown prompt preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        preset = PRESETS[name]
        # lm-eval's Belebele letters are part of the preset; other presets take the spec's labels.
        labels = preset.labels if preset.fixed_labels else tuple(prompt.get("labels", preset.labels))
        return cls(
            preset,
            labels,
            instruction_language=prompt.get("instruction_language", "en"),
            chat_template=bool(prompt.get("chat_template", False)),
        )

    def bind(self, chat: ChatFn | None) -> PromptBuilder:
        """This builder with the model's chat renderer (needed when `chat_template` is on)."""
        return replace(self, chat=chat)

    # -- identity -----------------------------------------------------------------------------

    @property
    def template_id(self) -> str:
        """name@version#hash, the hash over everything that shapes the rendered text."""
        options = {
            "preset": self.preset.fields(),
            "labels": list(self.labels),
            "instruction_language": self.instruction_language,
            "chat_template": self.chat_template,
        }
        if self.instruction_language == "target":
            options["instructions"] = [INSTRUCTIONS_VERSION, INSTRUCTIONS.get(self.preset.id.split("@")[0], {})]
        blob = json.dumps(options, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return f"{self.preset.id}#{hashlib.sha256(blob).hexdigest()[:12]}"

    # -- rendering ----------------------------------------------------------------------------

    def instruction(self, language: str) -> str:
        """The preset's instruction in English or in `language` (per `instruction_language`)."""
        if self.instruction_language == "en" or not self.preset.instruction:
            return self.preset.instruction
        table = INSTRUCTIONS.get(self.preset.id.split("@")[0], {})
        if language not in table:
            raise SpecError(
                f"no {self.preset.id} instruction for language {language!r} in {INSTRUCTIONS_VERSION} "
                f"(known: {', '.join(sorted(table))}); set prompt.instruction_language to 'en'"
            )
        return table[language]

    def user_text(self, item: MCItem) -> str:
        """The prompt text before any chat template."""
        options = "\n".join(
            self.preset.option_line.format(label=label, text=text) for label, text in zip(self.labels, item.options)
        )
        question = item.question.strip() if self.preset.strip_question else item.question
        return self.preset.template.format(
            instruction=self.instruction(item.language), passage=item.passage, question=question, options=options
        )

    def _wrap(self, text: str) -> str:
        if not self.chat_template:
            return text
        if self.chat is None:
            raise SpecError(
                "prompt.chat_template is on but this prompt builder has no chat renderer: "
                "bind it to the model first (builder.bind(backend.chat))"
            )
        return self.chat(text)

    def direct(self, item: MCItem) -> str:
        """The direct prompt as the model sees it (chat-templated when `chat_template` is on)."""
        return self._wrap(self.user_text(item))

    def continuations(self) -> list[str]:
        """The scored continuations after `direct`: delimiter + label. Under a chat template the
        label starts the assistant's turn, so there is no delimiter (lm-eval's rule)."""
        delimiter = "" if self.chat_template else self.preset.delimiter
        return [delimiter + label for label in self.labels]

    def cot(self, item: MCItem) -> str:
        """The prompt that asks for reasoning (the cue ends the user turn under a chat template)."""
        return self._wrap(self.user_text(item) + self.preset.cot_cue)

    def after_reasoning(self, cot_prompt: str, reasoning: str) -> str:
        """The CoT prompt, the generated reasoning and the answer cue, before the label."""
        return cot_prompt + reasoning + self.preset.answer_cue

    def cot_continuations(self) -> list[str]:
        """The scored continuations after `after_reasoning` (the answer cue ends mid-sentence)."""
        return [self.preset.delimiter + label for label in self.labels]

    def training_example(self, item: MCItem, chat: ChatFn | None = None) -> tuple[str, str]:
        """(prompt, gold continuation) for fine-tuning: exactly what evaluation scores."""
        builder = self.bind(chat) if chat is not None else self
        return builder.direct(item), builder.continuations()[item.gold]


# ---------------------------------------------------------------------------------------------
# Versioned answer extractor for generated reasoning. Bump the version whenever what it accepts
# changes: it is logged with every CoT record.
#   1. The last "answer is X" / "answer: X" (the word "answer" in any case, optionally bold or
#      parenthesised label) wins. The label must match exactly (case-sensitive), so with labels
#      A-D "the answer is a bit unclear" is not read as A, and must not run on into a word or a
#      number ("answer: 12", "answer is 1.5").
#   2. Otherwise a lone label on the final non-empty line ("3", "(3)", "3.").
#   3. Otherwise a parse failure (None): it never earns chance credit.
EXTRACTOR_VERSION = "answer-extractor@2"


def extract_answer(text: str, labels: tuple[str, ...]) -> int | None:
    """Index of the label the generated text commits to, or None when it commits to none."""
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    cue = re.compile(rf"(?i:\banswer)(?:\s+(?i:is))?\s*[:\-]?\s*[*_]*\s*\(?\s*({alternatives})\s*\)?(?![\w]|[.,]\d)")
    matches = cue.findall(text)
    if matches:
        return labels.index(matches[-1])
    lines = [line.strip().strip("*.):(").strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[-1] in labels:
        return labels.index(lines[-1])
    return None
