"""Training data for every fine-tuning engine: examples to token ids and the seeded order of
micro-batches. Single-process and distributed runs share all of it (a rank takes its slice of
every global micro-batch, `relxfer.train.parallel`), and so does the Tinker trainer, which is why
this module needs no torch (the completion-only loss is in `relxfer.train.loss`)."""

from __future__ import annotations

import math
import random

from relxfer.errors import DataError
from relxfer.models.tokenization import encode_pair
from relxfer.spec.types import TrainingSpec

Row = tuple[list[int], int]  # (input ids, number of completion tokens at the end)


def tokenize_examples(tokenizer, examples, add_bos_token: bool, max_seq_len: int) -> list[Row]:
    """(input_ids, n_completion) per example: the completion is the last n_completion tokens,
    split from the prompt exactly as scoring splits it (`encode_pair`). Too long examples keep
    their last `max_seq_len` tokens."""
    rows = []
    for i, (prompt, completion) in enumerate(examples):
        prompt_ids, completion_ids = encode_pair(tokenizer, prompt, completion, add_bos_token)
        if not completion_ids:
            raise DataError(f"training example {i} has an empty completion after tokenization: {completion!r}")
        ids = (prompt_ids + completion_ids)[-max_seq_len:]
        # The first token of a sequence has nothing before it to be predicted from.
        rows.append((ids, min(len(completion_ids), len(ids) - 1)))
    return rows


def micro_batches(n_items: int, batch_size: int, seed: int, start: int, stop: int):
    """Example indices of micro-batches start..stop-1 of an endless stream of epochs; epoch e is
    a permutation drawn from `random.Random(f"{seed}:{e}")`, cut into batches of `batch_size`."""
    per_epoch = math.ceil(n_items / batch_size)
    orders: dict[int, list[int]] = {}
    for j in range(start, stop):
        epoch, b = divmod(j, per_epoch)
        if epoch not in orders:
            order = list(range(n_items))
            random.Random(f"relxfer-finetune:{seed}:{epoch}").shuffle(order)
            orders[epoch] = order
        yield orders[epoch][b * batch_size : (b + 1) * batch_size]


def step_counts(n_rows: int, train: TrainingSpec) -> tuple[int, int]:
    """(optimizer steps, micro-batches) of a run: `max_steps` x accumulation, or `epochs` passes
    (fractional epochs are allowed: 0.5 = the first half of one shuffled pass)."""
    batch_size, accum = train.batch_size, train.grad_accum_steps
    if train.max_steps is not None:
        return train.max_steps, train.max_steps * accum
    total_micro = max(1, math.ceil(math.ceil(n_rows / batch_size) * train.epochs))
    return math.ceil(total_micro / accum), total_micro
