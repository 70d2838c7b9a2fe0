"""LocalBackend on the built-in tiny model (float32 and real bitsandbytes 4-bit): lm-eval style
tokenization, one-pass label scoring == brute force (right-padded, unmasked batches; shared
prompt prefixes run once), batched == unbatched, generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relxfer.data.synthetic import SyntheticLanguage, generate
from relxfer.evaluate.local_backend import CPU_PASS_OVERHEAD_TOKENS, LocalBackend
from relxfer.models.tiny import BUILTIN_ID
from relxfer.models.tokenization import cut_at_stop
from relxfer.spec.types import ModelSpec, Quantization

pytestmark = pytest.mark.unit

# One intra-op thread: the tiny model gains nothing from more, and on a shared 2-core machine
# two OpenMP threads can run 50x slower when another process holds a core.
torch.set_num_threads(1)

TINY = ModelSpec.from_partial({"name": "tiny", "source": BUILTIN_ID, "dtype": "float32"})
NF4 = Quantization.from_partial(
    {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
)
DIGITS = [" 1", " 2", " 3", " 4"]
TOL = 1e-4  # float32 sums of log-probs over a 1,024-token vocabulary


@pytest.fixture(scope="module")
def backend(relxfer_cache) -> LocalBackend:
    return LocalBackend.load(TINY, None, relxfer_cache)


@pytest.fixture(scope="module")
def backend_4bit(relxfer_cache) -> LocalBackend:
    return LocalBackend.load(TINY, NF4, relxfer_cache)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Prompts of varying length: 1-4 facts per passage, two alphabets, some cut short."""
    langs = [SyntheticLanguage("base"), SyntheticLanguage("ctrl", overlap=0.0, alphabet="disjoint")]
    out = []
    for facts in (1, 2, 4):
        for items in generate(langs, n_passages=4, questions_per_passage=1, facts_per_passage=facts, seed=3).values():
            for item in items:
                options = "".join(f"{k + 1}. {o}\n" for k, o in enumerate(item.options))
                out.append(f"Passage: {item.passage}\nQuestion: {item.question}\n{options}Answer:")
    return out + [t[: 10 + 7 * i].rstrip() for i, t in enumerate(out[:8])]


def encode_requests(backend, texts, labels):
    prompts, conts = [], []
    for text in texts:
        pairs = [backend.split_continuation(text, label) for label in labels]
        assert all(p == pairs[0][0] for p, _ in pairs)
        prompts.append(pairs[0][0])
        conts.append([c for _, c in pairs])
    return prompts, conts


def test_split_continuation_follows_lm_eval(backend):
    context, continuation = backend.split_continuation("Question: what?\nAnswer:", " 3")
    assert context + continuation == backend.encode("Question: what?\nAnswer: 3")
    assert context == backend.encode("Question: what?\nAnswer:") and len(continuation) == 1
    # Trailing spaces of the context move onto the continuation.
    assert backend.split_continuation("Answer: ", "3") == backend.split_continuation("Answer:", " 3")
    # lm-eval 0.4.13's default (add_bos_token=None): the tokenizer's own, which for the tiny
    # tokenizer prepends BOS; a text that already starts with BOS gets no second one.
    bos, tokenizer = backend.tokenizer.bos_token_id, backend.tokenizer
    assert backend.add_bos_token is True
    assert (
        backend.encode("mabo") == tokenizer.encode("mabo") == [bos] + tokenizer.encode("mabo", add_special_tokens=False)
    )
    assert backend.encode(tokenizer.bos_token + "mabo") == backend.encode("mabo")
    no_bos = LocalBackend(backend.model, tokenizer, add_bos_token=False)
    assert no_bos.encode("mabo") == tokenizer.encode("mabo", add_special_tokens=False)
    # An empty context is the BOS token; the continuation is encoded without special tokens.
    plain = tokenizer.encode("mabo", add_special_tokens=False)
    assert backend.split_continuation("", "mabo") == ([bos], plain)
    assert backend.split_continuation("", tokenizer.bos_token + "mabo") == ([bos], plain)


