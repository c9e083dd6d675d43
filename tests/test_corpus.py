from __future__ import annotations

import itertools

import pytest

from s2s.corpus import (
    ObjectSpec,
    TimeSpec,
    _render_clause,
    _render_sentence,
    _year_de,
    _year_en,
    generate_pairs,
    number_to_words_de,
    number_to_words_en,
    ordinal_de_dative,
    ordinal_en,
)

NUMBERS = {
    0: ("zero", "null"),
    1: ("one", "eins"),
    7: ("seven", "sieben"),
    11: ("eleven", "elf"),
    16: ("sixteen", "sechzehn"),
    17: ("seventeen", "siebzehn"),
    20: ("twenty", "zwanzig"),
    21: ("twenty-one", "einundzwanzig"),
    30: ("thirty", "dreißig"),
    42: ("forty-two", "zweiundvierzig"),
    99: ("ninety-nine", "neunundneunzig"),
    100: ("one hundred", "hundert"),
    101: ("one hundred and one", "hunderteins"),
    111: ("one hundred and eleven", "hundertelf"),
    342: ("three hundred and forty-two", "dreihundertzweiundvierzig"),
    1000: ("one thousand", "eintausend"),
    1001: ("one thousand and one", "eintausendeins"),
    1050: ("one thousand and fifty", "eintausendfünfzig"),
    1100: ("one thousand one hundred", "eintausendeinhundert"),
    1987: ("one thousand nine hundred and eighty-seven", "eintausendneunhundertsiebenundachtzig"),
    9999: ("nine thousand nine hundred and ninety-nine", "neuntausendneunhundertneunundneunzig"),
}


@pytest.mark.parametrize("n", sorted(NUMBERS))
def test_number_words(n: int) -> None:
    assert number_to_words_en(n) == NUMBERS[n][0]
    assert number_to_words_de(n) == NUMBERS[n][1]


@pytest.mark.parametrize("fn", [number_to_words_en, number_to_words_de])
@pytest.mark.parametrize("n", [-1, 10000])
def test_number_words_out_of_range(fn, n: int) -> None:
    with pytest.raises(ValueError):
        fn(n)


def test_ordinals() -> None:
    en = {
        1: "first",
        2: "second",
        3: "third",
        7: "seventh",
        8: "eighth",
        12: "twelfth",
        20: "twentieth",
        21: "twenty-first",
        30: "thirtieth",
        31: "thirty-first",
    }
    de = {
        1: "ersten",
        2: "zweiten",
        3: "dritten",
        7: "siebten",
        8: "achten",
        12: "zwölften",
        16: "sechzehnten",
        20: "zwanzigsten",
        21: "einundzwanzigsten",
        31: "einunddreißigsten",
    }
    assert {n: ordinal_en(n) for n in en} == en
    assert {n: ordinal_de_dative(n) for n in de} == de
    for fn in (ordinal_en, ordinal_de_dative):
        for bad in (0, 32):
            with pytest.raises(ValueError):
                fn(bad)


def test_years() -> None:
    cases = {
        1900: ("nineteen hundred", "neunzehnhundert"),
        1905: ("nineteen oh five", "neunzehnhundertfünf"),
        1987: ("nineteen eighty-seven", "neunzehnhundertsiebenundachtzig"),
        2000: ("two thousand", "zweitausend"),
        2003: ("two thousand and three", "zweitausenddrei"),
        2010: ("twenty ten", "zweitausendzehn"),
        2021: ("twenty twenty-one", "zweitausendeinundzwanzig"),
    }
    for year, (en, de) in cases.items():
        assert (_year_en(year), _year_de(year)) == (en, de)


def sentence(*clauses: tuple[str, str]) -> tuple[str, str]:
    return _render_sentence(list(clauses))


def test_spec_examples() -> None:
    apples = ObjectSpec("apple", "red", "count", 3)
    assert sentence(_render_clause("my sister", "bought", apples, "at the market", TimeSpec("date", 2, 5))) == (
        "My sister bought three red apples at the market on the second of May.",
        "Am zweiten Mai kaufte meine Schwester drei rote Äpfel auf dem Markt.",
    )
    assert sentence(_render_clause("we", "saw", ObjectSpec("dog", "big"), None, TimeSpec("yesterday"))) == (
        "We saw a big dog yesterday.",
        "Gestern sahen wir einen großen Hund.",
    )
    assert sentence(_render_clause("the children", "found", ObjectSpec("book", "old", "the"))) == (
        "The children found the old book.",
        "Die Kinder fanden das alte Buch.",
    )


