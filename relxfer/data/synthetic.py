"""A synthetic, parallel, multilingual reading-comprehension set with controllable lexical overlap.

Every language renders the same underlying questions from one concept inventory. A passage
states who likes what ("mabo lupi teka. sinu lupi rako."); the question asks what one person
likes; the four options are *category words* of objects (each object has its own category
word, like apple -> fruit). Solving an item takes two skills:

- a task-format skill that is the same in every language (find the person in the passage, take
  the object that follows, answer with a label), and
- a lexical skill that is language-specific (which category word belongs to which object).

A language declares how much of its vocabulary it shares with the base language (the first one
listed). A related language (overlap near 1) reuses the base words, so a model fine-tuned on the
base language can transfer the lexical skill; a control language (overlap 0, disjoint alphabet)
shares no word and not even a letter, so only the format skill can transfer. That gives the
whole pipeline a positive and a negative control.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .items import MCItem

# Consonant and vowel inventories. "disjoint" shares no character with "shared", so a control
# language shares no token with the base language under any subword tokenizer.
ALPHABETS = {
    "shared": ("ptkbdgmnlrs", "aeiou"),
    "disjoint": ("fvzhjwcqxy", "äöüåø"),
}

# Size of the concept inventory behind every language.
N_PEOPLE = 12
N_OBJECTS = 16
FUNCTION_WORDS = ("likes", "what", "does", "like")


@dataclass(frozen=True)
class SyntheticLanguage:
    """One synthetic language: `overlap` is the share of concepts whose word equals the base
    language's word; `alphabet` picks the letters of the words that are not shared."""

    code: str
    overlap: float = 1.0
    alphabet: str = "shared"


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


def _concepts() -> list[str]:
    return (
        [f"person{i}" for i in range(N_PEOPLE)]
        + [f"object{i}" for i in range(N_OBJECTS)]
        + [f"category{i}" for i in range(N_OBJECTS)]
        + list(FUNCTION_WORDS)
    )


def build_lexicons(languages: list[SyntheticLanguage], seed: int) -> dict[str, dict[str, str]]:
    """Concept -> word for every language. The first language is the base; each other language
    keeps the base word for a seeded `overlap` share of concepts and coins new words for the rest."""
    base, *others = languages
    rng = random.Random(f"lexicon:{seed}")
    concepts = _concepts()
    taken: set[str] = set()
    lexicons = {base.code: {c: _new_word(rng, base.alphabet, taken) for c in concepts}}
    for lang in others:
        lang_rng = random.Random(f"lexicon:{seed}:{lang.code}")
        shared = set(lang_rng.sample(concepts, round(lang.overlap * len(concepts))))
        lexicons[lang.code] = {
            c: lexicons[base.code][c] if c in shared else _new_word(lang_rng, lang.alphabet, taken)
            for c in concepts
        }
    return lexicons


@dataclass(frozen=True)
class _Question:
    """A language-independent question: facts (person, object) pairs, the asked fact, options."""

    passage_id: str
    question_id: str
    facts: tuple[tuple[int, int], ...]
    asked: int
    options: tuple[int, ...]
    gold: int


def _questions(n_passages: int, questions_per_passage: int, facts_per_passage: int, seed: int) -> list[_Question]:
    rng = random.Random(f"questions:{seed}")
    questions = []
    for p in range(n_passages):
        people = rng.sample(range(N_PEOPLE), facts_per_passage)
        objects = rng.sample(range(N_OBJECTS), facts_per_passage)
        facts = tuple(zip(people, objects))
        for q, asked in enumerate(rng.sample(range(facts_per_passage), questions_per_passage)):
            answer = facts[asked][1]
            # Distractors: the other objects of the passage first (so copying any object from the
            # passage is not enough), then objects from outside it.
            in_passage = [o for _, o in facts if o != answer]
            outside = [o for o in range(N_OBJECTS) if o not in objects]
            distractors = (rng.sample(in_passage, min(2, len(in_passage))) + rng.sample(outside, 3))[:3]
            options = [answer, *distractors]
            rng.shuffle(options)
            questions.append(
                _Question(
                    passage_id=f"syn-p{p:04d}",
                    question_id=f"syn-p{p:04d}#{q + 1}",
                    facts=facts,
                    asked=asked,
                    options=tuple(options),
                    gold=options.index(answer),
                )
            )
    return questions


def _render(question: _Question, lexicon: dict[str, str], code: str) -> MCItem:
    w = lexicon
    passage = " ".join(f"{w[f'person{p}']} {w['likes']} {w[f'object{o}']}." for p, o in question.facts)
    person = question.facts[question.asked][0]
    text = f"{w['what']} {w['does']} {w[f'person{person}']} {w['like']}?"
    options = tuple(w[f"category{o}"] for o in question.options)
    return MCItem(
        question_id=question.question_id,
        passage_id=question.passage_id,
        language=code,
        passage=passage,
        question=text,
        options=options,
        gold=question.gold,
    )


def generate(
    languages: list[SyntheticLanguage],
    n_passages: int,
    questions_per_passage: int = 2,
    facts_per_passage: int = 3,
    seed: int = 0,
) -> dict[str, list[MCItem]]:
    """Parallel items for every language: the same question ids, facts and gold index in each."""
    if not 1 <= questions_per_passage <= facts_per_passage:
        raise ValueError("questions_per_passage must be between 1 and facts_per_passage")
    lexicons = build_lexicons(languages, seed)
    questions = _questions(n_passages, questions_per_passage, facts_per_passage, seed)
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
