"""The paired differences the language-model benchmarks report each paper's claim with
(benchmarks/lm_forgetting.py, used by lm_objectives.py too), against a direct computation on fixed
per-item results."""

import importlib.util
import math
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_forgetting.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lm_forgetting_under_test", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation(target: list[int], control: dict[str, int]) -> dict:
    return {"target_right": [bool(x) for x in target], "control_right": {k: bool(v) for k, v in control.items()}}


# two tasks, two seeds, methods a and b; control prompt "z" was lost by the base in b's seed-1 run
# of task t2 (so it is missing there and must not be paired)
EVALUATIONS = {
    ("t1", "a", 0): evaluation([1, 1, 0, 1], {"x": 1, "y": 1}),
    ("t1", "a", 1): evaluation([1, 0, 0, 1], {"x": 1, "y": 0}),
    ("t1", "b", 0): evaluation([0, 1, 0, 0], {"x": 0, "y": 1}),
    ("t1", "b", 1): evaluation([1, 1, 0, 0], {"x": 0, "y": 0}),
    ("t2", "a", 0): evaluation([1, 1], {"x": 1, "z": 1}),
    ("t2", "a", 1): evaluation([0, 1], {"x": 0, "z": 1}),
    ("t2", "b", 0): evaluation([1, 0], {"x": 1, "z": 0}),
    ("t2", "b", 1): evaluation([0, 0], {"x": 1}),
}


def direct(values: list[float]) -> tuple[float, float, float, int]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, mean - 1.96 * sd / math.sqrt(n), mean + 1.96 * sd / math.sqrt(n), n


def test_paired_differences_are_per_item_over_tasks_and_seeds(bench):
    result = bench.paired(EVALUATIONS, "a", "b", ["t1", "t2"], [0, 1])
    target = [1, 0, 0, 1] + [0, -1, 0, 1] + [0, 1] + [0, 1]
    control = [1, 0] + [1, 0] + [0, 1] + [-1]  # sorted keys; t2 seed 1 pairs "x" alone
    assert result["target"] == pytest.approx(direct(target))
    assert result["control"] == pytest.approx(direct(control))
    one_task = bench.paired(EVALUATIONS, "a", "b", ["t2"], [0, 1])
    assert one_task["target"][0] == pytest.approx(0.5) and one_task["target"][3] == 4


def test_the_noise_floor_pairs_each_seed_with_the_next(bench):
    floor = bench.paired(EVALUATIONS, "a", "a", ["t1"], [0], seed_b=lambda s: s + 1)
    assert floor["target"] == pytest.approx(direct([0, 1, 0, 0]))
    assert floor["control"] == pytest.approx(direct([0, 1]))


def test_the_claims_table_has_a_row_per_task_and_one_pooled(bench):
    rows = bench.claims_table(EVALUATIONS, ["t1", "t2"], [0, 1], claims=[("P", "a beats b", "a", "b")],
                              floors=[("a against a", "a")])
    body = [r for r in rows[2:]]
    assert [r.split("|")[4].strip() for r in body] == ["t1", "t2", "all, pooled"] * 2
    assert body[0].startswith("| noise floor | a against a | a - a' |")
    assert body[3].startswith("| P | a beats b | a - b |") and body[4].startswith("|  | |  |")
    # the last column: each seed's own mean difference, target then control
    t1_seed0 = sum([1, 0, 0, 1]) / 4, sum([1, 0]) / 2
    t1_seed1 = sum([0, -1, 0, 1]) / 4, sum([1, 0]) / 2
    assert body[3].split("|")[7].strip() == (f"{t1_seed0[0]:+.2f} {t1_seed1[0]:+.2f}; "
                                             f"{t1_seed0[1]:+.2f} {t1_seed1[1]:+.2f}")
    assert f"{direct([1, 0, 0, 1, 0, -1, 0, 1])[0]:+.3f}" in body[3]
