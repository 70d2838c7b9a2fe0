"""The completion-only loss of a micro-batch, as the local and distributed trainers compute it.

Convention for every fine-tuning engine: a step's loss is the mean over all completion tokens of
the step (each token weighs 1 / completion tokens of the step, however the tokens are spread
over examples, micro-batches or ranks). `relxfer.train.tinker_trainer` sends the same weights to
the Tinker service."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from relxfer.models.padding import left_pad
from relxfer.train.data import Row


def completion_loss(model, rows: Sequence[Row], pad_id: int, device) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the completion tokens of left-padded `rows`, and their number.
    Left padding puts every completion at the end, so logits are computed for the last
    (longest completion + 1) positions only."""
    ids, mask, positions = left_pad([r[0] for r in rows], pad_id, device)
    keep = max(n for _, n in rows) + 1
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False
    ).logits
    targets = ids[:, -(keep - 1) :].clone()  # position t of `logits` predicts token t + 1
    for i, (_, n) in enumerate(rows):
        targets[i, : keep - 1 - n] = -100  # prompt (and padding): no loss
    loss = F.cross_entropy(
        logits[:, :-1, :].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, sum(n for _, n in rows)
