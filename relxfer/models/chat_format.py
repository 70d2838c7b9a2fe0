"""A model's chat template with the spec's settings (`prompt.chat_template` or the model's own),
rendered on its Hugging Face tokenizer: the prompt up to where the model writes its answer, the
generation prompt for chain of thought, and the end-of-message text that closes a training
example. No torch here: training data are rendered before a model is loaded.

Where the label is scored: lm-evaluation-harness 0.4.13 with `--apply_chat_template` and a
`gen_prefix` renders the prefix as an assistant message with `continue_final_message=True`, so
each template writes its own header for a final answer (Qwen3 `<|im_start|>assistant\\n<think>
\\n\\n</think>\\n\\n`, gpt-oss `<|start|>assistant<|channel|>final<|message|>`, DeepSeek-V3.1
`<｜Assistant｜></think>`). The answer prompt is rendered the same way, with the settings'
`answer_prefix` as that message ("" by default: the label opens the answer).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jinja2 import TemplateError

from relxfer.data.prompts import ChatSettings, PromptBuilder
from relxfer.errors import ModelError, SpecError
from relxfer.models.reasoning import ReasoningMarkers
from relxfer.spec.types import ModelSpec, Spec, chat_settings

# Variables transformers itself passes to every template: not template arguments.
RESERVED_VARIABLES = frozenset(
    {"messages", "add_generation_prompt", "tools", "documents", "strftime_now", "raise_exception", "bos_token"}
)
# A probe rendered once per format: its digest names the rendered text in the template id.
PROBE_TEXT = "Passage: probe\nQuestion: probe?\n1. a\n2. b\nAnswer:"
# A stand-in message content, to find what a template writes around a message.
_MARK = "RELXFER-MESSAGE-MARK"


def template_source(tokenizer, name: str = "model") -> str:
    """The tokenizer's chat template text (one template; a named set is not supported)."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default")
    if not isinstance(source, str) or not source:
        raise ModelError(f"model {name!r} has no chat template; set its chat_template to false")
    return source


def template_variables(source: str) -> frozenset[str]:
    """The variables a template reads from its caller (Jinja's own analysis of its source)."""
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    try:
        return frozenset(meta.find_undeclared_variables(env.parse(source)))
    except TemplateError as exc:  # the template is the model's, not ours
        raise ModelError(f"the chat template does not parse: {exc}") from None


def fixed_date_macro(date: str) -> str:
    """A Jinja macro that shadows transformers' `strftime_now` with a fixed date, so a template
    that stamps today's date (gpt-oss) renders the same text on every day."""
    day = datetime.date.fromisoformat(date)
    fields = {d: day.strftime(d) for d in ("%Y", "%y", "%m", "%d", "%B", "%b", "%A", "%a", "%j")}
    fields |= {"%H": "00", "%M": "00", "%S": "00"}
    chain = "".join(f" | replace({k!r}, {v!r})" for k, v in fields.items())
    return "{%- macro strftime_now(format) -%}{{ format" + chain + " }}{%- endmacro -%}"


