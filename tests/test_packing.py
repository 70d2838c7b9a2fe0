"""packing.py: shared-prefix rows (tokens, positions, segments, scored positions) and the
batch plan, checked against direct enumeration."""

from __future__ import annotations

import itertools
import random

import pytest

from relxfer.evaluate.packing import (
    Request,
    Row,
    build_requests,
    plan_batches,
    shared_prefix_rows,
)

pytestmark = pytest.mark.unit


def test_a_row_runs_the_prefix_once_and_maps_each_members_positions():
    a = Request(0, None, [1, 2, 3, 4, 5], [[7, 8]])
    b = Request(1, None, [1, 2, 3, 9], [[7, 8]])
    c = Request(2, 0, [1, 2, 3, 6, 6, 6], [[5], [6], [7]])  # scores its last three positions
    row = Row(3, [a, b, c])
    assert row.tokens() == [1, 2, 3, 4, 5, 9, 6, 6, 6]
    assert row.segments() == [0, 0, 0, 1, 1, 2, 3, 3, 3]
    assert row.positions() == [0, 1, 2, 3, 4, 3, 3, 4, 5]
    # a: its position 4 -> row index 4; b: position 3 -> 5; c: positions 3, 4, 5 -> 6, 7, 8.
    assert row.scored() == [4, 5, 6, 7, 8]
    assert len(row) == 9 and row.n_scored == 5 and row.packed
    # Every member's sequence is recovered from its segment and the prefix, in position order.
    tokens, segments, positions = row.tokens(), row.segments(), row.positions()
    for k, member in enumerate(row.members):
        mine = [i for i, s in enumerate(segments) if s in (0, k + 1)]
        assert [tokens[i] for i in mine] == member.input_ids
        assert [positions[i] for i in mine] == list(range(len(member.input_ids)))


def test_a_scored_position_inside_the_prefix_is_read_from_the_prefix():
    # Continuation scoring: the first target is predicted at the prompt's last token, shared.
    first = Request(0, 0, [1, 2, 3, 4], [[4], [8]])
    second = Request(0, 1, [1, 2, 3, 5], [[5], [9]])
    row = Row(3, [first, second])
    assert row.scored() == [2, 3, 2, 4]
    single = Row.single(Request(0, None, [1, 2, 3], [[4]]))
    assert single.tokens() == [1, 2, 3] and single.scored() == [2] and not single.packed


def test_requests_share_rows_by_common_prefix():
    def req(i, ids):
        return Request(i, None, ids, [[0]])

    passage = list(range(100, 140))
    requests = [
        req(0, passage + [1, 2, 3]),
        req(1, list(range(500, 540))),  # shares nothing
        req(2, passage + [4, 5]),
        req(3, passage[:10] + [7] * 30),  # shares 10 tokens only: below min_shared
        req(4, passage + [1, 2, 3]),  # a duplicate keeps its last token to itself
    ]
    rows = shared_prefix_rows(requests, min_shared=32)
    by_members = {tuple(sorted(m.index for m in r.members)): r for r in rows}
    assert set(by_members) == {(0, 2, 4), (1,), (3,)}
    assert by_members[(0, 2, 4)].shared == len(passage)
    assert sorted(m.index for r in rows for m in r.members) == [0, 1, 2, 3, 4]
    for row in rows:
        assert all(len(m.input_ids) > row.shared or not row.packed for m in row.members)
        assert all(m.input_ids[: row.shared] == row.members[0].input_ids[: row.shared] for m in row.members)
    # Duplicates: the shared part stops one token short so each member keeps a scored position.
    dup = shared_prefix_rows([req(0, passage), req(1, passage)], min_shared=8)
    assert len(dup) == 1 and dup[0].shared == len(passage) - 1 and dup[0].scored() == [39, 40]


def test_build_requests_one_pass_for_one_token_labels_else_one_per_continuation():
    one = build_requests([[1, 2]], [[[5], [6]]])
    assert [(r.label, r.input_ids, r.targets) for r in one] == [(None, [1, 2], [[5, 6]])]
    multi = build_requests([[1, 2]], [[[5], [6, 7]]])
    assert [(r.label, r.input_ids, r.targets) for r in multi] == [(0, [1, 2], [[5]]), (1, [1, 2, 6], [[6], [7]])]
    with pytest.raises(ValueError, match="continuation 1 of prompt 0 is empty"):
        build_requests([[1]], [[[5], []]])


def _rows(lengths):
    return [Row.single(Request(i, None, [1] * n, [[0]])) for i, n in enumerate(lengths)]


def _cost(batches, overhead):
    return sum(overhead + len(b) * len(b[0]) for b in batches)


@pytest.mark.parametrize("seed", range(12))
def test_plan_batches_is_the_cheapest_partition(seed):
    rng = random.Random(seed)
    lengths = sorted((rng.randint(5, 300) for _ in range(rng.randint(1, 9))), reverse=True)
    overhead, max_rows = rng.choice([0, 16, 64, 500]), rng.randint(1, 5)
    rows = _rows(lengths)
    plan = plan_batches(rows, lambda width, kept: max_rows, overhead)
    assert [r for b in plan for r in b] == rows and all(1 <= len(b) <= max_rows for b in plan)
    # Every way of cutting the sorted rows into consecutive batches of at most max_rows.
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(rows) - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(rows)]
        batches = [rows[a:b] for a, b in zip(bounds, bounds[1:])]
        if all(len(b) <= max_rows for b in batches):
            best = min(best, _cost(batches, overhead))
    assert _cost(plan, overhead) == best


def test_plan_batches_trades_padding_against_passes():
    rows = _rows([200, 198, 196, 60, 58, 20])
    assert [len(b) for b in plan_batches(rows, lambda w, k: 64, pass_overhead=0)] == [1, 1, 1, 1, 1, 1]
    assert [len(b) for b in plan_batches(rows, lambda w, k: 64, pass_overhead=32)] == [3, 2, 1]
    assert [len(b) for b in plan_batches(rows, lambda w, k: 64, pass_overhead=64)] == [3, 3]
    assert [len(b) for b in plan_batches(rows, lambda w, k: 64, pass_overhead=10**6)] == [6]
    assert [len(b) for b in plan_batches(rows, lambda w, k: 2, pass_overhead=10**6)] == [2, 2, 2]
    # The bound sees each batch's widest row and its largest number of kept logits.
    wide = plan_batches(rows, lambda width, kept: 1 if width > 100 else 64, pass_overhead=10**6)
    assert [len(b) for b in wide] == [1, 1, 1, 3]
    assert plan_batches([], lambda w, k: 8, 64) == []
