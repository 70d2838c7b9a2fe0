"""Held-out split by question id: real Belebele from ../shared/data, small built cases for edges."""

from __future__ import annotations

import dataclasses

import pytest

from relxfer.data.belebele import load_belebele
from relxfer.data.items import MCItem
from relxfer.data.split import (
    assert_no_leakage,
    evaluation_items,
    held_out_split,
    training_items,
)
from relxfer.errors import DataError, SpecError
from tests.support import shared_data

pytestmark = pytest.mark.unit

DATA_DIR = shared_data.BELEBELE
LANGUAGES = ["arb_Arab", "eng_Latn", "fra_Latn", "tur_Latn", "zho_Hans"]


@pytest.fixture(scope="module")
def real(belebele_dir):
    return load_belebele(LANGUAGES, path=DATA_DIR).items_by_language


def _item(qid: str, lang: str) -> MCItem:
    """A tiny item; question ids look like Belebele's, "<passage>#<n>"."""
    return MCItem(
        question_id=qid,
        passage_id=qid.split("#")[0],
        language=lang,
        passage="P",
        question="Q",
        options=("a", "b", "c", "d"),
        gold=0,
    )


def _built(ids_by_language: dict[str, list[str]]) -> dict[str, list[MCItem]]:
    return {lang: [_item(qid, lang) for qid in ids] for lang, ids in ids_by_language.items()}


# --- Real data --------------------------------------------------------------------------------


def test_100_held_out_leaves_800_training_items_per_language_and_no_leakage(real):
    split = held_out_split(real, n_held_out=100, seed=0)
    assert len(split.held_out_ids) == 100 and split.held_out_ids == sorted(split.held_out_ids)
    assert split.n_available == 900 and split.missing_ids == {}

    train = split.training_items(real, LANGUAGES)
    counts = {lang: sum(item.language == lang for item in train) for lang in LANGUAGES}
    assert counts == dict.fromkeys(LANGUAGES, 800)
    split.assert_no_leakage(train)
    assert_no_leakage(train, split.held_out_ids)

    evaluation = split.evaluation_items(real, LANGUAGES)
    for lang, items in evaluation.items():
        assert sorted(item.question_id for item in items) == split.held_out_ids, lang
    assert not {item.question_id for item in train} & set(split.held_out_ids)


def test_draw_is_seeded_and_pinned(real):
    first = held_out_split(real, 100, seed=0)
    assert held_out_split(dict(reversed(list(real.items()))), 100, seed=0) == first  # language order irrelevant
    assert held_out_split(real, 100, seed=1).held_out_ids != first.held_out_ids
    # Pinned across machines and Python runs: random.Random(seed) over sorted ids.
    assert first.digest == "3bdebcb617b2327a"
    assert first.held_out_ids[0] == "https://en.wikibooks.org/wiki/Accordion/Right_hand#2"


def test_question_unit_reports_passages_shared_with_training(real):
    split = held_out_split(real, 100, seed=0, unit="question")
    assert split.shared_passages  # the paper's unit: some held-out passages are read in training
    train_passages = {item.passage_id for item in split.training_items(real, ["eng_Latn"])}
    assert set(split.shared_passages) == set(split.held_out_passages) & train_passages


def test_passage_unit_holds_out_whole_passages(real):
    split = held_out_split(real, 100, seed=0, unit="passage")
    assert len(split.held_out_ids) == 100 and split.shared_passages == []
    train = split.training_items(real, LANGUAGES)
    assert len(train) == 5 * 800
    assert not {item.passage_id for item in train} & set(split.held_out_passages)
    split.assert_no_leakage(train)
    assert {lang: len(items) for lang, items in split.evaluation_items(real, LANGUAGES).items()} == dict.fromkeys(
        LANGUAGES, 100
    )


def test_planted_leak_is_caught_and_named(real):
    split = held_out_split(real, 100, seed=0)
    train = split.training_items(real, ["arb_Arab", "eng_Latn"])
    leaked = split.held_out_ids[0]
    planted = [item for lang in ["arb_Arab", "fra_Latn"] for item in real[lang] if item.question_id == leaked]
    with pytest.raises(DataError) as error:
        assert_no_leakage(train + planted, split.held_out_ids)
    assert str(error.value) == f"leakage: 1 held-out question id in training items: {leaked} (arb_Arab, fra_Latn)"


def test_held_out_larger_than_available(real):
    with pytest.raises(DataError) as error:
        held_out_split(real, 901, seed=0)
    assert str(error.value) == (
        "cannot hold out 901 question ids: only 900 are present in every language "
        "(arb_Arab, eng_Latn, fra_Latn, tur_Latn, zho_Hans)"
    )