def test_single_token_labels_one_pass_equals_bruteforce(backend, texts):
    prompts, conts = encode_requests(backend, texts, DIGITS)
    assert all(len(c) == 1 for cs in conts for c in cs)
    rows, kept, masks = [], [], []
    hooks = [
        backend.model.model.register_forward_hook(
            lambda m, args, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
        ),
        backend.model.model.register_forward_hook(
            lambda m, args, kw, out: masks.append(kw.get("attention_mask")), with_kwargs=True
        ),
        backend.model.lm_head.register_forward_hook(lambda m, args, out: kept.append(args[0].shape[1])),
    ]
    try:
        fast = backend.label_logprobs(prompts, conts)
    finally:
        for hook in hooks:
            hook.remove()
    assert sum(rows) == len(prompts)  # one forward row per prompt, not one per label
    assert set(kept) == {1}  # the output projection ran on the last position only
    assert masks and all(m is None for m in masks)  # right-padded, unmasked: SDPA's causal kernel
    reference = backend.label_logprobs_bruteforce(prompts, conts)
    assert fast.shape == (len(texts), 4) and fast.dtype == np.float64
    np.testing.assert_allclose(fast, reference, atol=TOL, rtol=0)
    assert (fast < 0).all()


def test_multi_token_continuations_equal_bruteforce(backend, texts):
    labels = [" mabo lupi", " A", " the answer is 2", "\nä"]
    # Contexts ending in whitespace hand it to the continuation (lm-eval), making it longer.
    prompts, conts = encode_requests(backend, texts + ["Answer: ", "Passage:\n"], labels)
    assert max(len(c) for cs in conts for c in cs) > 3
    fast = backend.label_logprobs(prompts, conts)
    np.testing.assert_allclose(fast, backend.label_logprobs_bruteforce(prompts, conts), atol=TOL, rtol=0)


def test_batched_equals_unbatched(backend, texts):
    for labels in (DIGITS, [" mabo", " teka lupi"]):
        prompts, conts = encode_requests(backend, texts, labels)
        one = backend.label_logprobs(prompts, conts, batch_size=1)
        for batch_size in (5, 64, None):
            np.testing.assert_allclose(
                backend.label_logprobs(prompts, conts, batch_size=batch_size), one, atol=1e-5, rtol=0
            )


@pytest.fixture(scope="module")
def shared_texts() -> list[str]:
    """Belebele-like prompts: 3 questions per passage, so prompts share long prefixes."""
    langs = [SyntheticLanguage("base"), SyntheticLanguage("ctrl", overlap=0.0, alphabet="disjoint")]
    out = []
    for items in generate(langs, n_passages=4, questions_per_passage=3, facts_per_passage=4, seed=5).values():
        for item in items:
            options = "".join(f"{k + 1}. {o}\n" for k, o in enumerate(item.options))
            out.append(f"Passage: {item.passage}\nQuestion: {item.question}\n{options}Answer:")
    return out + out[:2]  # duplicates share everything but the last token


def test_shared_prefixes_run_once_and_score_the_same(backend, shared_texts):
    # The CPU batch policy on any device: the token count below assumes little padding.
    sharing = LocalBackend(
        backend.model, backend.tokenizer, min_shared_prefix=8, pass_overhead_tokens=CPU_PASS_OVERHEAD_TOKENS
    )
    prompts, conts = encode_requests(sharing, shared_texts, DIGITS)
    tokens = []
    hook = sharing.model.model.register_forward_hook(
        lambda m, a, kw, out: tokens.append(kw["input_ids"].numel()), with_kwargs=True
    )
    try:
        fast = sharing.label_logprobs(prompts, conts, batch_size=16)
    finally:
        hook.remove()
    assert sum(tokens) < 0.8 * sum(len(p) for p in prompts)  # shared prefixes ran once per group
    np.testing.assert_allclose(fast, backend.label_logprobs_bruteforce(prompts, conts), atol=TOL, rtol=0)
    plain = backend.label_logprobs(prompts, conts)
    for batch_size in (1, 5, None):
        np.testing.assert_allclose(
            sharing.label_logprobs(prompts, conts, batch_size=batch_size), plain, atol=1e-5, rtol=0
        )


def test_automatic_batches_respect_the_token_budget(relxfer_cache, texts):
    small = LocalBackend.load(TINY, None, relxfer_cache, max_batch_tokens=300)
    prompts, conts = encode_requests(small, texts, DIGITS)
    widths = []
    hook = small.model.model.register_forward_hook(
        lambda m, a, kw, out: widths.append(kw["input_ids"].numel()), with_kwargs=True
    )
    try:
        small.label_logprobs(prompts, conts, progress=True)
    finally:
        hook.remove()
    assert len(widths) > 1 and max(widths) <= 300


