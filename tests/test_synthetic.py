"""The synthetic set: parallel across languages, deterministic, with the lexical overlap it declares."""

from __future__ import annotations

from relxfer.data.synthetic import SyntheticLanguage, build_lexicons, generate, vocabulary_overlap

LANGS = [
    SyntheticLanguage("syn_Base"),
    SyntheticLanguage("syn_Rela", overlap=0.85),
    SyntheticLanguage("syn_Ctla", overlap=0.0, alphabet="disjoint"),
]


def test_parallel_ids_gold_and_passages():
    data = generate(LANGS, n_passages=30, seed=3)
    ids = [[(i.question_id, i.passage_id, i.gold) for i in items] for items in data.values()]
    assert ids[0] == ids[1] == ids[2]
    assert len(ids[0]) == 60 and len({i for i, _, _ in ids[0]}) == 60


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert generate(LANGS, 10, seed=1) == generate(LANGS, 10, seed=1)
    assert generate(LANGS, 10, seed=1) != generate(LANGS, 10, seed=2)


def test_overlap_is_as_declared():
    lexicons = build_lexicons(LANGS, seed=0)
    base, related, control = (lexicons[l.code] for l in LANGS)
    shared = sum(base[c] == related[c] for c in base) / len(base)
    assert abs(shared - 0.85) < 0.02
    assert not any(base[c] == control[c] for c in base)
    # The control alphabet shares no character with the base language.
    assert not set("".join(base.values())) & set("".join(control.values()))


def test_vocabulary_overlap_of_items():
    data = generate(LANGS, n_passages=50)
    assert vocabulary_overlap(data["syn_Base"], data["syn_Ctla"]) == 0.0
    assert vocabulary_overlap(data["syn_Base"], data["syn_Rela"]) > 0.7


def test_gold_option_is_the_category_of_the_asked_fact():
    lexicon = build_lexicons(LANGS, seed=0)["syn_Base"]
    object_of_category = {lexicon[f"category{i}"]: lexicon[f"object{i}"] for i in range(16)}
    person_word = {lexicon[f"person{i}"] for i in range(12)}
    for item in generate(LANGS, 20)["syn_Base"]:
        asked_person = next(w for w in item.question.rstrip("?").split() if w in person_word)
        facts = dict(sentence.split(f" {lexicon['likes']} ") for sentence in item.passage.rstrip(".").split(". "))
        assert object_of_category[item.options[item.gold]] == facts[asked_person]
        assert len(set(item.options)) == 4
