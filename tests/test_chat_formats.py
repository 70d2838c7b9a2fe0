"""Each flagship family's prompt format on its real tokenizer and chat template
(../shared/data/tokenizers; no weights): where the label is scored (the rendered prompt's ending
and the first scored token id), how a training example ends, how reasoning is split from the
answer and closed when the budget cuts it, and the formats refused before anything runs."""

from __future__ import annotations

import datetime
import json

import pytest

from relxfer.data.items import MCItem
from relxfer.data.prompts import PromptBuilder
from relxfer.errors import SpecError
from relxfer.evaluate.loop import encode_requests, reasoning_budget
from relxfer.models.chat_format import ChatFormat, template_variables
from relxfer.models.reasoning import THINKING_BUDGET, split_generation
from relxfer.models.tokenization import TokenizerMethods
from relxfer.spec.types import ChatTemplateSettings, CotSpec
from tests.support import shared_data

pytestmark = pytest.mark.unit

ITEM = MCItem("q#1", "q", "eng_Latn", "The cat sat.", "Where did the cat sit?", ("mat", "sofa", "roof", "tree"), 1)
V1 = {"preset": "relxfer-v1", "labels": ["1", "2", "3", "4"]}
DEFAULTS = ChatTemplateSettings.from_partial({}).to_dict()
THINKING_OFF = DEFAULTS | {"template_args": {"enable_thinking": False}}


def tokenizer(folder: str):
    from transformers import AutoTokenizer

    path = shared_data.need(shared_data.TOKENIZERS / folder, f"the {folder} tokenizer")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def qwen3():
    return tokenizer("qwen3")


@pytest.fixture(scope="module")
def qwen3_2507():
    return tokenizer("qwen3-instruct-2507")


@pytest.fixture(scope="module")
def gpt_oss():
    return tokenizer("gpt-oss")


@pytest.fixture(scope="module")
def deepseek():
    """DeepSeek-V3.1's template on Qwen3-2507's tokenizer: no DeepSeek tokenizer file exists
    here, so `<｜Assistant｜>` and `<｜end▁of▁sentence｜>` are plain text on it."""
    template = shared_data.need(shared_data.TOKENIZERS / "deepseek-v3.1" / "chat_template.jinja", "DeepSeek's template")
    tok = tokenizer("qwen3-instruct-2507")
    tok.chat_template = template.read_text(encoding="utf-8")
    return tok


class Methods(TokenizerMethods):
    """The tokenization every backend shares (local, model server, Tinker), on a tokenizer alone."""

    def __init__(self, tok, name: str):
        self.tokenizer, self.add_bos_token, self.name = tok, True, name


def bound(tok, settings, name="model") -> tuple[PromptBuilder, Methods]:
    methods = Methods(tok, name)
    builder = PromptBuilder.from_spec(V1, settings)
    return builder.bind(methods.chat_format(settings)), methods


def first_scored(builder: PromptBuilder, methods: Methods) -> tuple[list[int], list[list[int]]]:
    """(the prompt's last ids, each label's continuation ids) exactly as evaluation encodes them."""
    contexts, conts = encode_requests(methods, [builder.direct(ITEM)], builder.continuations())
    return contexts[0][-3:], conts[0]


# --- where the label is scored ---------------------------------------------------------------