@pytest.mark.parametrize(
    "obj, en, de",
    [
        (ObjectSpec("apple"), "an apple", "einen Apfel"),
        (ObjectSpec("book", "old"), "an old book", "ein altes Buch"),
        (ObjectSpec("pear", "red"), "a red pear", "eine rote Birne"),
        (ObjectSpec("chair", "new", "one"), "one new chair", "einen neuen Stuhl"),
        (ObjectSpec("chair", "new", "the"), "the new chair", "den neuen Stuhl"),
        (ObjectSpec("lamp", "green", "the"), "the green lamp", "die grüne Lampe"),
        (ObjectSpec("house", "small", "the"), "the small house", "das kleine Haus"),
        (ObjectSpec("house", "small", "count", 2), "two small houses", "zwei kleine Häuser"),
        (
            ObjectSpec("horse", "beautiful", "the count", 21),
            "the twenty-one beautiful horses",
            "die einundzwanzig schönen Pferde",
        ),
        (ObjectSpec("ticket", None, "count", 342), "three hundred and forty-two tickets", "dreihundertzweiundvierzig Fahrkarten"),
    ],
)
def test_object_inflection(obj: ObjectSpec, en: str, de: str) -> None:
    assert _render_clause("I", "bought", obj) == (f"I bought {en}", f"ich kaufte {de}")


def test_agreement_pronouns_and_two_clauses() -> None:
    first = _render_clause(
        "they", "carried", ObjectSpec("bottle", "heavy", "the count", 12), "at the station", TimeSpec("clock", 1)
    )
    second = _render_clause("she", "sold", ObjectSpec("car", "cheap"), None, TimeSpec("year", 1987))
    assert sentence(first, second) == (
        "They carried the twelve heavy bottles at the station at one o'clock and she sold a cheap car in nineteen eighty-seven.",
        "Um ein Uhr trugen sie die zwölf schweren Flaschen am Bahnhof"
        " und im Jahr neunzehnhundertsiebenundachtzig verkaufte sie ein billiges Auto.",
    )
    assert sentence(_render_clause("she", "saw", ObjectSpec("cat"), "in the garden", TimeSpec("weekday", 6))) == (
        "She saw a cat in the garden on Sunday.",
        "Am Sonntag sah sie eine Katze im Garten.",
    )
    assert sentence(
        _render_clause("our neighbours", "painted", ObjectSpec("flower", "blue", "the"), None, TimeSpec("last week"))
    ) == (
        "Our neighbours painted the blue flower last week.",
        "Letzte Woche malten unsere Nachbarn die blaue Blume.",
    )


def test_invalid_specs_raise() -> None:
    with pytest.raises(ValueError):
        _render_clause("I", "saw", ObjectSpec("dog"), None, TimeSpec("date", 29, 2))
    with pytest.raises(ValueError):
        _render_clause("I", "saw", ObjectSpec("dog", None, "count", 1))


def test_deterministic_and_seeded() -> None:
    assert generate_pairs(200, 1) == generate_pairs(200, 1)
    assert generate_pairs(200, 1) != generate_pairs(200, 2)
    assert generate_pairs(50, 1) == generate_pairs(200, 1)[:50]
    assert generate_pairs(0, 1) == []


@pytest.fixture(scope="module")
def sample() -> list[tuple[str, str]]:
    return generate_pairs(2000, 7)


def test_structure(sample: list[tuple[str, str]]) -> None:
    english_only = {"the", "a", "an", "and", "of", "at", "on", "yesterday", "o'clock", "bought", "my"}
    assert len(sample) == 2000
    for en, de in sample:
        assert en.endswith(".") and de.endswith(".")
        assert en[0].isupper() and de[0].isupper()
        assert en != de
        assert not english_only & set(de.lower().rstrip(".").split())
        assert en.count("yesterday") == de.lower().count("gestern")
        for clause in de.split(" und "):
            if "gestern" in clause.lower():
                assert clause.lower().startswith("gestern")
        if "yesterday" in en and " und " not in de:
            assert de.startswith("Gestern ")
    lengths = [len(en.split()) for en, _ in sample]
    assert min(lengths) >= 4 and max(lengths) > 20
    assert 0.15 < sum(" und " in de for _, de in sample) / len(sample) < 0.35
    assert len(set(sample)) >= 0.95 * len(sample)


def test_copying_source_is_useless(sample: list[tuple[str, str]]) -> None:
    shared = total = 0
    for en, de in sample:
        en_bigrams = set(itertools.pairwise(en.split()))
        de_tokens = de.split()
        de_bigrams = list(itertools.pairwise(de_tokens))
        shared += sum(b in en_bigrams for b in de_bigrams)
        total += len(de_bigrams)
    assert shared / total < 0.02
