"""The built-in `arith` benchmark: arithmetic word problems generated from a seed.

Each problem follows one quantity through `difficulty` operations (1 to 4), drawn among addition,
subtraction, multiplication and exact division, and told with varied templates, names, objects and
units. Every intermediate value and the answer is a whole number of at least 2, so the text never
says "1 apples" and the answer is an exact non-negative integer. Difficulty 1 is one plain step:

    Tom has 5 apples and buys 3 more apples. How many apples does Tom have now?

Train and test never share a question text, for any sizes or seeds: a question belongs to test when
the SHA-256 of its text falls in one bucket of five (`split_of`), and each split keeps only its own.
Generation is deterministic (a `random.Random` seeded with a string), so a problem's index in
generation order is a stable id: `arith/d<difficulty>/s<seed>/<split>/<index>`, and a larger `size`
extends a smaller one.

    from distill.benchmarks.arith import generate
    problems = generate(difficulty=2, split="train", size=100, seed=0)   # list[ArithProblem]
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

from distill.benchmarks.records import BenchmarkError, LoadedBenchmark, Problem

GENERATOR_VERSION = "arith-v1"
SPLITS = ("train", "test")
TEST_BUCKETS = 5  # one question text in five belongs to test
MAX_VALUE = 999


@dataclass(frozen=True)
class ArithProblem:
    index: int
    question: str
    expression: str
    """The computation, e.g. `((5 + 3) * 2)`: it evaluates exactly to `answer`."""
    answer: int
    solution: str
    """Step-by-step reference solution ending in `The answer is N.`"""
    operations: tuple[str, ...]
    """The operators in order, e.g. ('+', '*'); its length is the difficulty."""


# --------------------------------------------------------------------------- vocabulary

NAMES = [("Tom", "he"), ("Anna", "she"), ("Liam", "he"), ("Mia", "she"), ("Noah", "he"), ("Emma", "she"),
         ("Omar", "he"), ("Sofia", "she"), ("Ravi", "he"), ("Chloe", "she"), ("Lucas", "he"), ("Aisha", "she"),
         ("Ben", "he"), ("Grace", "she"), ("Diego", "he"), ("Lily", "she"), ("Sam", "he"), ("Nora", "she"),
         ("Kenji", "he"), ("Zoe", "she"), ("Mateo", "he"), ("Hannah", "she"), ("Ethan", "he"), ("Priya", "she"),
         ("Jack", "he"), ("Ella", "she"), ("Yusuf", "he"), ("Maya", "she"), ("Leo", "he"), ("Ruby", "she"),
         ("Carlos", "he"), ("Ivy", "she"), ("Max", "he"), ("Julia", "she"), ("Felix", "he"), ("Amara", "she")]
MEMBERS = ["friends", "classmates", "cousins", "neighbors", "teammates"]
SPENDING = ["a book", "lunch", "a new toy", "a movie ticket", "some snacks", "a gift"]


@dataclass(frozen=True)
class Item:
    noun: str  # what is counted, plural: "apples", "dollars", "cups of flour"
    kind: str  # fruit | food | thing | money | measure
    the: str  # how the whole is named: "the apples", "the money", "the flour"
    container: tuple[str, str]  # singular, plural
    use: str = ""  # measure: what it is used for


ITEMS = [
    Item("apples", "fruit", "the apples", ("basket", "baskets")),
    Item("oranges", "fruit", "the oranges", ("bag", "bags")),
    Item("peaches", "fruit", "the peaches", ("box", "boxes")),
    Item("strawberries", "fruit", "the strawberries", ("bowl", "bowls")),
    Item("lemons", "fruit", "the lemons", ("crate", "crates")),
    Item("cookies", "food", "the cookies", ("jar", "jars")),
    Item("cupcakes", "food", "the cupcakes", ("tray", "trays")),
    Item("muffins", "food", "the muffins", ("box", "boxes")),
    Item("candies", "food", "the candies", ("bag", "bags")),
    Item("marbles", "thing", "the marbles", ("bag", "bags")),
    Item("stickers", "thing", "the stickers", ("sheet", "sheets")),
    Item("pencils", "thing", "the pencils", ("box", "boxes")),
    Item("stamps", "thing", "the stamps", ("album", "albums")),
    Item("seashells", "thing", "the seashells", ("bucket", "buckets")),
    Item("toy cars", "thing", "the toy cars", ("shelf", "shelves")),
    Item("books", "thing", "the books", ("shelf", "shelves")),
    Item("beads", "thing", "the beads", ("jar", "jars")),
    Item("trading cards", "thing", "the trading cards", ("pack", "packs")),
    Item("dollars", "money", "the money", ("envelope", "envelopes")),
    Item("cups of flour", "measure", "the flour", ("bowl", "bowls"), "a cake"),
    Item("liters of juice", "measure", "the juice", ("bottle", "bottles"), "a party"),
    Item("kilograms of rice", "measure", "the rice", ("bag", "bags"), "dinner"),
    Item("meters of ribbon", "measure", "the ribbon", ("roll", "rolls"), "wrapping gifts"),
]

# Verb phrases without a subject (3rd person singular), for a person or "each friend".
ADD = {
    "fruit": ["buys {a} more {noun}", "picks {a} more {noun}", "gets {a} more {noun} from {other}"],
    "food": ["buys {a} more {noun}", "bakes {a} more {noun}", "gets {a} more {noun} from {other}"],
    "thing": ["buys {a} more {noun}", "finds {a} more {noun}", "gets {a} more {noun} from {other}",
              "wins {a} more {noun}"],
    "money": ["earns {a} more dollars", "gets {a} dollars from {other}", "saves {a} more dollars"],
    "measure": ["buys {a} more {noun}", "gets {a} more {noun} from {other}"],
}
SUB = {
    "fruit": ["eats {a} of them", "gives {a} {noun} to {other}", "sells {a} of them"],
    "food": ["eats {a} of them", "gives {a} {noun} to {other}", "sells {a} of them"],
    "thing": ["gives {a} {noun} to {other}", "loses {a} of them", "sells {a} of them"],
    "money": ["spends {a} dollars on {spending}", "gives {a} dollars to {other}"],
    "measure": ["uses {a} {noun} for {use}", "gives {a} {noun} to {other}"],
}
FRACTIONS = {2: "half", 3: "a third", 4: "a quarter"}


@dataclass
class _Holder:
    """Whose quantity the story follows now: a person, "each friend", or "each basket"."""

    kind: str  # person | group | pile
    name: str  # the person; group: who shared; pile: who packed ("Tom" or "each friend")
    pronoun: str = "he"
    member: str = ""  # group: "friend"; pile: "basket"
    changed: bool = False  # an operation changed the quantity after the holder was introduced
    fresh: bool = False  # just introduced beside another person: name them, not "she"

    @property
    def has(self) -> str:
        return {"person": f"{self.name} has", "group": f"Each {self.member} has",
                "pile": f"Each {self.member} has"}[self.kind]


class _Story:
    """One problem being written: the sentences, the expression, the solution steps, the value."""

    def __init__(self, rng: random.Random, difficulty: int):
        self.rng = rng
        self.difficulty = difficulty
        self.item = rng.choice(ITEMS)
        self.people = rng.sample(NAMES, 5)
        self.sentences: list[str] = []
        self.steps: list[str] = []
        self.operations: list[str] = []
        self.expression = ""
        self.value = 0
        self.small = difficulty == 1

    def other(self) -> str:
        return self.people.pop()[0]

    def vp(self, table: dict[str, list[str]], a: int) -> str:
        template = self.rng.choice(table[self.item.kind])
        fill = {"a": a, "noun": self.item.noun, "use": self.item.use,
                "spending": self.rng.choice(SPENDING), "other": "{other}"}
        text = template.format(**fill)
        return text.replace("{other}", self.other()) if "{other}" in text else text

    def record(self, op: str, left: int, right: int, result: int, who: str) -> None:
        self.expression = f"({self.expression} {op} {right})"
        self.operations.append(op)
        self.steps.append(f"{who} {left} {op} {right} = {result} {self.item.noun}.")
        self.value = result


def _allowed(story: _Story, holder: _Holder) -> list[str]:
    x = story.value
    ops = ["+"] if x + 2 <= MAX_VALUE else []
    if x >= 4:
        ops.append("-")
    if x * 2 <= MAX_VALUE:
        ops.append("*")
    if _divisors(story, holder, x):
        ops.append("/")
    return ops


def _divisors(story: _Story, holder: _Holder, x: int) -> list[int]:
    if holder.kind == "pile":
        return []
    top = 5 if story.small else 9
    return [k for k in range(2, top + 1) if x % k == 0 and x // k >= 2]


def _start(story: _Story, first_op: str) -> _Holder:
    """The opening sentence; a multiplication may be told in it ("4 baskets with 6 apples in each")."""
    rng, item = story.rng, story.item
    name, pronoun = story.people.pop()
    holder = _Holder("person", name, pronoun)
    if first_op == "*" and rng.random() < 0.5:
        a, k = rng.randint(2, 6 if story.small else 9), rng.randint(2, 6 if story.small else 9)
        one, many = item.container
        story.sentences.append(rng.choice([
            f"{name} has {a} {many} with {k} {item.noun} in each {one}.",
            f"{name} has {a} {many}, and each {one} holds {k} {item.noun}.",
        ]))
        story.expression, story.value = f"{a}", a
        story.record("*", a, k, a * k, f"{name} has")
        return holder
    if first_op == "/":
        k = rng.randint(2, 5 if story.small else 9)
        x = k * rng.randint(2, 6 if story.small else 12)
    else:
        x = rng.randint(4 if first_op == "-" else 2, 20 if story.small else 50)
    opening = {
        "fruit": [f"{name} has {x} {item.noun}", f"{name} picks {x} {item.noun}"],
        "food": [f"{name} has {x} {item.noun}", f"{name} bakes {x} {item.noun}"],
        "money": [f"{name} has {x} dollars", f"{name} has {x} dollars in {_his(pronoun)} piggy bank"],
    }.get(item.kind, [f"{name} has {x} {item.noun}"])
    story.sentences.append(rng.choice(opening))  # finished by the first step or a period
    story.expression, story.value = f"{x}", x
    return holder


def _his(pronoun: str) -> str:
    return "his" if pronoun == "he" else "her"


def _subject(story: _Story, holder: _Holder) -> str:
    if holder.kind == "group":
        return f"Each {holder.member} then"
    if holder.fresh:
        holder.fresh = False
        return holder.name
    return story.rng.choice([holder.name, holder.pronoun.capitalize(), f"Then {holder.pronoun}"])


def _say(story: _Story, holder: _Holder, verb_phrase: str, whole: str = "") -> None:
    """Finish the opening clause with `and ...`, or add a sentence with a subject. `{whole}` in the
    verb phrase names the quantity: "them" right after the opening clause, else `whole`."""
    last = story.sentences[-1]
    if not last.endswith(".") and holder.kind == "person" and story.rng.random() < 0.6:
        them = whole if story.item.kind == "measure" else "them"  # not "10 meters of ribbon ... them"
        story.sentences[-1] = f"{last} and {verb_phrase.format(whole=them)}."
        return
    verb_phrase = verb_phrase.format(whole=whole)
    if not last.endswith("."):
        story.sentences[-1] = last + "."
    story.sentences.append(f"{_subject(story, holder)} {verb_phrase}.")


def _step(story: _Story, holder: _Holder, op: str) -> _Holder:
    """Tell one operation on the holder's quantity; return who holds the result."""
    rng, item, x = story.rng, story.item, story.value
    one, many = item.container
    if op == "+":
        a = rng.randint(2, min(10 if story.small else 30, MAX_VALUE - x))
        if holder.kind == "pile":
            _close(story)
            story.sentences.append(f"Then {holder.name} puts {a} more {item.noun} into each {one}.")
        else:
            _say(story, holder, story.vp(ADD, a))
        story.record("+", x, a, x + a, holder.has)
        holder.changed = True
        return holder
    if op == "-":
        a = rng.randint(2, min(x - 2, 10 if story.small else 40))
        if holder.kind == "pile":
            _close(story)
            story.sentences.append(f"Then {holder.name} takes {a} {item.noun} out of each {one}.")
        else:
            _say(story, holder, story.vp(SUB, a))
        story.record("-", x, a, x - a, holder.has)
        holder.changed = True
        return holder
    if op == "*":
        k = rng.randint(2, min(5 if story.small else 9, MAX_VALUE // x))
        new_name, new_pronoun = story.people.pop()
        times = "twice" if k == 2 else f"{k} times"
        than = {"person": holder.name, "group": f"each {holder.member}",
                "pile": f"there are in each {holder.member}"}[holder.kind]
        _close(story)
        story.sentences.append(f"{new_name} has {times} as many {item.noun} as {than}.")
        story.record("*", x, k, x * k, f"{new_name} has")
        return _Holder("person", new_name, new_pronoun, fresh=True)
    k = rng.choice(_divisors(story, holder, x))
    form = rng.choice(["share", "pack", "fraction"] if holder.kind == "person" and k in FRACTIONS
                      else ["share", "pack"] if holder.kind == "person" else ["pack"])
    if form == "fraction":
        new_name, new_pronoun = story.people.pop()
        _close(story)
        story.sentences.append(f"{new_name} has {FRACTIONS[k]} as many {item.noun} as {holder.name}.")
        story.record("/", x, k, x // k, f"{new_name} has")
        return _Holder("person", new_name, new_pronoun, fresh=True)
    verb = "pours" if item.noun.startswith("liters") else "puts"
    if form == "share":
        member = rng.choice(MEMBERS)
        _say(story, holder, f"shares {{whole}} equally among {k} {member}", item.the)
        story.record("/", x, k, x // k, f"Each {member[:-1]} gets")
        return _Holder("group", holder.name, holder.pronoun, member[:-1])
    whole = f"their {item.noun}" if holder.kind == "group" else item.the
    _say(story, holder, f"{verb} {{whole}} equally into {k} {many}", whole)
    story.record("/", x, k, x // k, f"Each {one} has")
    actor = f"each {holder.member}" if holder.kind == "group" else holder.name
    return _Holder("pile", actor, holder.pronoun, one)


def _close(story: _Story) -> None:
    if not story.sentences[-1].endswith("."):
        story.sentences[-1] += "."


def _question(story: _Story, holder: _Holder, last_op: str) -> str:
    noun = story.item.noun
    now = " now" if holder.changed else ""
    if holder.kind == "person":
        left = " left" if last_op == "-" and story.rng.random() < 0.5 else now
        return f"How many {noun} does {holder.name} have{left}?"
    if holder.kind == "group":
        return f"How many {noun} does each {holder.member} {'have now' if holder.changed else 'get'}?"
    return f"How many {noun} are in each {holder.member}{now}?"


def _write(rng: random.Random, difficulty: int) -> ArithProblem:
    story = _Story(rng, difficulty)
    first = rng.choice(["+", "-", "*", "/"])
    holder = _start(story, first)
    pending = [] if story.operations else [first]
    while len(story.operations) < difficulty:
        op = pending.pop() if pending else rng.choice(_allowed(story, holder))
        holder = _step(story, holder, op)
    _close(story)
    question = " ".join(story.sentences + [_question(story, holder, story.operations[-1])])
    solution = "\n".join(story.steps + [f"The answer is {story.value}."])
    return ArithProblem(-1, question, story.expression, story.value, solution, tuple(story.operations))


def split_of(question: str) -> str:
    """`test` for one question text in TEST_BUCKETS (by SHA-256), else `train`; fixed for all seeds."""
    bucket = int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16) % TEST_BUCKETS
    return "test" if bucket == 0 else "train"


def generate(difficulty: int, split: str, size: int, seed: int = 0) -> list[ArithProblem]:
    """`size` distinct problems of `split`, in generation order (deterministic in all arguments)."""
    if split not in SPLITS:
        raise BenchmarkError(f"arith has no split {split!r}; known: {', '.join(SPLITS)}")
    if not 1 <= difficulty <= 4:
        raise BenchmarkError(f"arith difficulty must be 1 to 4, got {difficulty}")
    rng = random.Random(f"{GENERATOR_VERSION}/d{difficulty}/s{seed}/{split}")
    seen: set[str] = set()
    problems: list[ArithProblem] = []
    for _ in range(size * 200):
        if len(problems) == size:
            break
        candidate = _write(rng, difficulty)
        if candidate.question in seen or split_of(candidate.question) != split:
            continue
        seen.add(candidate.question)
        problems.append(replace(candidate, index=len(problems)))
    if len(problems) < size:
        raise BenchmarkError(f"arith d{difficulty} {split}: only {len(problems)} distinct problems found")
    return problems


def load(split: str, difficulty: int = 1, size: int = 200, seed: int = 0) -> LoadedBenchmark:
    source = f"{GENERATOR_VERSION} (difficulty {difficulty}, seed {seed})"
    problems = [
        Problem(id=f"arith/d{difficulty}/s{seed}/{split}/{p.index}", benchmark="arith", split=split,
                source=source, question=p.question, answer=float(p.answer), answer_text=str(p.answer),
                reference=p.solution)
        for p in generate(difficulty, split, size, seed)
    ]
    return LoadedBenchmark(problems, [], source)
