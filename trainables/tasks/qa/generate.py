"""Writes the shipped QA data set: the four UnifiedQA formats over paragraphs written for this project.

python -m trainables.tasks.qa.generate [OUT_DIR] [--seed N]

Paragraphs describe invented towns, scientists, companies and animal species, so no model can
answer from memory: every answer is in, or follows from, the paragraph. Each record yields
questions in all four formats:

- yes_no: a claim the paragraph confirms or contradicts ("yes" / "no", balanced);
- multiple_choice: the choices are in the input and the answer is one of them;
- extractive: the answer is a span of the paragraph;
- abstractive: a short free answer that the paragraph implies but does not spell out
  (a difference of two years, a fact restated in other words, two facts combined).

Deterministic for a seed: the same seed gives byte-identical files (a test checks the shipped
files against this script's defaults).
"""

import random
from pathlib import Path

from trainables.tasks.data import generator_cli
from trainables.tasks.data import write_splits as write_jsonl_splits

SEED = 20261123
RECORDS_PER_DOMAIN = 30
TEST_SHARE = 0.25
DEFAULT_OUT = Path(__file__).resolve().parent / "data"

ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "br", "dr", "kl", "st", "tr"]
VOWELS = ["a", "e", "i", "o", "u", "au", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "m"]

INDUSTRIES = [
    "weaving",
    "salt mining",
    "shipbuilding",
    "glassmaking",
    "cheese making",
    "clockmaking",
    "paper milling",
    "wine growing",
    "pottery",
    "rope making",
]
LANDMARKS = [
    "a stone bridge",
    "a lighthouse",
    "a clock tower",
    "a round church",
    "an old salt warehouse",
    "a covered market",
    "a windmill",
    "a city gate",
]
FIELDS = {
    "botanist": "botany",
    "astronomer": "astronomy",
    "chemist": "chemistry",
    "geologist": "geology",
    "mathematician": "mathematics",
    "physician": "medicine",
}
DISCOVERIES = {
    "botany": "a frost-resistant barley",
    "astronomy": "a faint double star",
    "chemistry": "a cheap blue dye",
    "geology": "an underground lake",
    "mathematics": "a faster way to compute tide tables",
    "medicine": "a treatment for marsh fever",
}
PRODUCTS = [
    "bicycles",
    "pianos",
    "umbrellas",
    "oil lamps",
    "sewing machines",
    "roof tiles",
    "pocket knives",
    "fishing nets",
]
ANIMAL_CLASSES = ["bird", "frog", "beetle", "lizard", "fish", "bat"]
HABITATS = ["mountain lakes", "salt marshes", "pine forests", "desert caves", "river deltas", "rocky coasts"]
DIETS = ["seeds", "insects", "algae", "small fish", "berries", "snails"]
COLOURS = ["green", "grey", "copper-red", "yellow", "black", "pale blue"]


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


def _distractors(correct, pool, rng: random.Random, count: int = 3) -> list:
    choices = [correct, *rng.sample([item for item in pool if item != correct], count)]
    rng.shuffle(choices)
    return choices


def _yes_no(question_true: str, question_false: str, rng: random.Random) -> dict:
    answer = rng.choice(["yes", "no"])
    return {
        "format": "yes_no",
        "question": question_true if answer == "yes" else question_false,
        "answer": answer,
    }


def _choice(question: str, correct, pool, rng: random.Random) -> dict:
    choices = [str(choice) for choice in _distractors(correct, pool, rng)]
    return {"format": "multiple_choice", "question": question, "choices": choices, "answer": str(correct)}


def _extractive(question: str, answer: str) -> dict:
    return {"format": "extractive", "question": question, "answer": answer}


def _abstractive(question: str, answer: str) -> dict:
    return {"format": "abstractive", "question": question, "answer": answer}