def test_generate_is_greedy_batched_and_cut_at_stop_strings(backend, texts):
    prompts = [backend.encode(t) for t in texts[:6]]
    free = backend.generate(prompts, max_new_tokens=12)
    assert free == backend.generate(prompts, max_new_tokens=12, batch_size=1)
    assert all(isinstance(t, str) and t for t in free)
    # Stop at a piece of the first output: the text before it comes back, without the stop string.
    stop = free[0][len(free[0]) // 2 :][:3]
    stopped = backend.generate(prompts, max_new_tokens=12, stop=[stop, "\u0000never"])
    assert stopped[0] == free[0][: free[0].find(stop)]
    assert all(s == cut_at_stop(f, [stop]) for s, f in zip(stopped, free))
    assert cut_at_stop("a. b? c", [" c", "?"]) == "a. b"


def test_4bit_backend_scores_with_bitsandbytes_layers(backend_4bit, backend, texts):
    import bitsandbytes as bnb

    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in backend_4bit.model.modules()) == 14
    prompts, conts = encode_requests(backend_4bit, texts[:12], DIGITS)
    fast = backend_4bit.label_logprobs(prompts, conts)
    np.testing.assert_allclose(fast, backend_4bit.label_logprobs_bruteforce(prompts, conts), atol=TOL, rtol=0)
    # Quantization changes the numbers (it is really NF4), but not wildly.
    full = backend.label_logprobs(prompts, conts)
    assert 1e-4 < np.abs(fast - full).max() < 2.0
    assert backend_4bit.generate(prompts[:2], max_new_tokens=4)


def test_input_errors(backend):
    with pytest.raises(ValueError, match="same number of continuations"):
        backend.label_logprobs([[5], [6]], [[[1]], [[1], [2]]])
    # "ä" glued to a prompt ending in "f" merges into its last token ("Ġfä"): nothing left to score.
    prompt, cont = backend.split_continuation("Passage: f", "ä")
    assert cont == []
    with pytest.raises(ValueError, match="continuation 1 of prompt 0 is empty"):
        backend.label_logprobs([prompt], [[[5], cont]])


def _score_and_log(backend, prompts, conts, batch_size):
    """label_logprobs, plus each forward pass's (input shape, attention mask or None)."""
    log = []
    hook = backend.model.model.register_forward_hook(
        lambda m, args, kw, out: log.append((tuple(kw["input_ids"].shape), kw.get("attention_mask"))), with_kwargs=True
    )
    try:
        return backend.label_logprobs(prompts, conts, batch_size=batch_size), log
    finally:
        hook.remove()


def test_packed_rows_equal_bruteforce_under_eager_attention(relxfer_cache, shared_texts):
    """Eager attention adds the tree mask to the scores (a float mask); SDPA takes it as booleans."""
    eager = LocalBackend.load(TINY, None, relxfer_cache, min_shared_prefix=8)
    eager.model.set_attn_implementation("eager")
    prompts, conts = encode_requests(eager, shared_texts, DIGITS)
    fast, log = _score_and_log(eager, prompts, conts, batch_size=4)
    masks = [m for _, m in log if m is not None]
    assert masks and all(m.dtype == torch.float32 and m.dim() == 4 for m in masks)
    np.testing.assert_allclose(fast, eager.label_logprobs_bruteforce(prompts, conts), atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def sliding_backend(backend) -> LocalBackend:
    """A random Gemma 3 text model (sliding-window layer, then a full-attention layer) with a
    24-token window, on the tiny tokenizer: prompts both shorter and longer than the window."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = backend.tokenizer
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=24,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(config).eval()
    return LocalBackend(model, tokenizer, min_shared_prefix=4)


def test_sliding_window_models_share_prefixes_only_within_the_window(sliding_backend, shared_texts):
    backend = sliding_backend
    window = backend.model.config.sliding_window
    texts = [t[:n] for t in shared_texts[:6] for n in (30, 34, 38)] + shared_texts[:4]
    prompts, conts = encode_requests(backend, texts, DIGITS)
    lengths = [len(p) for p in prompts]
    assert min(lengths) < window <= max(lengths)
    fast, log = _score_and_log(backend, prompts, conts, batch_size=8)
    packed = [shape for shape, mask in log if mask is not None]
    plain = [shape for shape, mask in log if mask is None]
    assert packed and plain  # short prompts shared rows; the long ones ran on the model's own masks
    np.testing.assert_allclose(fast, backend.label_logprobs_bruteforce(prompts, conts), atol=TOL, rtol=0)
