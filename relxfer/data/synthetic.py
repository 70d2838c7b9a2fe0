"""A synthetic, parallel, multilingual reading-comprehension set that plants a lexical transfer
effect: fine-tuning on the base language teaches facts that only languages sharing its words can use.

Every language renders the same underlying questions from one concept inventory: people,
objects, four categories (each object belongs to one category, like apple -> fruit) and a few
function words. A passage is about one category: each of its sentences pairs a person with the
thing that person likes ("mabo teka. sinu rako. ..."), and every object in it belongs to that
category. The question asks what kind of thing one of these people likes; the four options are
the category words, always in the same order, so the answer label *is* the passage's category.
Solving an item takes

- a format skill that is the same in every language (answer with one of the labels), and
- a lexical skill that is language-specific: which category each object word belongs to. The
  training data teaches it for the base language's words; nothing else in an item reveals it.

A language declares how much of its vocabulary it shares with the base language (the first one
listed): `overlap` is the share of concepts whose word equals the base word. A related language
(overlap near 1) reuses most object words, so a model fine-tuned on the base language can answer
its questions; a language with overlap 0 shares no word (with `alphabet: "disjoint"` not even a
letter), so only the format can transfer. Related languages against overlap-0 controls make
the whole pipeline's positive control (specs/smoke.json); overlap 0 on both sides its negative
control (specs/smoke-null.json).

Why this shape: the built-in tiny model (randomly initialised, QLoRA on a 4-bit base) learns
word -> label associations within a smoke budget, but not a look-up skill such as "find the
person in the passage and take the object after it" or "find the option whose text is this
category word" (a set that asks for both gives it nothing to gain in any language). So the options are fixed and a passage has one topic. And its sentences have no verb:
with "mabo likes teka." the model learnt to read the word after "likes", and a related language
that happened not to share "likes" lost most of the transfer (24 drawn related languages with
overlap 0.85: the smallest gain +5 points with the verb, +43 without).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relxfer.data.items import MCItem

# Consonant and vowel inventories. "disjoint" shares no character with "shared", so a control
# language shares no token with the base language under any subword tokenizer.
ALPHABETS = {
    "shared": ("ptkbdgmnlrs", "aeiou"),
    "disjoint": ("fvzhjwcqxy", "äöüåø"),
}

# Size of the concept inventory behind every language. The categories are the four options.
N_PEOPLE = 12
N_CATEGORIES = 4
FUNCTION_WORDS = ("what", "kind", "of", "thing", "does", "like")
MAX_FACTS_PER_PASSAGE = 6  # at most N_PEOPLE: each fact has its own person


@dataclass(frozen=True)
class SyntheticLanguage:
    """One synthetic language: `overlap` is the share of concepts whose word equals the base
    language's word; `alphabet` picks the letters of the words that are not shared."""

    code: str
    overlap: float = 1.0
    alphabet: str = "shared"


def shape_problems(
    questions_per_passage: int, facts_per_passage: int, objects_per_category: int
) -> list[tuple[str, str]]:
    """(field, message) for each size that cannot make a passage; empty when they all can."""
    problems = []
    if not 1 <= facts_per_passage <= MAX_FACTS_PER_PASSAGE:
        problems.append(
            (
                "facts_per_passage",
                f"facts_per_passage must be between 1 and {MAX_FACTS_PER_PASSAGE}, got {facts_per_passage}",
            )
        )
    if not 1 <= questions_per_passage <= facts_per_passage:
        problems.append(
            (
                "questions_per_passage",
                f"questions_per_passage ({questions_per_passage}) must be between 1 "
                f"and facts_per_passage ({facts_per_passage})",
            )
        )
    if objects_per_category < facts_per_passage:
        problems.append(
            (
                "objects_per_category",
                f"objects_per_category ({objects_per_category}) must be at least "
                f"facts_per_passage ({facts_per_passage}): a passage names distinct "
                "objects of one category",
            )
        )
    return problems


def check_shape(questions_per_passage: int, facts_per_passage: int, objects_per_category: int) -> None:
    """Raise ValueError naming the first size that cannot make a passage."""
    problems = shape_problems(questions_per_passage, facts_per_passage, objects_per_category)
    if problems:
        raise ValueError(problems[0][1])


def _syllables(alphabet: str) -> list[str]:
    consonants, vowels = ALPHABETS[alphabet]
    return [c + v for c in consonants for v in vowels]


def _new_word(rng: random.Random, alphabet: str, taken: set[str]) -> str:
    syllables = _syllables(alphabet)
    while True:
        word = "".join(rng.choice(syllables) for _ in range(rng.choice((2, 2, 3))))
        if word not in taken:
            taken.add(word)
            return word


def _concepts(n_objects: int) -> list[str]:
    return (
        [f"person{i}" for i in range(N_PEOPLE)]
        + [f"object{i}" for i in range(n_objects)]
        + [f"category{i}" for i in range(N_CATEGORIES)]
        + list(FUNCTION_WORDS)
    )


