"""Built-in, deterministic, offline English->German parallel corpus.

The corpus must be *real enough that attention has to reorder and inflect, not
copy*: German is verb-second, so a fronted time phrase moves from the end of the
English clause to the front and swaps subject and verb ("Gestern sahen wir ...");
articles and adjectives inflect for gender and number in the accusative ("einen
roten Apfel", "eine rote Birne", "ein rotes Buch", "die drei roten Äpfel"); verbs
agree with the subject ("ich kaufte" / "wir kauften"); numbers become single
compounds ("three hundred and forty-two" -> "dreihundertzweiundvierzig").  Almost
no German token equals its source token, so copying the input scores ~0 BLEU.

It must also be *small and regular enough* for an LSTM with attention to learn on
two CPU cores in minutes: a closed vocabulary and one clause template, optionally
doubled with "and"/"und" so inputs span roughly 4-35 words (long inputs matter for
the attention-vs-no-attention comparison).  Only ``random.Random(seed)`` is used,
so the same ``(n, seed)`` gives the same pairs on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

_EN_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_DE_ONES = [
    "null",
    "eins",
    "zwei",
    "drei",
    "vier",
    "fünf",
    "sechs",
    "sieben",
    "acht",
    "neun",
    "zehn",
    "elf",
    "zwölf",
    "dreizehn",
    "vierzehn",
    "fünfzehn",
    "sechzehn",
    "siebzehn",
    "achtzehn",
    "neunzehn",
]
_DE_TENS = ("", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig")
_EN_ORDINALS = [
    "zeroth",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
]
_DE_ORDINAL_STEMS = MappingProxyType({1: "ers", 3: "drit", 7: "sieb", 8: "ach"})


def _check_range(n: int, lo: int, hi: int) -> None:
    if not lo <= n <= hi:
        raise ValueError(f"{n} outside supported range {lo}..{hi}")


def _en_below_100(n: int) -> str:
    if n < 20:
        return _EN_ONES[n]
    tens, unit = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_ONES[unit]}" if unit else "")


def _en_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _en_below_100(rest)
    head = f"{_EN_ONES[hundreds]} hundred"
    return f"{head} and {_en_below_100(rest)}" if rest else head


def number_to_words_en(n: int) -> str:
    """British English cardinal, 0..9999: 342 -> 'three hundred and forty-two'."""
    _check_range(n, 0, 9999)
    thousands, rest = divmod(n, 1000)
    if not thousands:
        return _en_below_1000(rest)
    head = f"{_EN_ONES[thousands]} thousand"
    if not rest:
        return head
    return f"{head} and {_en_below_100(rest)}" if rest < 100 else f"{head} {_en_below_1000(rest)}"


def _de_below_100(n: int) -> str:
    if n < 20:
        return _DE_ONES[n]
    tens, unit = divmod(n, 10)
    if not unit:
        return _DE_TENS[tens]
    return ("ein" if unit == 1 else _DE_ONES[unit]) + "und" + _DE_TENS[tens]


def number_to_words_de(n: int) -> str:
    """German cardinal as one compound, 0..9999: 342 -> 'dreihundertzweiundvierzig'."""
    _check_range(n, 0, 9999)
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    hundreds, below = divmod(rest, 100)
    out = ("ein" if thousands == 1 else _DE_ONES[thousands]) + "tausend" if thousands else ""
    if hundreds == 1 and not thousands:
        out += "hundert"  # 101 -> hunderteins, but 1100 -> eintausendeinhundert
    elif hundreds:
        out += ("ein" if hundreds == 1 else _DE_ONES[hundreds]) + "hundert"
    return out + (_de_below_100(below) if below else "")


def ordinal_en(n: int) -> str:
    """English ordinal for days of the month, 1..31: 21 -> 'twenty-first'."""
    _check_range(n, 1, 31)
    if n < 20:
        return _EN_ORDINALS[n]
    tens, unit = divmod(n, 10)
    return f"{_EN_TENS[tens]}-{_EN_ORDINALS[unit]}" if unit else _EN_TENS[tens][:-1] + "ieth"


def ordinal_de_dative(n: int) -> str:
    """German ordinal after 'am' (weak dative masculine), 1..31: 7 -> 'siebten'."""
    _check_range(n, 1, 31)
    if n < 20:
        return _DE_ORDINAL_STEMS.get(n, _DE_ONES[n]) + "ten"
    return number_to_words_de(n) + "sten"


def _year_en(year: int) -> str:
    """1987 -> 'nineteen eighty-seven', 1905 -> 'nineteen oh five', 2021 -> 'twenty twenty-one'."""
    _check_range(year, 1900, 2030)
    if year == 1900:
        return "nineteen hundred"
    if year < 1910:
        return f"nineteen oh {_EN_ONES[year - 1900]}"
    if year < 2000:
        return f"nineteen {_en_below_100(year - 1900)}"
    if year < 2010:
        return number_to_words_en(year)
    return f"twenty {_en_below_100(year - 2000)}"


def _year_de(year: int) -> str:
    """1987 -> 'neunzehnhundertsiebenundachtzig', 2003 -> 'zweitausenddrei'."""
    _check_range(year, 1900, 2030)
    if year < 2000:
        return "neunzehnhundert" + (_de_below_100(year - 1900) if year > 1900 else "")
    return number_to_words_de(year)


class _Subject(NamedTuple):
    en: str
    de: str
    plural: bool


class _Verb(NamedTuple):
    en: str
    de_sg: str
    de_pl: str


class _Noun(NamedTuple):
    en: str
    en_pl: str
    de: str
    de_pl: str
    gender: str  # "m", "f" or "n"


_SUBJECTS = (
    _Subject("I", "ich", False),
    _Subject("he", "er", False),
    _Subject("she", "sie", False),
    _Subject("we", "wir", True),
    _Subject("they", "sie", True),
    _Subject("my brother", "mein Bruder", False),
    _Subject("my sister", "meine Schwester", False),
    _Subject("the teacher", "der Lehrer", False),
    _Subject("the children", "die Kinder", True),
    _Subject("our neighbours", "unsere Nachbarn", True),
    _Subject("Anna", "Anna", False),
    _Subject("Peter", "Peter", False),
)
_VERBS = (
    _Verb("bought", "kaufte", "kauften"),
    _Verb("saw", "sah", "sahen"),
    _Verb("sold", "verkaufte", "verkauften"),
    _Verb("found", "fand", "fanden"),
    _Verb("painted", "malte", "malten"),
    _Verb("needed", "brauchte", "brauchten"),
    _Verb("ordered", "bestellte", "bestellten"),
    _Verb("carried", "trug", "trugen"),
)
_NOUNS = (
    _Noun("apple", "apples", "Apfel", "Äpfel", "m"),
    _Noun("pear", "pears", "Birne", "Birnen", "f"),
    _Noun("book", "books", "Buch", "Bücher", "n"),
    _Noun("car", "cars", "Auto", "Autos", "n"),
    _Noun("chair", "chairs", "Stuhl", "Stühle", "m"),
    _Noun("lamp", "lamps", "Lampe", "Lampen", "f"),
    _Noun("horse", "horses", "Pferd", "Pferde", "n"),
    _Noun("dog", "dogs", "Hund", "Hunde", "m"),
    _Noun("cat", "cats", "Katze", "Katzen", "f"),
    _Noun("house", "houses", "Haus", "Häuser", "n"),
    _Noun("ticket", "tickets", "Fahrkarte", "Fahrkarten", "f"),
    _Noun("letter", "letters", "Brief", "Briefe", "m"),
    _Noun("flower", "flowers", "Blume", "Blumen", "f"),
    _Noun("bottle", "bottles", "Flasche", "Flaschen", "f"),
)
_ADJECTIVES = MappingProxyType(
    {
        "red": "rot",
        "old": "alt",
        "new": "neu",
        "small": "klein",
        "big": "groß",
        "green": "grün",
        "blue": "blau",
        "cheap": "billig",
        "beautiful": "schön",
        "heavy": "schwer",
    }
)
_PLACES = MappingProxyType(
    {
        "at the market": "auf dem Markt",
        "in the city": "in der Stadt",
        "at the station": "am Bahnhof",
        "in the garden": "im Garten",
        "at school": "in der Schule",
        "in the village": "im Dorf",
    }
)
_WEEKDAYS = (
    ("Monday", "Montag"),
    ("Tuesday", "Dienstag"),
    ("Wednesday", "Mittwoch"),
    ("Thursday", "Donnerstag"),
    ("Friday", "Freitag"),
    ("Saturday", "Samstag"),
    ("Sunday", "Sonntag"),
)
_MONTHS = (
    ("January", "Januar", 31),
    ("February", "Februar", 28),
    ("March", "März", 31),
    ("April", "April", 30),
    ("May", "Mai", 31),
    ("June", "Juni", 30),
    ("July", "Juli", 31),
    ("August", "August", 31),
    ("September", "September", 30),
    ("October", "Oktober", 31),
    ("November", "November", 30),
    ("December", "Dezember", 31),
)
_SUBJECT_BY_EN = MappingProxyType({s.en: s for s in _SUBJECTS})
_VERB_BY_EN = MappingProxyType({v.en: v for v in _VERBS})
_NOUN_BY_EN = MappingProxyType({n.en: n for n in _NOUNS})
# Accusative article and adjective ending per determiner kind and gender.
_INDEF = MappingProxyType({"m": ("einen", "en"), "f": ("eine", "e"), "n": ("ein", "es")})
_DEF = MappingProxyType({"m": ("den", "en"), "f": ("die", "e"), "n": ("das", "e")})
_DETERMINERS = ("a", "the", "one", "count", "the count")


@dataclass(frozen=True)
class ObjectSpec:
    """Accusative object. determiner: 'a', 'the', 'one', 'count' or 'the count'."""

    noun: str
    adjective: str | None = None
    determiner: str = "a"
    count: int = 1


@dataclass(frozen=True)
class TimeSpec:
    """kind: 'yesterday', 'last week', 'weekday' (value 0..6), 'date' (value=day, month 1..12),
    'year' (value 1900..2030) or 'clock' (value=hour 1..12)."""

    kind: str
    value: int = 0
    month: int = 0


def _render_object(obj: ObjectSpec) -> tuple[str, str]:
    noun = _NOUN_BY_EN[obj.noun]
    plural = obj.determiner in ("count", "the count")
    if plural and not 2 <= obj.count <= 9999:
        raise ValueError(f"plural count {obj.count} outside 2..9999")
    adj_en = [obj.adjective] if obj.adjective else []
    adj_de = _ADJECTIVES[obj.adjective] if obj.adjective else ""
    if obj.determiner in ("a", "one"):
        article, ending = _INDEF[noun.gender]
        first = (adj_en + [noun.en])[0]
        det_en = "one" if obj.determiner == "one" else ("an" if first[0] in "aeiou" else "a")
        en, de = [det_en], [article]
    elif obj.determiner == "the":
        article, ending = _DEF[noun.gender]
        en, de = ["the"], [article]
    elif plural:
        the = obj.determiner == "the count"
        ending = "en" if the else "e"
        en = ["the"] * the + [number_to_words_en(obj.count)]
        de = ["die"] * the + [number_to_words_de(obj.count)]
    else:
        raise ValueError(f"unknown determiner {obj.determiner!r}")
    en += adj_en + [noun.en_pl if plural else noun.en]
    de += ([adj_de + ending] if adj_de else []) + [noun.de_pl if plural else noun.de]
    return " ".join(en), " ".join(de)


def _render_time(time: TimeSpec) -> tuple[str, str]:
    if time.kind == "yesterday":
        return "yesterday", "gestern"
    if time.kind == "last week":
        return "last week", "letzte Woche"
    if time.kind == "weekday":
        en_day, de_day = _WEEKDAYS[time.value]
        return f"on {en_day}", f"am {de_day}"
    if time.kind == "date":
        en_month, de_month, days = _MONTHS[time.month - 1]
        _check_range(time.value, 1, days)
        return f"on the {ordinal_en(time.value)} of {en_month}", f"am {ordinal_de_dative(time.value)} {de_month}"
    if time.kind == "year":
        return f"in {_year_en(time.value)}", f"im Jahr {_year_de(time.value)}"
    if time.kind == "clock":
        _check_range(time.value, 1, 12)
        hour_de = "ein" if time.value == 1 else number_to_words_de(time.value)
        return f"at {number_to_words_en(time.value)} o'clock", f"um {hour_de} Uhr"
    raise ValueError(f"unknown time kind {time.kind!r}")


def _render_clause(
    subject: str, verb: str, obj: ObjectSpec, place: str | None = None, time: TimeSpec | None = None
) -> tuple[str, str]:
    """Render one uncapitalised clause without final punctuation, e.g.
    ('we saw a big dog yesterday', 'gestern sahen wir einen großen Hund')."""
    subj, vb = _SUBJECT_BY_EN[subject], _VERB_BY_EN[verb]
    obj_en, obj_de = _render_object(obj)
    verb_de = vb.de_pl if subj.plural else vb.de_sg
    place_en, place_de = ([place], [_PLACES[place]]) if place else ([], [])
    time_en, time_de = _render_time(time) if time else ("", "")
    en = [subj.en, vb.en, obj_en] + place_en + ([time_en] if time else [])
    head_de = [time_de, verb_de, subj.de] if time else [subj.de, verb_de]
    return " ".join(en), " ".join(head_de + [obj_de] + place_de)


def _render_sentence(clauses: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """Join clauses with 'and'/'und' (no comma), capitalise the first word, add '.'."""
    en = " and ".join(c[0] for c in clauses)
    de = " und ".join(c[1] for c in clauses)
    return en[0].upper() + en[1:] + ".", de[0].upper() + de[1:] + "."


def _sample_count(rng: random.Random) -> int:
    while True:
        r = rng.random()
        n = (
            rng.randint(2, 20)
            if r < 0.4
            else rng.randint(21, 99)
            if r < 0.75
            else (rng.randint(100, 999) if r < 0.95 else rng.randint(1000, 9999))
        )
        if n < 100 or n % 100 != 1:  # German "hundertein(s) ..." before a noun is awkward
            return n


def _sample_time(rng: random.Random) -> TimeSpec:
    r = rng.random()
    if r < 0.15:
        return TimeSpec("yesterday")
    if r < 0.25:
        return TimeSpec("last week")
    if r < 0.5:
        return TimeSpec("weekday", rng.randrange(7))
    if r < 0.75:
        month = rng.randint(1, 12)
        return TimeSpec("date", rng.randint(1, _MONTHS[month - 1][2]), month)
    if r < 0.9:
        return TimeSpec("year", rng.randint(1900, 2030))
    return TimeSpec("clock", rng.randint(1, 12))


def _sample_clause(rng: random.Random) -> tuple[str, str]:
    determiner = rng.choices(_DETERMINERS, weights=(30, 25, 5, 25, 15))[0]
    obj = ObjectSpec(
        noun=rng.choice(_NOUNS).en,
        adjective=rng.choice(tuple(_ADJECTIVES)) if rng.random() < 0.6 else None,
        determiner=determiner,
        count=_sample_count(rng) if determiner.endswith("count") else 1,
    )
    place = rng.choice(tuple(_PLACES)) if rng.random() < 0.3 else None
    time = _sample_time(rng) if rng.random() < 0.6 else None
    return _render_clause(rng.choice(_SUBJECTS).en, rng.choice(_VERBS).en, obj, place, time)


def generate_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Return n (english, german) sentence pairs; deterministic in (n, seed)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    for _ in range(n):
        n_clauses = 2 if rng.random() < 0.25 else 1
        pairs.append(_render_sentence([_sample_clause(rng) for _ in range(n_clauses)]))
    return pairs
