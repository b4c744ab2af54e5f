"""Conjugate prompting (Kotha, Springer, Raghunathan, "Understanding Catastrophic Forgetting in
Language Models via Implicit Inference", ICLR 2024, arXiv 2309.10105): ask through an invertible
transform of the prompt, invert the answer, and see whether an ability the fine-tuning suppressed
comes back.

Taken from the paper: fine-tuning skews which task the model infers from a prompt toward the
fine-tuning data; a prompt moved away from that data (the authors translate it, or write it in
Leetspeak or Pig Latin) can recover the pre-trained behaviour; the answer is mapped back before
it is scored.

Chosen here (the authors' transforms came from online translators; a 135M model translates
poorly and no translator ships offline): two programmatic transforms, each with its inverse:
- `leet`: a, e, i, o, s, t -> 4, 3, 1, 0, 5, 7 in the prompt; in the answer, digits inside words
  that also hold letters are mapped back (numbers stay numbers);
- `upper`: the prompt in capitals; the answer as given (every check but regex ignores case).
Measured on the control suite: the base's and the run's accuracy asked plainly and through the
transform, and of the items the run lost (the base right, the run wrong when asked plainly), the
share it gets right through the transform: the lost ability the transform recovers, beside the
base's own change under the transform (what the transform costs where nothing was forgotten).
"""

from __future__ import annotations

import re
from typing import Callable

LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7",
                      "A": "4", "E": "3", "I": "1", "O": "0", "S": "5", "T": "7"})
UNLEET = {"4": "a", "3": "e", "1": "i", "0": "o", "5": "s", "7": "t"}
_MIXED_WORD = re.compile(r"\b(?=\w*[A-Za-z])(?=\w*\d)\w+\b")


def leet(text: str) -> str:
    return text.translate(LEET)


def unleet(text: str) -> str:
    """Digits back to letters inside words that mix both ("P4r15" -> "Paris"; "42" stays)."""
    return _MIXED_WORD.sub(lambda m: "".join(UNLEET.get(c, c) for c in m.group(0)), text)


TRANSFORMS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "leet": (leet, unleet),
    "upper": (str.upper, lambda text: text),
}


def conjugate_prompting(base_lm, tuned_lm_apply, transform: str, max_new_tokens: int,
                        system_prompt: str | None = None) -> dict:
    """On the control suite: accuracy of the base and of the run, plain and through `transform`;
    the run's lost items and how many the transform recovers. `tuned_lm_apply(base_lm)` turns the
    base into the run (after the base's answers are taken)."""
    from imprint.lm.answers import is_correct
    from imprint.lm.control import control_suite
    from imprint.lm.data import with_system
    from imprint.lm.evaluate import base_answers, generate_answers

    forward, inverse = TRANSFORMS[transform]
    control = control_suite()

    def ask(lm, transformed: bool, base: bool = False) -> list[bool]:
        prompts = [forward(c["prompt"]) if transformed else c["prompt"] for c in control]
        conversations = [with_system([{"role": "user", "content": p}], system_prompt) for p in prompts]
        # the base model's answers are cached (as evaluation's): judging many runs generates them once
        answers = (base_answers(lm, conversations, max_new_tokens)[0] if base
                   else generate_answers(lm, conversations, max_new_tokens))
        if transformed:
            answers = [inverse(a) for a in answers]
        return [is_correct(a, c["answer"], c["match"]) for a, c in zip(answers, control)]

    base_plain, base_transformed = ask(base_lm, False, base=True), ask(base_lm, True, base=True)
    tuned_lm_apply(base_lm)
    run_plain, run_transformed = ask(base_lm, False), ask(base_lm, True)
    lost = [i for i in range(len(control)) if base_plain[i] and not run_plain[i]]
    recovered = [i for i in lost if run_transformed[i]]
    n = len(control)
    return {
        "transform": transform, "prompts": n,
        "base_accuracy": sum(base_plain) / n, "base_accuracy_transformed": sum(base_transformed) / n,
        "run_accuracy": sum(run_plain) / n, "run_accuracy_transformed": sum(run_transformed) / n,
        "lost": len(lost), "recovered": len(recovered),
        "recovered_share": len(recovered) / len(lost) if lost else None,
        "recovered_prompts": [control[i]["prompt"] for i in recovered],
    }
