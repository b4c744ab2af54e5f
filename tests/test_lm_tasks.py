"""The language front's shipped data: answer checking, the generated tasks and the control suite.
No model is loaded: these check the data and the rules, not a model's answers."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from imprint.lm.answers import MATCHES, check_match, is_correct, last_number
from imprint.lm.control import CONTROL, GENERAL_PROMPTS, control_suite
from imprint.lm.data import write_jsonl
from imprint.lm.tasks import FACT_RELATIONS, TASKS, make_task
from imprint.util.errors import ImprintError

KEYS = {"prompt", "completion", "answer", "match"}


# ---- answers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("output, answer, expected", [
    ("The capital of Veloria is Quelmar.", "Quelmar", True),
    ("quelmar", "QUELMAR", True),
    ("It absorbs carbon  dioxide from the air.", "carbon dioxide", True),
    ("The founders of Quelmars Inc.", "Quelmar", False),   # inside a longer word
    ("Let us start.", "art", False),
    ("It was founded in 17430.", "1743", False),
    ("I do not know.", "Quelmar", False),
])
def test_contains_matches_whole_words(output, answer, expected):
    assert is_correct(output, answer, "contains") is expected


@pytest.mark.parametrize("output, answer, expected", [
    ("stone blue river", "stone blue river", True),
    ('"Stone blue river."', "stone blue river", True),
    ("stone  blue\triver", "stone blue river", True),
    ("stone blue river\nThat is the reversed order.", "stone blue river", True),
    ("The answer is stone blue river", "stone blue river", False),
    ("river blue stone", "stone blue river", False),
    ("", "yes", False),
])
def test_exact(output, answer, expected):
    assert is_correct(output, answer, "exact") is expected


@pytest.mark.parametrize("output, answer, expected", [
    ("23 + 48 = 71. 71 - 17 = 54. The answer is 54.", "54", True),
    ("23 + 48 = 71. 71 - 17 = 54. The answer is 54.", "71", False),  # the last number counts
    ("30 - 93 = -63. -63 - 22 = -85.", "-85", True),
    ("71 - 17", "17", True),          # a minus between numbers is subtraction, not a sign
    ("5-3", "3", True),
    ("It costs 1,234 dollars.", "1234", True),
    ("It costs 1,234 dollars.", "1,234", True),
    ("The price is 3.50.", "3.5", True),
    ("one, two, 3", "3", True),
    ("no number here", "0", False),
])
def test_final_number(output, answer, expected):
    assert is_correct(output, answer, "final_number") is expected


def test_last_number():
    assert last_number("between 12 and 15 apples") == 15
    assert last_number("-7") == -7
    assert last_number("none") is None


def test_regex_is_case_sensitive_and_spans_lines():
    assert is_correct("Sure: CAT", "CAT", "regex")
    assert not is_correct("cat", "CAT", "regex")
    assert is_correct("1. apples\n2. pears", r"1\..*2\.", "regex")


def test_unknown_match_names_the_place_and_the_choices():
    check_match("contains", "data.jsonl line 3")
    with pytest.raises(ImprintError, match=r"data\.jsonl line 3.*contains, exact, final_number, regex"):
        check_match("fuzzy", "data.jsonl line 3")
    with pytest.raises(ImprintError):
        is_correct("x", "x", "fuzzy")


# ---- tasks -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tasks():
    return {name: make_task(name, seed=0) for name in TASKS}


def test_three_tasks_of_the_right_size(tasks):
    assert set(tasks) == {"facts", "transform", "arithmetic"}
    for name, task in tasks.items():
        assert task.name == name and task.description
        assert 250 <= len(task.train) <= 450 and 80 <= len(task.test) <= 120, name


def test_records_have_the_four_keys_and_pass_their_own_check(tasks):
    for task in tasks.values():
        for r in task.train + task.test:
            assert set(r) == KEYS and all(isinstance(v, str) and v for v in r.values())
            assert r["match"] in MATCHES
            assert is_correct(r["completion"], r["answer"], r["match"]), r


def test_deterministic_for_a_seed_and_different_for_another():
    for name in TASKS:
        a, b, other = make_task(name, 3), make_task(name, 3), make_task(name, 4)
        assert a.train == b.train and a.test == b.test
        assert a.train != other.train and a.test != other.test


def test_no_test_prompt_in_train(tasks):
    for task in tasks.values():
        assert not {r["prompt"] for r in task.test} & {r["prompt"] for r in task.train}
        assert len({r["prompt"] for r in task.test}) == len(task.test)


def test_the_validation_split_is_held_out_like_the_test_and_apart_from_it(tasks):
    for task in tasks.values():
        prompts = {r["prompt"] for r in task.validation}
        assert len(prompts) == len(task.validation) == len(task.test), task.name
        assert not prompts & {r["prompt"] for r in task.train} and not prompts & {r["prompt"] for r in task.test}
    facts = tasks["facts"]
    # each fact once more, in the held-out phrasing its test question does not use
    assert sorted(r["completion"] for r in facts.validation) == sorted(r["completion"] for r in facts.test)
    tested = {r["completion"]: _template_of(r["prompt"])[1] for r in facts.test}
    for r in facts.validation:
        relation, template, _ = _template_of(r["prompt"])
        assert template in FACT_RELATIONS[relation][2] and template != tested[r["completion"]]


def _template_of(prompt: str) -> tuple[str, str, str]:
    """(relation, template, entity) of a facts prompt; exactly one template must fit."""
    fits = []
    for relation, (_, train_questions, test_questions) in FACT_RELATIONS.items():
        for template in train_questions + test_questions:
            m = re.fullmatch(re.escape(template).replace(r"\{e\}", "(.+)"), prompt)
            if m:
                fits.append((relation, template, m.group(1)))
    assert len(fits) == 1, (prompt, fits)
    return fits[0]


def test_facts_are_tested_in_held_out_phrasings(tasks):
    facts = tasks["facts"]
    train_templates = {_template_of(r["prompt"])[1] for r in facts.train}
    trained = defaultdict(list)   # the fact's sentence -> its training records
    for r in facts.train:
        trained[r["completion"]].append(r)
    for r in facts.test:
        relation, template, entity = _template_of(r["prompt"])
        assert template not in train_templates and template in FACT_RELATIONS[relation][2]
        # the same fact, with the same answer, was trained in 3 other phrasings
        same = trained[r["completion"]]
        assert len(same) == 3 and all(t["answer"] == r["answer"] for t in same)
        assert len({t["prompt"] for t in same}) == 3
        assert entity in r["completion"] and r["answer"] not in r["prompt"]


def test_fact_answers_are_unique_invented_words_or_years(tasks):
    test = tasks["facts"].test
    answers = [r["answer"] for r in test]
    assert len(set(answers)) == len(answers)
    for a in answers:
        assert re.fullmatch(r"1\d{3}|[A-Z][a-z]{3,}( [A-Z][a-z]{3,})?", a), a


def test_transform_answers_reverse_the_words(tasks):
    for r in tasks["transform"].train + tasks["transform"].test:
        instruction, words = r["prompt"].split(": ", 1)
        assert instruction == "Reverse the order of the words"
        assert 3 <= len(words.split()) <= 5
        assert r["answer"] == r["completion"] == " ".join(words.split()[::-1])


_STEP = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\.")


def test_arithmetic_steps_are_right(tasks):
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    for r in tasks["arithmetic"].train + tasks["arithmetic"].test:
        a, op1, b, op2, c = re.fullmatch(r"What is (\d+) ([-+*]) (\d+) ([-+*]) (\d+)\?", r["prompt"]).groups()
        steps = _STEP.findall(r["completion"])
        assert len(steps) == 2, r
        for x, op, y, result in steps:
            assert ops[op](int(x), int(y)) == int(result), r
        (x1, o1, y1, first), (x2, o2, y2, second) = steps
        assert (x1, o1, y1, o2, y2) == (a, op1, b, op2, c) and x2 == first
        assert last_number(r["completion"]) == float(second) == float(r["answer"])


def test_unknown_task_lists_the_names():
    with pytest.raises(ImprintError, match="facts, transform, arithmetic"):
        make_task("poetry")


def test_write_jsonl(tmp_path, tasks):
    path = tmp_path / "sub" / "train.jsonl"
    write_jsonl(tasks["arithmetic"].train[:5], path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == tasks["arithmetic"].train[:5]


# ---- control -----------------------------------------------------------------------------------

def test_control_suite():
    assert len(CONTROL) >= 40
    kinds = Counter(item["kind"] for item in CONTROL)
    assert set(kinds) == {"fact", "arithmetic", "format"} and min(kinds.values()) >= 8
    for item in CONTROL:
        assert set(item) == {"prompt", "answer", "match", "kind"}
        assert item["match"] in MATCHES and item["prompt"] and item["answer"]
        if item["match"] == "regex":
            re.compile(item["answer"])
        if item["match"] == "final_number":
            float(item["answer"])
    assert len({item["prompt"] for item in CONTROL}) == len(CONTROL)


def test_control_suite_returns_copies():
    suite = control_suite()
    assert suite == CONTROL
    suite[0]["answer"] = "changed"
    assert CONTROL[0]["answer"] != "changed"


def test_general_prompts():
    assert len(GENERAL_PROMPTS) >= 15 and len(set(GENERAL_PROMPTS)) == len(GENERAL_PROMPTS)
    assert all(isinstance(p, str) and p.strip() for p in GENERAL_PROMPTS)


def test_lm_tasks_writes_the_three_splits(tmp_path, capsys):
    from imprint.cli import main

    assert main(["lm", "tasks", "--output", str(tmp_path), "--task", "transform", "--task", "arithmetic"]) == 0
    for name in ("transform", "arithmetic"):
        task = make_task(name)
        for split in ("train", "test", "validation"):
            lines = (tmp_path / name / f"{split}.jsonl").read_text().splitlines()
            assert [json.loads(line) for line in lines] == getattr(task, split)
    assert "300 training, 100 test, 100 validation examples" in capsys.readouterr().out


def test_preference_pairs_reject_a_wrong_answer_of_the_same_form(tasks, tmp_path):
    from imprint.lm.answers import is_correct, last_number
    from imprint.lm.data import read_jsonl
    from imprint.lm.tasks import preference_records

    for name, task in tasks.items():
        pairs = preference_records(name, task.train)
        assert len(pairs) == len(task.train)
        for pair, record in zip(pairs, task.train):
            assert pair["prompt"] == record["prompt"] and pair["chosen"] == record["completion"]
            assert is_correct(pair["chosen"], pair["answer"], pair["match"])
            assert not is_correct(pair["rejected"], pair["answer"], pair["match"]), (name, pair)
            if name == "facts":  # the same sentence with another entity's answer of the same kind
                wrong = pair["rejected"].replace(pair["chosen"].split(record["answer"])[0], "", 1)
                assert pair["rejected"] != pair["chosen"] and wrong
            elif name == "arithmetic":  # worked steps, consistent with their own slip
                a, op1, b, op2, c = pair["prompt"][8:-1].split()
                first = int(last_number(pair["rejected"].split(". ")[0]))
                assert f"{first} {op2} {c}" in pair["rejected"]
        assert preference_records(name, task.train) == pairs  # seeded
    path = tmp_path / "p.jsonl"
    from imprint.lm.data import write_jsonl

    write_jsonl(preference_records("facts", tasks["facts"].train[:5]), path)
    assert all(r.rejected for r in read_jsonl(path))
