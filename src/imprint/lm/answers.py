"""How a language model's answer is checked against the expected one.

Each test record names its `match`: the rule that decides whether a free-text generation counts
as right. The rules are loose where models are chatty (`contains`, `final_number`) and strict
where the format is the skill (`exact`, `regex`).
"""

from __future__ import annotations

import math
import re

from imprint.util.errors import ImprintError

MATCHES = ("contains", "exact", "final_number", "regex")

# quotes and punctuation a model wraps an answer in ("Quelmar." or "'stone blue'")
_SURROUNDING = "\"'`“”‘’.,;:!?()[]{}*_ \t\n"
# a minus counts only where it is not a subtraction ("71 - 17" is 71 and 17; "5-3" is 5 and 3)
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(_SURROUNDING)


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def check_match(match: str, where: str) -> None:
    if match not in MATCHES:
        raise ImprintError(f"{where}: unknown match {match!r}; choose one of {', '.join(MATCHES)}")


def is_correct(output: str, answer: str, match: str) -> bool:
    check_match(match, "is_correct")
    if match == "regex":
        return re.search(answer, output, re.DOTALL) is not None
    if match == "final_number":
        got = last_number(output)
        return got is not None and math.isclose(got, float(answer.replace(",", "")), abs_tol=1e-9)
    want = normalise(answer)
    if not want:
        return False
    if match == "exact":
        first_line = output.strip().split("\n", 1)[0]
        return normalise(output) == want or normalise(first_line) == want
    # whole words only: "art" must not match inside "start"
    return re.search(rf"(?<!\w){re.escape(want)}(?!\w)", normalise(output)) is not None