# --- Built cases ------------------------------------------------------------------------------


def test_ids_missing_in_some_language_are_reported_and_never_drawn():
    data = _built({"arb_Arab": ["p1#1", "p1#2", "p2#1", "p3#1"], "heb_Hebr": ["p1#1", "p2#1", "p3#1", "p4#1"]})
    split = held_out_split(data, 3, seed=0)
    assert split.missing_ids == {"arb_Arab": ["p4#1"], "heb_Hebr": ["p1#2"]}
    assert split.held_out_ids == ["p1#1", "p2#1", "p3#1"] and split.n_available == 3
    with pytest.raises(DataError) as error:
        held_out_split(data, 4, seed=0)
    assert str(error.value) == (
        "cannot hold out 4 question ids: only 3 are present in every language (arb_Arab, heb_Hebr)"
    )


def test_passage_unit_uses_only_passages_complete_in_every_language():
    data = _built({"arb_Arab": ["p1#1", "p1#2", "p2#1", "p3#1", "p3#2"], "heb_Hebr": ["p1#1", "p2#1", "p3#1", "p3#2"]})
    split = held_out_split(data, 3, seed=0, unit="passage")  # p1 lacks p1#2 in Hebrew: not eligible
    assert split.held_out_passages == ["p2", "p3"] and split.held_out_ids == ["p2#1", "p3#1", "p3#2"]
    assert split.n_available == 3
    with pytest.raises(DataError) as error:
        held_out_split(data, 4, seed=0, unit="passage")
    assert str(error.value) == (
        "cannot hold out 4 question ids as whole passages: only 3 (in 2 passages) "
        "are present in every language (arb_Arab, heb_Hebr)"
    )


def test_passage_unit_cannot_always_hit_an_exact_size():
    data = _built({"eng_Latn": ["p1#1", "p1#2", "p2#1", "p2#2"]})
    with pytest.raises(DataError) as error:
        held_out_split(data, 3, seed=0, unit="passage")
    assert str(error.value) == (
        "whole passages cannot add up to exactly 3 question ids (reached 2); choose another held-out size or seed"
    )


def test_passage_leak_is_caught_in_passage_mode():
    data = _built({"eng_Latn": ["p1#1", "p2#1", "p3#1"]})
    split = held_out_split(data, 1, seed=0, unit="passage")
    (passage,) = split.held_out_passages
    sibling = dataclasses.replace(
        data["eng_Latn"][0], question_id=f"{passage}#9", passage_id=passage, language="mlt_Latn"
    )
    with pytest.raises(DataError) as error:
        split.assert_no_leakage([sibling])
    assert str(error.value) == f"leakage: 1 held-out passage in training items: {passage} (mlt_Latn)"
    assert_no_leakage([sibling], split.held_out_ids)  # checking question ids alone lets it pass


def test_many_leaks_are_listed_briefly():
    ids = [f"p{n}#1" for n in range(8)]
    with pytest.raises(DataError) as error:
        assert_no_leakage([_item(qid, "eng_Latn") for qid in ids], ids)
    assert str(error.value) == (
        "leakage: 8 held-out question ids in training items: p0#1 (eng_Latn), p1#1 (eng_Latn), "
        "p2#1 (eng_Latn), p3#1 (eng_Latn), p4#1 (eng_Latn) and 3 more"
    )


def test_module_functions_check_languages():
    data = _built({"arb_Arab": ["p1#1", "p2#1"], "heb_Hebr": ["p1#1"]})
    assert [i.question_id for i in training_items(data, ["arb_Arab"], ["p1#1"])] == ["p2#1"]
    with pytest.raises(DataError) as error:
        training_items(data, ["amh_Ethi"], ["p1#1"])
    assert str(error.value) == "no items loaded for language 'amh_Ethi'; loaded: arb_Arab, heb_Hebr"
    with pytest.raises(DataError) as error:
        evaluation_items(data, ["arb_Arab", "heb_Hebr"], ["p1#1", "p2#1"])
    assert str(error.value) == "heb_Hebr lacks 1 of the 2 held-out question ids: p2#1"


def test_bad_arguments():
    data = _built({"eng_Latn": ["p1#1"]})
    with pytest.raises(SpecError, match="^unknown held-out unit 'sentence'; use 'question' or 'passage'$"):
        held_out_split(data, 1, seed=0, unit="sentence")
    with pytest.raises(SpecError, match="^held-out size must be at least 1, got 0$"):
        held_out_split(data, 0, seed=0)
    with pytest.raises(DataError, match="^no languages to draw held-out questions from$"):
        held_out_split({}, 1, seed=0)