def town(rng: random.Random) -> tuple[str, list[dict]]:
    name, river, other_river = _name(rng, 2), _name(rng, 2), _name(rng, 2)
    founded = rng.randrange(900, 1750)
    landmark_year = founded + rng.randrange(40, 400)
    industry, landmark = rng.choice(INDUSTRIES), rng.choice(LANDMARKS)
    population = rng.randrange(3, 90) * 1000
    context = (
        f"{name} was founded in {founded} on the banks of the {river}. "
        f"{rng.choice(['For centuries the town lived from', 'Its wealth came from'])} {industry}, "
        f"and in {landmark_year} the townspeople built {landmark}, which still stands. "
        f"Today about {population:,} people live in {name}."
    )
    threshold = founded + rng.choice([-1, 1]) * rng.randrange(20, 200)
    before = founded < threshold
    questions = [
        _yes_no(
            f"Does the {river} flow through {name}?", f"Does the {other_river} flow through {name}?", rng
        ),
        {
            "format": "yes_no",
            "question": f"Was {name} founded before {threshold}?",
            "answer": "yes" if before else "no",
        },
        _choice(f"What did {name} live from for centuries?", industry, INDUSTRIES, rng),
        _choice(
            f"In which year was {name} founded?",
            founded,
            [founded + offset for offset in (-120, -60, 45, 90, 150)],
            rng,
        ),
        _extractive(f"Which river does {name} lie on?", river),
        _extractive(f"What did the townspeople of {name} build in {landmark_year}?", landmark),
        _abstractive(f"How old was {name} when {landmark} was built?", f"{landmark_year - founded} years"),
        _abstractive(
            f"What did {name} live from, and which landmark does it still have?", f"{industry} and {landmark}"
        ),
    ]
    return context, questions


def scientist(rng: random.Random) -> tuple[str, list[dict]]:
    given, family, hometown = _name(rng, 2), _name(rng, 3), _name(rng, 2)
    role = rng.choice(sorted(FIELDS))
    field = FIELDS[role]
    pronoun, possessive = rng.choice([("she", "her"), ("he", "his")])
    born = rng.randrange(1720, 1950)
    discovered = born + rng.randrange(24, 50)
    award = discovered + rng.randrange(2, 20)
    context = (
        f"{given} {family} was born in {hometown} in {born}. "
        f"Trained as a {role}, {pronoun} became known in {discovered} for finding {DISCOVERIES[field]}. "
        f"{rng.choice(['Years later', 'Eventually'])}, in {award}, {pronoun} received the Order of {hometown} "
        f"for {possessive} work."
    )
    other_role = rng.choice([item for item in FIELDS if item != role])
    questions = [
        _yes_no(f"Was {given} {family} a {role}?", f"Was {given} {family} a {other_role}?", rng),
        _yes_no(
            f"Did {family} receive an award after the discovery?",
            f"Did {family} receive an award before the discovery?",
            rng,
        ),
        _choice(f"Where was {given} {family} born?", hometown, [_name(rng, 2) for _ in range(5)], rng),
        _choice(f"Which field did {family} work in?", field, sorted(FIELDS.values()), rng),
        _extractive(f"What did {family} find in {discovered}?", DISCOVERIES[field]),
        _extractive(f"Which honour did {family} receive?", f"the Order of {hometown}"),
        _abstractive(f"How old was {family} when the discovery was made?", f"{discovered - born} years old"),
        _abstractive(
            f"How many years passed between {family}'s discovery and the award?",
            f"{award - discovered} years",
        ),
    ]
    return context, questions


