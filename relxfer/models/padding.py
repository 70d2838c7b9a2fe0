"""Batches of token-id rows as padded tensors, for scoring, generation and training alike."""

from __future__ import annotations

import torch


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of left-padded rows. Position ids count real
    tokens only, so a padded row gets the same rotary positions as the row alone."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def right_pad(rows: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """input_ids of right-padded rows (no mask needed when only real positions are read: causal
    attention never lets a real position see the pads after it)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.to(device)
