"""`imprint lm demo`: the language front's whole job offline on the CPU: teach the embedded
SmolLM2 invented facts with LoRA and with HFT, apply LiNeS to the LoRA run, and show what each
learned (held-out phrasings of the facts) beside what it kept (the control suite).

The demo teaches 12 facts (every training phrasing of them) so that a few dozen steps on two
CPU cores suffice; the benchmark (benchmarks/lm_forgetting.py) uses the whole task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from imprint.families.causal_lm import EMBEDDED
from imprint.lm.data import write_jsonl
from imprint.lm.tasks import make_task

log = logging.getLogger("imprint")

FACTS = 12
RUNS = {  # method -> its flags: LoRA at a LoRA rate, HFT at a full-fine-tuning one
    "lora": {"method": "lora", "lr": 1e-3},
    "hft": {"method": "hft", "lr": 1e-4},
}


def demo_data(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The first FACTS facts of the shipped facts task: their training phrasings and held-out questions."""
    task = make_task("facts", seed)
    test = task.test[:FACTS]
    answers = {r["answer"] for r in test}
    train = [r for r in task.train if r["answer"] in answers]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(test, folder / "test.jsonl")
    return folder / "train.jsonl", folder / "test.jsonl"


def run_demo(output: Path, steps: int = 60, model: str = EMBEDDED, batch_size: int = 4) -> list[dict]:
    from imprint.lm.evaluate import EVALUATION_FILE, evaluate_run
    from imprint.lm.lines import lines
    from imprint.lm.report import write_report
    from imprint.lm.settings import build_config
    from imprint.lm.train import train

    train_file, test_file = demo_data(output / "data")
    runs = []
    for name, flags in RUNS.items():  # each run evaluates itself when it ends
        run = output / f"facts-{name}"
        if not (run / EVALUATION_FILE).is_file():
            if not (run / "metadata.json").is_file():
                cfg = build_config({}, {"model": model, "data": str(train_file), "validation_data": str(test_file),
                                        "output": str(run), "steps": steps, "batch_size": batch_size,
                                        "checkpoint_every": 0, "max_new_tokens": 32, **flags})
                train(cfg)
            else:
                evaluate_run(run, max_new_tokens=32)
        runs.append(run)
    lines_run = output / "facts-lora-lines"
    if not (lines_run / EVALUATION_FILE).is_file():
        lines(output / "facts-lora", lines_run, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), max_new_tokens=32)
    runs.append(lines_run)
    results = [json.loads((run / EVALUATION_FILE).read_text()) for run in runs]
    report = write_report(results, output / "report.html")
    print(table(results))
    print(f"report: {report}")
    return results


def table(results: list[dict]) -> str:
    def fmt(value) -> str:
        return "   -" if value is None else f"{value:.2f}"

    lines_ = [f"{'run':20s} {'target':>7s} {'base':>7s} {'control kept':>13s} {'KL drift':>9s}"]
    for r in results:
        lines_.append(f"{Path(r['run']).name:20s} {fmt(r['target']['accuracy']):>7s} "
                      f"{fmt(r['target']['base_accuracy']):>7s} {fmt(r['control']['retention']):>13s} "
                      f"{r['kl_drift']:9.4f}")
    return "\n".join(lines_)