def company(rng: random.Random) -> tuple[str, list[dict]]:
    founder, base, brand = f"{_name(rng, 2)} {_name(rng, 2)}", _name(rng, 2), _name(rng, 2)
    product = rng.choice(PRODUCTS)
    founded = rng.randrange(1820, 1990)
    exports = founded + rng.randrange(5, 60)
    staff = rng.randrange(2, 90) * 10
    context = (
        f"{brand} Works was set up by {founder} in {base} in {founded} to make {product}. "
        f"The firm began selling abroad in {exports}, "
        f"{rng.choice(['starting with', 'first to'])} the neighbouring countries. "
        f"It now employs {staff} people, most of them in {base}."
    )
    other_product = rng.choice([item for item in PRODUCTS if item != product])
    questions = [
        _yes_no(f"Does {brand} Works make {product}?", f"Does {brand} Works make {other_product}?", rng),
        _yes_no(
            f"Does {brand} Works employ more than {staff - 10} people?",
            f"Does {brand} Works employ more than {staff + 10} people?",
            rng,
        ),
        _choice(f"What does {brand} Works make?", product, PRODUCTS, rng),
        _choice(
            f"Who founded {brand} Works?",
            founder,
            [f"{_name(rng, 2)} {_name(rng, 2)}" for _ in range(5)],
            rng,
        ),
        _extractive(f"Where was {brand} Works set up?", base),
        _extractive(f"How many people does {brand} Works employ?", str(staff)),
        _abstractive(
            f"How old was {brand} Works when it began selling abroad?", f"{exports - founded} years"
        ),
        _abstractive(f"What does {brand} Works make, and where?", f"{product} in {base}"),
    ]
    return context, questions


def species(rng: random.Random) -> tuple[str, list[dict]]:
    animal_class = rng.choice(ANIMAL_CLASSES)
    name = f"{_name(rng, 2).lower()} {animal_class}"
    habitat, diet, colour = rng.choice(HABITATS), rng.choice(DIETS), rng.choice(COLOURS)
    nocturnal = rng.random() < 0.5
    lifespan = rng.randrange(2, 25)
    activity = "hides by day and feeds after dark" if nocturnal else "feeds in daylight and rests at night"
    context = (
        f"The {name} is a small {colour} {animal_class} found only in {habitat}. "
        f"It {activity}, living mostly on {diet}. "
        f"In the wild it can live for up to {lifespan} years."
    )
    other_habitat = rng.choice([item for item in HABITATS if item != habitat])
    questions = [
        _yes_no(f"Is the {name} found in {habitat}?", f"Is the {name} found in {other_habitat}?", rng),
        {"format": "yes_no", "question": f"Is the {name} nocturnal?", "answer": "yes" if nocturnal else "no"},
        _choice(f"What does the {name} mostly eat?", diet, DIETS, rng),
        _choice(f"What colour is the {name}?", colour, COLOURS, rng),
        _extractive(f"Where is the {name} found?", habitat),
        _extractive(f"How long can the {name} live in the wild?", f"{lifespan} years"),
        _abstractive(f"When is the {name} active?", "at night" if nocturnal else "during the day"),
        _abstractive(
            f"What kind of animal is the {name}, and what colour is it?", f"a {colour} {animal_class}"
        ),
    ]
    return context, questions


DOMAINS = {"town": town, "scientist": scientist, "company": company, "species": species}


def build_splits(seed: int = SEED) -> dict[str, list[dict]]:
    """train and test; a paragraph's questions all land in the same split, so test paragraphs are unseen."""
    rng = random.Random(seed)
    records = [(domain, *write(rng)) for domain, write in DOMAINS.items() for _ in range(RECORDS_PER_DOMAIN)]
    rng.shuffle(records)
    test_records = round(len(records) * TEST_SHARE)
    splits = {"train": records[test_records:], "test": records[:test_records]}
    numbered, next_id = {}, 0
    for split, chosen in splits.items():
        examples = [
            {"domain": domain, "context": context, **question}
            for domain, context, questions in chosen
            for question in questions
        ]
        rng.shuffle(examples)
        numbered[split] = [{"id": f"qa-{next_id + i:04d}", **example} for i, example in enumerate(examples)]
        next_id += len(examples)
    return numbered


def write_splits(out_dir: Path, seed: int = SEED) -> None:
    write_jsonl_splits(out_dir, build_splits(seed))


if __name__ == "__main__":
    cli = generator_cli(__doc__, DEFAULT_OUT, SEED)
    args = cli.parse_args()
    write_splits(args.out_dir, args.seed)
