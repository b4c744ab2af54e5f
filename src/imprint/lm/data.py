"""The language task's data: JSONL records read and checked line by line, rendered with the
model's own chat template, tokenized once, with labels on the answer tokens only; batches
grouped by length and drawn from (seed, epoch), so a step's batch is the same after a resume.

A record is {"messages": [{"role", "content"}, ...]} (every assistant turn is trained) or
{"prompt": str, "completion": str}; both may carry "answer" and "match" (lm/answers.py), which
evaluation checks the model's answer with (the completion, matched exactly, where absent). A
preference record (--objective dpo) is {"prompt", "chosen", "rejected"}, as TRL's: the prompt a
string or a list of messages, each answer a string or one assistant message; its chosen answer is
what SFT-like objectives and evaluation use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from imprint.util.rng import step_generator
from imprint.util.errors import ImprintError

BATCH_STREAM = 10  # the random stream of the batch order
VALIDATION_STREAM = 11  # of the validation split
IGNORE = -100  # label of a token that is not trained (prompt, template, padding)
ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    messages: list[dict]     # the conversation, ending with the assistant turn
    answer: str              # what evaluation checks the model's answer against
    match: str               # how (lm/answers.MATCHES)
    line: int                # 1-based line in its file, for errors
    rejected: str | None = None  # a preference record's rejected answer (messages end with the chosen one)

    def to_json(self) -> dict:
        out = {"messages": self.messages, "answer": self.answer, "match": self.match}
        return {**out, "rejected": self.rejected} if self.rejected is not None else out

    @property
    def prompt_messages(self) -> list[dict]:
        """The conversation up to the last assistant turn: what the model answers at evaluation."""
        return self.messages[:-1]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    rejected: "Example | None" = None  # a preference pair's rejected answer, tokenized the same way
    reference: tuple[float, float] | None = None  # the reference model's log-probabilities of (chosen, rejected)


def read_jsonl(path: str | Path, flag: str = "--data") -> list[Record]:
    """Every record of a JSONL file, checked; the first bad line is a one-line error naming it."""
    from imprint.lm.answers import check_match

    p = Path(path)
    if not p.is_file():
        raise ImprintError(f"{flag} {path}: file not found; pass a JSONL file of chat `messages` or "
                           "`prompt`/`completion` records")
    records = []
    with p.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{flag} {path} line {number}"
            try:
                data = json.loads(text)
            except ValueError as e:
                raise ImprintError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix the line") from e
            if not isinstance(data, dict):
                raise ImprintError(f"{where}: a record must be a JSON object with `messages` or `prompt`/`completion`")
            messages, rejected = record_messages(data, where)
            answer = data.get("answer", messages[-1]["content"])
            match = data.get("match", "exact" if "answer" not in data else "contains")
            if not isinstance(answer, str) or not answer.strip():
                raise ImprintError(f"{where}: `answer` must be a non-empty string")
            check_match(match, where)
            records.append(Record(messages, answer, match, number, rejected))
    if not records:
        raise ImprintError(f"{flag} {path}: no records; the file is empty")
    return records


def write_jsonl(records: list[dict], path: str | Path) -> None:
    """Records (dicts) as a JSONL file that read_jsonl reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def record_messages(data: dict, where: str) -> tuple[list[dict], str | None]:
    """(the conversation ending with the answer trained on, a preference record's rejected answer)."""
    if "messages" in data:  # also a preference record as imprint writes it back (to_json)
        messages = checked_messages(data["messages"], "messages", where)
        if messages[-1]["role"] != "assistant":
            raise ImprintError(f"{where}: the last message must be the assistant's answer (role assistant)")
        rejected = data.get("rejected")
        if rejected is not None and (not isinstance(rejected, str) or not rejected.strip()):
            raise ImprintError(f"{where}: `rejected` must be non-empty text")
        return messages, rejected
    if "chosen" in data or "rejected" in data:
        return preference_messages(data, where)
    missing = [k for k in ("prompt", "completion") if k not in data]
    if missing:
        raise ImprintError(f"{where}: missing field `{missing[0]}`; a record has `messages`, or `prompt` and "
                           "`completion`")
    for key in ("prompt", "completion"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise ImprintError(f"{where}: `{key}` is empty; give it text")
    return [{"role": "user", "content": data["prompt"]}, {"role": "assistant", "content": data["completion"]}], None


def checked_messages(messages, key: str, where: str) -> list[dict]:
    """A list of {"role", "content"} messages, each checked."""
    if not isinstance(messages, list) or not messages:
        raise ImprintError(f"{where}: `{key}` must be a non-empty list of {{\"role\", \"content\"}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ImprintError(f"{where}: {key}[{i}] must be {{\"role\": system|user|assistant, \"content\": text}}")
        if not m["content"].strip():
            raise ImprintError(f"{where}: {key}[{i}] has empty content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def preference_messages(data: dict, where: str) -> tuple[list[dict], str]:
    """A preference record's prompt and chosen answer as a conversation, and its rejected answer."""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in data]
    if missing:
        raise ImprintError(f"{where}: missing field `{missing[0]}`; a preference record has `prompt`, `chosen` "
                           "and `rejected`")
    prompt = data["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ImprintError(f"{where}: `prompt` is empty; give it text")
        prompt = [{"role": "user", "content": prompt}]
    else:
        prompt = checked_messages(prompt, "prompt", where)
        if prompt[-1]["role"] == "assistant":
            raise ImprintError(f"{where}: the prompt's last message is the assistant's; the answers go in "
                               "`chosen` and `rejected`")
    answers = []
    for key in ("chosen", "rejected"):
        value = data[key]
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
                and value[0].get("role") == "assistant":
            value = value[0].get("content")
        if not isinstance(value, str) or not value.strip():
            raise ImprintError(f"{where}: `{key}` must be non-empty text (or one assistant message)")
        answers.append(value)
    return [*prompt, {"role": "assistant", "content": answers[0]}], answers[1]


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def tokenize_record(tokenizer, record: Record, system_prompt: str | None = None) -> Example:
    """The conversation through the chat template; labels are the tokens of each assistant turn
    (its text and the template's end-of-turn), IGNORE elsewhere. The text is cut where each
    assistant turn starts, as rendered by the template itself, so no template is hard-coded. A
    preference record's rejected answer is tokenized the same way, in its place."""
    example = tokenize_messages(tokenizer, record, with_system(record.messages, system_prompt))
    if record.rejected is not None:
        swapped = [*record.messages[:-1], {"role": "assistant", "content": record.rejected}]
        example.rejected = tokenize_messages(tokenizer, record, with_system(swapped, system_prompt))
    return example


def tokenize_messages(tokenizer, record: Record, messages: list[dict]) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        through = render(tokenizer, messages[:i + 1])
        if not before.startswith(done) or not through.startswith(before):
            raise ImprintError(f"line {record.line}: the model's chat template does not render the conversation "
                               "as a growing prefix; imprint cannot find the answer tokens with this template")
        for text, trained in ((before[len(done):], False), (through[len(before):], True)):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        done = through
    return Example(ids, labels)


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def tokenize_all(tokenizer, records: list[Record], max_length: int, flag: str = "--data",
                 system_prompt: str | None = None) -> list[Example]:
    examples = []
    for record in records:
        example = tokenize_record(tokenizer, record, system_prompt)
        longest = max(len(e.input_ids) for e in (example, example.rejected) if e is not None)
        if longest > max_length:
            raise ImprintError(f"{flag} line {record.line}: {longest} tokens, over --max-length "
                               f"{max_length}; shorten the example or raise --max-length")
        if not any(label != IGNORE for label in example.labels):
            raise ImprintError(f"{flag} line {record.line}: no answer tokens after the chat template; check the record")
        examples.append(example)
    return examples


def split_validation(records: list[Record], share: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(training, validation): a seeded share of the records held out (at least one where share > 0)."""
    if share <= 0:
        return records, []
    order = torch.randperm(len(records), generator=step_generator(seed, VALIDATION_STREAM, 0)).tolist()
    n = max(1, round(len(records) * share))
    if n >= len(records):
        raise ImprintError(f"--validation-share {share:g} leaves no training examples of {len(records)}; lower it")
    held = set(order[:n])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """One epoch's batches: a seeded shuffle; grouped by length, each run of 32 batches' worth of
    examples is sorted by length before it is cut (less padding), and the batches are shuffled again."""
    generator = step_generator(seed, BATCH_STREAM, epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if group_by_length:
        chunk = batch_size * 32
        order = [i for start in range(0, len(order), chunk)
                 for i in sorted(order[start:start + chunk], key=lambda j: -lengths[j])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


class BatchPlan:
    """Batch number -> example indices, epoch after epoch; the same for a seed wherever it resumes."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group_by_length
        self.per_epoch = -(-len(lengths) // batch_size)
        self._epoch, self._batches = -1, []

    def __call__(self, number: int) -> list[int]:
        epoch, within = divmod(number, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group)
        return self._batches[within]


def collate(examples: list[Example], pad_id: int, padding_free: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (IGNORE on padding); or, padding-free, the
    examples end to end in one row with position ids that restart at each example and no attention
    mask, which transformers reads as a block-diagonal causal mask (one block per example)."""
    if padding_free:
        return collate_padding_free(examples)
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_padding_free(examples: list[Example]) -> dict[str, torch.Tensor]:
    """One row of every example's tokens. An example's first label is IGNORE (in a padded row it is
    never a target either), so no example learns to predict the one after it."""
    ids = [t for e in examples for t in e.input_ids]
    labels = [label for e in examples for label in [IGNORE, *e.labels[1:]]]
    positions = [p for e in examples for p in range(len(e.input_ids))]
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]),
            "labels": torch.tensor([labels])}