def test_qwen3_hybrid_thinking_off_scores_after_the_empty_think_block(qwen3):
    builder, methods = bound(qwen3, THINKING_OFF, "qwen3-8b")
    assert builder.direct(ITEM).endswith("Answer:<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    last, labels = first_scored(builder, methods)
    # As lm-eval splits it: the header's trailing "\n\n" (271) moves onto every label, so the
    # first scored token is 271, shared by all labels, then the digit ("1".."4" = 16..19).
    assert last == [151667, 271, 151668]  # <think> "\n\n" </think>
    assert labels == [[271, 16], [271, 17], [271, 18], [271, 19]]
    assert builder.training_example(ITEM)[1] == "2<|im_end|>"
    prompt, completion = builder.training_example(ITEM)
    assert (prompt + completion).endswith("<think>\n\n</think>\n\n2<|im_end|>")


def test_qwen3_hybrid_without_arguments_still_scores_where_the_final_answer_goes(qwen3):
    """A final assistant message is rendered with its (empty) think block whatever
    `enable_thinking` says: the label never lands where the model would open `<think>`."""
    builder, _ = bound(qwen3, DEFAULTS)
    assert builder.direct(ITEM).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # The generation prompt (chain of thought) leaves the thinking to the model.
    assert builder.cot(ITEM).endswith("step by step.<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_instruct_2507(qwen3_2507):
    builder, methods = bound(qwen3_2507, DEFAULTS)
    assert builder.direct(ITEM).endswith("Answer:<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    last, labels = first_scored(builder, methods)
    assert last == [151667, 271, 151668] and labels[0] == [271, 16]
    assert builder.training_example(ITEM)[1] == "2<|im_end|>"


def test_gpt_oss_scores_in_the_final_channel_with_a_fixed_date(gpt_oss):
    builder, methods = bound(gpt_oss, DEFAULTS, "gpt-oss-20b")
    prompt = builder.direct(ITEM)
    assert prompt.endswith("Answer:<|end|><|start|>assistant<|channel|>final<|message|>")
    assert "Current date: 2025-01-01\n" in prompt
    assert datetime.date.today().isoformat() not in prompt or datetime.date.today().isoformat() == "2025-01-01"
    last, labels = first_scored(builder, methods)
    assert last == [200005, 17196, 200008]  # <|channel|> final <|message|>
    assert labels == [[16], [17], [18], [19]]
    prompt, completion = builder.training_example(ITEM)
    assert (prompt + completion).endswith("<|channel|>final<|message|>2<|return|>")
    other_day, _ = bound(gpt_oss, DEFAULTS | {"date": "2026-12-07"})
    assert "Current date: 2026-12-07\n" in other_day.direct(ITEM)
    assert other_day.template_id != builder.template_id


def test_gpt_oss_reasoning_effort_and_system_prompt_reach_the_template(gpt_oss):
    builder, _ = bound(gpt_oss, DEFAULTS | {"template_args": {"reasoning_effort": "low"}, "system_prompt": "Be brief."})
    prompt = builder.direct(ITEM)
    assert "Reasoning: low\n" in prompt
    # gpt-oss renders a system message as the developer's instructions.
    assert "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>" in prompt


def test_deepseek_v31_template_on_another_tokenizer(deepseek):
    builder, methods = bound(deepseek, DEFAULTS)
    assert builder.direct(ITEM).endswith("Answer:<｜Assistant｜></think>")
    last, labels = first_scored(builder, methods)
    assert last[-1] == 151668 and labels[0] == [16]  # this tokenizer's </think>, then "1"
    assert builder.training_example(ITEM)[1] == "2<｜end▁of▁sentence｜>"
    thinking, _ = bound(deepseek, DEFAULTS | {"template_args": {"thinking": True}})
    assert thinking.cot(ITEM).endswith("<｜Assistant｜><think>")
    assert thinking.direct(ITEM).endswith("<｜Assistant｜></think>")  # the template's final answer


def test_an_answer_prefix_is_lm_evals_gen_prefix(qwen3):
    """With a gen_prefix lm-eval renders it as the assistant's message, continued; the label
    then follows the preset's delimiter: " 2" is [220, 17] on Qwen3."""
    builder, methods = bound(qwen3, THINKING_OFF | {"answer_prefix": "Answer:"})
    assert builder.direct(ITEM).endswith("<think>\n\n</think>\n\nAnswer:")
    last, labels = first_scored(builder, methods)
    assert last[-1] == ids(qwen3, "Answer:")[-1] and labels[1] == [220, 17]


def test_the_template_id_hashes_what_is_rendered(qwen3, qwen3_2507, gpt_oss):
    ids = {
        bound(qwen3, THINKING_OFF)[0].template_id,
        bound(qwen3, DEFAULTS)[0].template_id,
        bound(gpt_oss, DEFAULTS)[0].template_id,
        bound(qwen3, DEFAULTS | {"system_prompt": "x"})[0].template_id,
    }
    assert len(ids) == 4
    # The same settings on the same rendering give the same id, also across tokenizer objects.
    assert bound(qwen3, DEFAULTS)[0].template_id == bound(tokenizer("qwen3"), DEFAULTS)[0].template_id


def test_template_variables_come_from_the_template_source(qwen3, gpt_oss, deepseek):
    assert "enable_thinking" in template_variables(qwen3.chat_template)
    assert {"reasoning_effort", "model_identity"} <= template_variables(gpt_oss.chat_template)
    assert "thinking" in template_variables(deepseek.chat_template)


# --- bad input -------------------------------------------------------------------------------


def test_an_argument_the_template_does_not_read_is_refused(qwen3, qwen3_2507):
    with pytest.raises(SpecError, match=r"^/prompt/chat_template/template_args: 'thinking' is not an argument"):
        ChatFormat(qwen3, DEFAULTS | {"template_args": {"thinking": False}}, name="qwen3").check(
            "/prompt/chat_template"
        )
    # Qwen3-2507's template has no thinking switch at all.
    with pytest.raises(SpecError, match=r"'enable_thinking' is not an argument of model 'q'"):
        ChatFormat(qwen3_2507, THINKING_OFF, name="q").check("/models/1/chat_template")
    ChatFormat(qwen3, THINKING_OFF).check("/prompt/chat_template")  # a real argument passes


def test_a_prefix_the_tokenizer_cannot_encode_is_refused():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level tokenizer that knows only a few words: anything else is its unknown token.
    vocab = {"[UNK]": 0, "Answer": 1, ":": 2, "1": 3}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    ChatFormat(tok, DEFAULTS | {"answer_prefix": "Answer:"}).check("/prompt/chat_template")
    with pytest.raises(SpecError, match=r"answer_prefix: model 'model'.s tokenizer cannot encode 'Réponse:'"):
        ChatFormat(tok, DEFAULTS | {"answer_prefix": "Réponse:"}).check("/prompt/chat_template")


def test_a_template_that_cannot_continue_a_final_assistant_message_is_refused(qwen3):
    import copy

    tok = copy.deepcopy(qwen3)
    # Writes every assistant message as a fixed text: the answer has no place to go.
    tok.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}<reply>{% else %}{{ m.content }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<reply>{% endif %}"
    )
    with pytest.raises(SpecError, match=r"cannot continue a final assistant message"):
        ChatFormat(tok, DEFAULTS, name="odd").check("/models/0/chat_template")


# --- chain of thought on token ids -------------------------------------------------------------


def ids(tok, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def test_qwen3_reasoning_splits_at_think_close(qwen3):
    fmt = Methods(qwen3, "q").chat_format(DEFAULTS)
    markers = fmt.reasoning
    assert markers.kind == "think" and not markers.opened_in_prompt
    generated = ids(qwen3, "<think>\nThe cat sat on the mat.\n</think>\n\nThe answer is 1.<|im_end|>")
    split = split_generation(markers, generated, fmt.end_ids)
    assert split is not None and not split.truncated
    assert qwen3.decode(list(split.reasoning_ids)) == "\nThe cat sat on the mat.\n"
    assert qwen3.decode(list(split.answer_ids)) == "The answer is 1."
    # The label is scored after </think> and the header the template writes after it.
    assert qwen3.decode(list(split.context_tail)).endswith("mat.\n</think>\n\n")


def test_qwen3_reasoning_cut_by_the_budget_is_closed_and_recorded(qwen3):
    fmt = Methods(qwen3, "q").chat_format(DEFAULTS)
    generated = ids(qwen3, "<think>\nThe passage says the cat")
    split = split_generation(fmt.reasoning, generated, fmt.end_ids)
    assert split is not None and split.truncated and split.answer_ids == ()
    assert qwen3.decode(list(split.context_tail)) == "<think>\nThe passage says the cat\n</think>\n\n"
    assert list(split.context_tail[-2:]) == [151668, 271]


def test_qwen3_thinking_off_and_a_reply_without_think_are_plain_text(qwen3, qwen3_2507):
    off = Methods(qwen3, "q").chat_format(THINKING_OFF)
    assert off.reasoning.kind == "plain"  # the prompt closes the think block itself
    fmt = Methods(qwen3_2507, "q").chat_format(DEFAULTS)
    assert split_generation(fmt.reasoning, ids(qwen3_2507, "The answer is 2."), fmt.end_ids) is None


def test_gpt_oss_harmony_channels(gpt_oss):
    fmt = Methods(gpt_oss, "g").chat_format(DEFAULTS)
    markers = fmt.reasoning
    assert markers.kind == "harmony"
    generated = ids(
        gpt_oss,
        "<|channel|>analysis<|message|>The passage says beta.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The answer is 2.<|return|>",
    )
    split = split_generation(markers, generated, fmt.end_ids)
    assert split is not None and not split.truncated
    assert gpt_oss.decode(list(split.reasoning_ids)) == "The passage says beta."
    assert gpt_oss.decode(list(split.answer_ids)) == "The answer is 2."
    assert gpt_oss.decode(list(split.context_tail)).endswith("<|start|>assistant<|channel|>final<|message|>")


@pytest.mark.parametrize(
    "cut",
    [
        "<|channel|>analysis<|message|>The passage says",
        "<|channel|>analysis<|message|>The passage says<|end|>",
        "<|channel|>analysis<|message|>The passage says<|end|><|start|>assistant",
    ],
)
def test_gpt_oss_analysis_cut_by_the_budget_is_closed_into_the_final_channel(gpt_oss, cut):
    fmt = Methods(gpt_oss, "g").chat_format(DEFAULTS)
    split = split_generation(fmt.reasoning, ids(gpt_oss, cut), fmt.end_ids)
    assert split is not None and split.truncated
    assert gpt_oss.decode(list(split.reasoning_ids)) == "The passage says"
    assert gpt_oss.decode(list(split.context_tail)) == (
        "<|channel|>analysis<|message|>The passage says<|end|><|start|>assistant<|channel|>final<|message|>"
    )


def test_deepseek_thinking_opens_the_block_in_the_prompt(deepseek):
    fmt = Methods(deepseek, "d").chat_format(DEFAULTS | {"template_args": {"thinking": True}})
    assert fmt.reasoning.kind == "think" and fmt.reasoning.opened_in_prompt
    split = split_generation(fmt.reasoning, ids(deepseek, "Beta, so 2.</think>2"), fmt.end_ids)
    assert split is not None and not split.truncated and deepseek.decode(list(split.answer_ids)) == "2"
    cut = split_generation(fmt.reasoning, ids(deepseek, "Beta, so"), fmt.end_ids)
    assert cut is not None and cut.truncated and deepseek.decode(list(cut.context_tail)) == "Beta, so\n</think>"
    assert Methods(deepseek, "d").chat_format(DEFAULTS).reasoning.kind == "plain"  # non-thinking default


def test_cot_scores_the_labels_where_the_direct_prompt_does(qwen3):
    """After `</think>` the labels continue as in the direct condition: "\n\n2" after `</think>`."""
    from relxfer.evaluate.loop import without_moved_whitespace

    fmt = Methods(qwen3, "q").chat_format(DEFAULTS)
    split = split_generation(fmt.reasoning, ids(qwen3, "<think>\nMat.\n</think>\n\n1"), fmt.end_ids)
    assert split is not None
    labels = [[271, 16], [271, 17], [271, 18], [271, 19]]
    tail = without_moved_whitespace(list(split.context_tail), labels)
    assert tail[-1] == 151668 and qwen3.decode(tail + labels[1]).endswith("Mat.\n</think>\n\n2")
    assert without_moved_whitespace([5, 200008], [[16], [17]]) == [5, 200008]  # nothing moved


def test_the_reasoning_budget(qwen3, gpt_oss):
    cot = CotSpec(max_new_tokens=256, stop=("\n\n",))
    assert reasoning_budget(bound(qwen3, DEFAULTS)[0], cot) == THINKING_BUDGET
    assert reasoning_budget(bound(gpt_oss, DEFAULTS)[0], cot) == THINKING_BUDGET
    assert reasoning_budget(bound(qwen3, THINKING_OFF)[0], cot) == 256
    assert reasoning_budget(bound(qwen3, DEFAULTS | {"reasoning_budget": 1000})[0], cot) == 1000
    assert reasoning_budget(PromptBuilder.from_spec(V1), cot) == 256


def test_settings_are_json_and_resolve_from_true():
    assert json.loads(json.dumps(DEFAULTS)) == {
        "template_args": {},
        "system_prompt": None,
        "answer_prefix": "",
        "date": "2025-01-01",
        "reasoning_budget": None,
    }


# --- chain of thought end to end on the local engine -------------------------------------------


def random_lm(tok):
    """A one-layer random-weight Qwen3 over `tok`'s whole vocabulary: greedy generation is
    deterministic and never closes the reasoning in a few tokens, so the budget cuts it."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=2048,
    )
    return Qwen3ForCausalLM(config).eval()


@pytest.mark.parametrize(
    "family, closing",
    [("deepseek", "\n</think>"), ("gpt-oss", "<|end|><|start|>assistant<|channel|>final<|message|>")],
)
def test_cut_reasoning_is_closed_and_the_labels_scored_after_it_on_the_local_engine(family, closing, request, deepseek):
    from relxfer.evaluate.local_backend import LocalBackend
    from relxfer.evaluate.loop import evaluate_items

    tok = deepseek if family == "deepseek" else request.getfixturevalue("gpt_oss")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    settings = DEFAULTS | {"reasoning_budget": 5}
    if family == "deepseek":
        settings |= {"template_args": {"thinking": True}}
    backend = LocalBackend(random_lm(tok), tok, add_bos_token=True)
    builder = PromptBuilder.from_spec(V1, settings)
    cot = CotSpec(max_new_tokens=256, stop=("\n\n",))
    result = evaluate_items(backend, [ITEM], builder, cot=cot, batch_size=1, progress=False)
    record = result.records[0]
    assert record["cot_truncated"] == 1 and result.metrics["truncated_rate"] == 1.0
    assert "parse_failure_rate" in result.metrics

    # The same scores from the context built by hand: prompt, the 5 generated ids, the closing.
    bound = builder.bind(backend.chat_format(settings))
    prompt = backend.encode(bound.cot(ITEM))
    [(generated, ended)] = backend.generate_ids([prompt], 5)
    assert len(generated) == 5 and not ended
    assert record["cot_text"] == backend.decode(generated)
    labels = [backend.split_continuation(bound.direct(ITEM), c)[1] for c in bound.continuations()]
    assert labels == [[16], [17], [18], [19]]
    context = prompt + generated + ids(tok, closing)
    expected = backend.label_logprobs_bruteforce([context], [labels])[0]
    assert [record[f"logprob_{label}"] for label in bound.labels] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "family, completion_ids",
    [("qwen3", [271, 17, 151645]), ("gpt-oss", [17, 200002])],  # "\n\n" "2" <|im_end|>; "2" <|return|>
)
def test_training_rows_learn_the_label_and_the_end_token(family, completion_ids, request):
    """Fine-tuning tokenizes an example as scoring does: the loss covers the label and the
    family's end token (one special id), never the prompt."""
    from relxfer.train.data import tokenize_examples

    tok = request.getfixturevalue("qwen3" if family == "qwen3" else "gpt_oss")
    builder, methods = bound(tok, THINKING_OFF if family == "qwen3" else DEFAULTS)
    [(ids, n_completion)] = tokenize_examples(tok, [builder.training_example(ITEM)], True, 4096)
    assert ids[-n_completion:] == completion_ids
    contexts, _ = encode_requests(methods, [builder.direct(ITEM)], builder.continuations())
    assert ids[:-n_completion] == contexts[0]  # the prompt exactly as evaluation encodes it


def test_a_model_that_declares_raw_completion_gets_it_under_a_chat_template_default(tmp_path):
    """`prompt.chat_template: true` is the spec's default; a model's own `false` wins."""
    from pathlib import Path

    from relxfer.models.chat_format import prompt_builder
    from relxfer.spec.load import load_spec

    raw = json.loads((Path(__file__).resolve().parents[1] / "specs" / "smoke.json").read_text())
    raw["prompt"]["chat_template"] = True
    raw["models"][0]["chat_template"] = False
    path = tmp_path / "raw-model.json"
    path.write_text(json.dumps(raw))
    spec = load_spec(path)
    plain = load_spec(Path(__file__).resolve().parents[1] / "specs" / "smoke.json")
    builder = prompt_builder(spec, spec.models[0])
    assert builder.chat is None
    assert builder.template_id == prompt_builder(plain, plain.models[0]).template_id