def build_lexicons(
    languages: list[SyntheticLanguage], seed: int, objects_per_category: int = 8
) -> dict[str, dict[str, str]]:
    """Concept -> word for every language. The first language is the base; each other language
    keeps the base word for a seeded `overlap` share of concepts and coins new words for the rest."""
    base, *others = languages
    rng = random.Random(f"lexicon:{seed}")
    concepts = _concepts(N_CATEGORIES * objects_per_category)
    taken: set[str] = set()
    lexicons = {base.code: {c: _new_word(rng, base.alphabet, taken) for c in concepts}}
    for lang in others:
        lang_rng = random.Random(f"lexicon:{seed}:{lang.code}")
        shared = set(lang_rng.sample(concepts, round(lang.overlap * len(concepts))))
        lexicons[lang.code] = {
            c: lexicons[base.code][c] if c in shared else _new_word(lang_rng, lang.alphabet, taken) for c in concepts
        }
    return lexicons


def object_categories(seed: int, objects_per_category: int = 8) -> list[int]:
    """Category of each object (a seeded, balanced assignment: the facts training teaches)."""
    n_objects = N_CATEGORIES * objects_per_category
    order = list(range(n_objects))
    random.Random(f"categories:{seed}").shuffle(order)
    categories = [0] * n_objects
    for rank, obj in enumerate(order):
        categories[obj] = rank % N_CATEGORIES
    return categories


@dataclass(frozen=True)
class _Question:
    """A language-independent question: the passage's (person, object) facts, the asked fact
    and the passage's category (the gold option: the options are the categories in order)."""

    passage_id: str
    question_id: str
    facts: tuple[tuple[int, int], ...]
    asked: int
    category: int


def _questions(
    n_passages: int, questions_per_passage: int, facts_per_passage: int, objects_per_category: int, seed: int
) -> list[_Question]:
    rng = random.Random(f"questions:{seed}")
    categories = object_categories(seed, objects_per_category)
    members = [[o for o, c in enumerate(categories) if c == k] for k in range(N_CATEGORIES)]
    # Each category is the topic of an equal share of passages (as near as n_passages allows),
    # so every label is gold equally often and a constant answer earns chance, nothing more.
    topics = [p % N_CATEGORIES for p in range(n_passages)]
    rng.shuffle(topics)
    questions = []
    for p, topic in enumerate(topics):
        facts = tuple(
            zip(rng.sample(range(N_PEOPLE), facts_per_passage), rng.sample(members[topic], facts_per_passage))
        )
        for q, asked in enumerate(rng.sample(range(facts_per_passage), questions_per_passage)):
            questions.append(_Question(f"syn-p{p:04d}", f"syn-p{p:04d}#{q + 1}", facts, asked, topic))
    return questions


def _render(question: _Question, lexicon: dict[str, str], code: str) -> MCItem:
    w = lexicon
    passage = " ".join(f"{w[f'person{p}']} {w[f'object{o}']}." for p, o in question.facts)
    person = question.facts[question.asked][0]
    text = f"{w['what']} {w['kind']} {w['of']} {w['thing']} {w['does']} {w[f'person{person}']} {w['like']}?"
    return MCItem(
        question_id=question.question_id,
        passage_id=question.passage_id,
        language=code,
        passage=passage,
        question=text,
        options=tuple(w[f"category{k}"] for k in range(N_CATEGORIES)),
        gold=question.category,
    )


def generate(
    languages: list[SyntheticLanguage],
    n_passages: int,
    questions_per_passage: int = 2,
    facts_per_passage: int = 3,
    seed: int = 0,
    objects_per_category: int = 8,
) -> dict[str, list[MCItem]]:
    """Parallel items for every language: the same question ids, facts and gold index in each."""
    check_shape(questions_per_passage, facts_per_passage, objects_per_category)
    lexicons = build_lexicons(languages, seed, objects_per_category)
    questions = _questions(n_passages, questions_per_passage, facts_per_passage, objects_per_category, seed)
    return {lang.code: [_render(q, lexicons[lang.code], lang.code) for q in questions] for lang in languages}


def vocabulary_overlap(items_a: list[MCItem], items_b: list[MCItem]) -> float:
    """Share of the word types of `items_a` that also occur in `items_b` (a check on the generator)."""

    def words(items: list[MCItem]) -> set[str]:
        text = " ".join(f"{i.passage} {i.question} {' '.join(i.options)}" for i in items)
        return set(text.replace(".", " ").replace("?", " ").split())

    a, b = words(items_a), words(items_b)
    return len(a & b) / len(a)


def tokenizer_corpus() -> list[str]:
    """Text the built-in tiny model's tokenizer is trained on: every syllable of every alphabet
    (so any synthetic word of any seed splits into whole syllables), digits and the English words
    of the prompt presets. Independent of any spec, so the tokenizer is the same for all."""
    lines = []
    for alphabet in ALPHABETS:
        syllables = _syllables(alphabet)
        lines += [" ".join(syllables)] * 4
        lines += [" ".join(a + b for a in syllables for b in syllables[:: max(1, len(syllables) // 10)])]
    lines += [
        "Passage: Question: Answer: Options: Reasoning: The answer is",
        "Read the passage and answer the question with the number of the correct option.",
        "P: Q: A: B: C: D: 1 2 3 4 A B C D 0 5 6 7 8 9 . , ? ! : ; ( ) - \n",
    ] * 4
    return lines