@dataclass(frozen=True)
class ChatFormat:
    """`settings` (a resolved `ChatTemplateSettings` dict) applied to `tokenizer`'s template.
    `add_bos_token`: encoding adds the BOS itself, so one the template writes is dropped."""

    tokenizer: Any = field(repr=False)
    settings: ChatSettings
    add_bos_token: bool = True
    name: str = "model"

    # -- the template -------------------------------------------------------------------------

    @cached_property
    def source(self) -> str:
        source = template_source(self.tokenizer, self.name)
        if "strftime_now" in source:
            return fixed_date_macro(self.settings["date"]) + source
        return source

    def _messages(self, text: str, answer: str | None) -> list[dict]:
        messages = []
        if self.settings.get("system_prompt") is not None:
            messages.append({"role": "system", "content": self.settings["system_prompt"]})
        messages.append({"role": "user", "content": text})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return messages

    def _render(self, messages: list[dict], **kwargs) -> str:
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.source,
                tokenize=False,
                **dict(self.settings.get("template_args") or {}),
                **kwargs,
            )
        except (ValueError, TypeError, KeyError, TemplateError) as exc:  # the template's own refusal
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"model {self.name!r}: its chat template cannot render this prompt: {detail}") from None
        bos = self.tokenizer.bos_token
        if self.add_bos_token and bos and rendered.startswith(bos):
            rendered = rendered[len(bos) :]
        return rendered

    # -- what evaluation and training see -----------------------------------------------------

    def answer_prompt(self, text: str) -> str:
        """`text` as the user turn, then the assistant's final message opened as the template
        writes it, ending with the answer prefix: the label is scored right after."""
        return self._render(self._messages(text, self.settings.get("answer_prefix", "")), continue_final_message=True)

    def generation_prompt(self, text: str) -> str:
        """`text` as the user turn, ending where the assistant's reply begins (chain of thought:
        the model writes its reasoning and its answer the way its family does)."""
        return self._render(self._messages(text, None), add_generation_prompt=True)

    @cached_property
    def answer_tail(self) -> str:
        """What follows the user's text in the answer prompt: the end of the user turn, the
        header of the final answer and the answer prefix."""
        whole = self.answer_prompt(_MARK)
        return whole[whole.rfind(_MARK) + len(_MARK) :]

    def _single_id(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return int(ids[0]) if len(ids) == 1 else None

    def _ids(self, text: str) -> tuple[int, ...]:
        return tuple(int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)) if text else ()

    @cached_property
    def reasoning(self) -> ReasoningMarkers:
        """How this family marks reasoning in a reply to the generation prompt (see
        relxfer.models.reasoning): harmony channels, a `<think>` block the prompt leaves open or
        the model may open, or none."""
        prompt = self.generation_prompt(PROBE_TEXT)
        harmony = all(self._single_id(t) is not None for t in ("<|channel|>", "<|start|>", "<|end|>", "<|message|>"))
        if harmony and prompt.endswith("<|start|>assistant"):
            return ReasoningMarkers(
                "harmony",
                close_ids=self._ids("<|end|>"),
                reopen_ids=self._ids("<|start|>assistant"),
                answer_ids=self._ids("<|channel|>final<|message|>"),
            )
        think = self._single_id("<think>") is not None and self._single_id("</think>") is not None
        if think and not prompt.rstrip().endswith("</think>"):
            tail = self.answer_tail
            after_close = tail[tail.rfind("</think>") + len("</think>") :] if "</think>" in tail else tail
            return ReasoningMarkers(
                "think",
                open_ids=self._ids("<think>"),
                close_ids=self._ids("</think>"),
                answer_ids=self._ids(after_close),
                before_close_ids=self._ids("\n"),
                opened_in_prompt=prompt.rstrip().endswith("<think>"),
            )
        return ReasoningMarkers("plain")

    @cached_property
    def end_ids(self) -> tuple[int, ...]:
        """Ids that end an answer: the end-of-message token, EOS, and harmony's other ends."""
        ends = {self._single_id(self.end_text), self.tokenizer.eos_token_id}
        if self.reasoning.kind == "harmony":
            ends |= {self._single_id(t) for t in ("<|return|>", "<|end|>", "<|call|>")}
        return tuple(sorted(int(e) for e in ends if e is not None))

    @cached_property
    def end_text(self) -> str:
        """The text the template writes after an assistant message's content, without trailing
        whitespace: the token the model ends its answer with (`<|im_end|>`, `<|return|>`,
        `<｜end▁of▁sentence｜>`). A training example's completion ends with it."""
        rendered = self._render(self._messages("x", _MARK))
        tail = rendered[rendered.rfind(_MARK) + len(_MARK) :].rstrip()
        return tail or (self.tokenizer.eos_token or "")

    @cached_property
    def digest(self) -> str:
        """A hash of what this format renders (a probe's answer prompt, its generation prompt and
        the end text): it changes whenever the rendered text would, also with the same settings
        (another template under a floating revision)."""
        blob = json.dumps(
            [self.answer_prompt(PROBE_TEXT), self.generation_prompt(PROBE_TEXT), self.end_text], ensure_ascii=False
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    # -- bad input ----------------------------------------------------------------------------

    def check(self, where: str) -> None:
        """Refuse, before anything runs, a format this model cannot render: a template argument
        its template does not read, an answer prefix its tokenizer cannot encode, a template
        that cannot continue a final assistant message. `where`: the setting's JSON pointer."""
        variables = template_variables(template_source(self.tokenizer, self.name))
        for arg in self.settings.get("template_args") or {}:
            if arg in RESERVED_VARIABLES or arg not in variables:
                known = sorted(v for v in variables - RESERVED_VARIABLES if not v.startswith("_"))
                raise SpecError(
                    f"{where}/template_args: {arg!r} is not an argument of model {self.name!r}'s chat template "
                    f"(it reads: {', '.join(known) or 'none'})"
                )
        prefix = self.settings.get("answer_prefix", "")
        if prefix:
            ids = self.tokenizer.encode(prefix, add_special_tokens=False)
            unk = self.tokenizer.unk_token_id
            if (unk is not None and unk in ids) or self.tokenizer.decode(ids) != prefix:
                raise SpecError(
                    f"{where}/answer_prefix: model {self.name!r}'s tokenizer cannot encode {prefix!r} "
                    f"(it decodes back as {self.tokenizer.decode(ids)!r})"
                )
        try:
            self.answer_prompt(PROBE_TEXT)
        except ModelError as exc:
            raise SpecError(
                f"{where}: model {self.name!r}'s chat template cannot continue a final assistant message, "
                f"so there is no place to score the label ({exc})"
            ) from None


def prompt_builder(spec: Spec, model: ModelSpec, tokenizer: Any = None, add_bos_token: bool = True) -> PromptBuilder:
    """The prompt builder of `model` in `spec`: its own prompt format, bound to `tokenizer`'s
    chat template when the format is one and a tokenizer is given (evaluation binds the
    backend's own when it is not)."""
    settings = chat_settings(spec.chat_template(model))
    chat = None if settings is None else settings.to_dict()
    # The model's own format wins: raw completion for it, whatever the spec-level default says.
    prompt = spec.prompt.to_dict() if settings is not None else {**spec.prompt.to_dict(), "chat_template": False}
    builder = PromptBuilder.from_spec(prompt, chat)
    if chat is not None and tokenizer is not None:
        builder = builder.bind(ChatFormat(tokenizer, chat, add_bos_token, model.name))
    return builder
