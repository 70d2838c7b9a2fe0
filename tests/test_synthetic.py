"""The synthetic set: parallel across languages, deterministic, with the lexical overlap it
declares, and an answer that only the object-to-category facts reveal."""

from __future__ import annotations

from collections import Counter

import pytest

from relxfer.data.synthetic import (
    N_CATEGORIES,
    SyntheticLanguage,
    build_lexicons,
    generate,
    object_categories,
    vocabulary_overlap,
)

pytestmark = pytest.mark.unit

LANGS = [
    SyntheticLanguage("syn_Base"),
    SyntheticLanguage("syn_Rela", overlap=0.85),
    SyntheticLanguage("syn_Nula", overlap=0.0),
    SyntheticLanguage("syn_Ctla", overlap=0.0, alphabet="disjoint"),
]


def test_parallel_ids_gold_and_passages():
    data = generate(LANGS, n_passages=30, seed=3)
    ids = [[(i.question_id, i.passage_id, i.gold) for i in items] for items in data.values()]
    assert ids[0] == ids[1] == ids[2] == ids[3]
    assert len(ids[0]) == 60 and len({i for i, _, _ in ids[0]}) == 60


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert generate(LANGS, 10, seed=1) == generate(LANGS, 10, seed=1)
    assert generate(LANGS, 10, seed=1) != generate(LANGS, 10, seed=2)
    assert object_categories(1) != object_categories(2)


def test_overlap_is_as_declared():
    lexicons = build_lexicons(LANGS, seed=0)
    base, related, null, control = (lexicons[lang.code] for lang in LANGS)
    shared = sum(base[c] == related[c] for c in base) / len(base)
    assert abs(shared - 0.85) < 0.02
    assert not any(base[c] == null[c] for c in base) and not any(base[c] == control[c] for c in base)
    # overlap 0 with the shared alphabet still shares letters; the disjoint alphabet shares none.
    assert set("".join(null.values())) <= set("".join(base.values()))
    assert not set("".join(base.values())) & set("".join(control.values()))


def test_vocabulary_overlap_of_items():
    data = generate(LANGS, n_passages=50)
    assert vocabulary_overlap(data["syn_Base"], data["syn_Ctla"]) == 0.0
    assert vocabulary_overlap(data["syn_Base"], data["syn_Nula"]) == 0.0
    assert vocabulary_overlap(data["syn_Base"], data["syn_Rela"]) > 0.7


def test_gold_option_is_the_category_of_every_object_in_the_passage():
    """The answer follows from the object words and the facts alone: every object of a passage
    belongs to the gold category, and the options are the category words in a fixed order."""
    seed, per_category = 4, 6
    lexicon = build_lexicons(LANGS, seed=seed, objects_per_category=per_category)["syn_Base"]
    categories = object_categories(seed, per_category)
    category_of_word = {lexicon[f"object{i}"]: c for i, c in enumerate(categories)}
    options = tuple(lexicon[f"category{k}"] for k in range(N_CATEGORIES))
    items = generate(
        LANGS, 40, questions_per_passage=2, facts_per_passage=3, seed=seed, objects_per_category=per_category
    )["syn_Base"]
    for item in items:
        objects = [sentence.split()[-1] for sentence in item.passage.rstrip(".").split(". ")]
        assert len(objects) == len(set(objects)) == 3
        assert {category_of_word[o] for o in objects} == {item.gold}
        assert item.options == options
        asked = item.question.rstrip("?").split()[-2]  # "... does <person> like?"
        assert asked in item.passage.split()


def test_categories_are_balanced_so_a_constant_answer_earns_chance():
    assert Counter(object_categories(7)) == {k: 8 for k in range(N_CATEGORIES)}
    gold = Counter(item.gold for item in generate(LANGS[:1], 200, questions_per_passage=1, seed=7)["syn_Base"])
    assert gold == {k: 50 for k in range(N_CATEGORIES)}


def test_the_facts_are_language_independent():
    """Every language's passage names the same objects (by concept), so only words differ."""
    lexicons = build_lexicons(LANGS, seed=2)
    data = generate(LANGS, 20, seed=2)
    for lang in LANGS[1:]:
        to_concept = {w: c for c, w in lexicons[lang.code].items()}
        to_base = {c: w for c, w in lexicons["syn_Base"].items()}
        for base_item, item in zip(data["syn_Base"], data[lang.code]):
            translated = " ".join(
                to_base[to_concept[w.rstrip(".")]] + "." * w.endswith(".") for w in item.passage.split()
            )
            assert translated == base_item.passage


@pytest.mark.parametrize(
    "shape, message",
    [
        (
            {"questions_per_passage": 4, "facts_per_passage": 3},
            "questions_per_passage (4) must be between 1 and facts_per_passage (3)",
        ),
        (
            {"facts_per_passage": 5, "objects_per_category": 4},
            "objects_per_category (4) must be at least facts_per_passage (5)",
        ),
        ({"facts_per_passage": 7}, "facts_per_passage must be between 1 and 6, got 7"),
    ],
)
def test_impossible_shapes_are_refused(shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate(LANGS, 5, **{"questions_per_passage": 1, **shape})
