"""LoRA step time and peak memory: `imprint lm train` against TRL's `SFTTrainer` (issue 17).

The same model (the embedded SmolLM2-135M-Instruct, from imprint's cache), the same data (the
shipped facts task: a chat prompt and its answer, loss on the answer), LoRA r16 / alpha 32 /
dropout 0.05 on every Linear of the blocks, AdamW at a constant lr 2e-4, 8 examples per step,
fp32 on the CPU. Each configuration runs in its own process (peak RSS is its own: the
`ru_maxrss` of that process, model load included), twice; the step time is the median interval
between the starts of consecutive optimizer steps after the warm-up steps, so data preparation,
model load and the final save are outside it. Tokens are counted per step from the batches each
tool actually built: real tokens (no padding) and computed tokens (with padding).

Configurations:
- same settings: padded batches in random order, no gradient checkpointing (TRL's defaults), and
  both with gradient checkpointing;
- each tool's own best: imprint padding-free; TRL padding-free, and TRL packing (best-fit
  decreasing bins of the mean real tokens of 8 examples, one bin per step: equal tokens per batch).

TRL runs in its own virtual environment (a benchmark-only dependency), at the same torch,
transformers and peft versions:

    python3 -m venv /work/trlvenv
    /work/trlvenv/bin/pip install torch==2.13.0 transformers==5.23.0 peft==0.21.2 accelerate trl datasets
    python benchmarks/lm_step_time.py --trl-python /work/trlvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LR, RANK, ALPHA, DROPOUT = 2e-4, 16, 32, 0.05

CONFIGS = {  # name: (tool, settings)
    "imprint padded": ("imprint", {"padding_free": False, "gradient_checkpointing": False}),
    "TRL padded": ("trl", {"padding_free": False, "gradient_checkpointing": False}),
    "imprint padded + checkpointing": ("imprint", {"padding_free": False, "gradient_checkpointing": True}),
    "TRL padded + checkpointing": ("trl", {"padding_free": False, "gradient_checkpointing": True}),
    "imprint padding-free": ("imprint", {"padding_free": True, "gradient_checkpointing": False}),
    "TRL padding-free": ("trl", {"padding_free": True, "gradient_checkpointing": False}),
    "TRL packing": ("trl", {"packing": True, "gradient_checkpointing": False}),
    "imprint padding-free + checkpointing": ("imprint", {"padding_free": True, "gradient_checkpointing": True}),
    "TRL packing + checkpointing": ("trl", {"packing": True, "gradient_checkpointing": True}),
}


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the children: one configuration each, in its own process --------------------------------------

def imprint_child(spec: dict) -> dict:
    from imprint.lm import train as lm_train
    from imprint.lm.settings import build_config

    starts, tokens = [], []
    built = lm_train.LMTask.batch

    def batch(self, step, micro):
        starts.append(time.perf_counter())
        out = built(self, step, micro)
        real = int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel()
        tokens.append((real, out["input_ids"].numel(), int((out["labels"] != -100).sum())))
        return out

    lm_train.LMTask.batch = batch
    cfg = build_config({}, {
        "model": spec["model"], "data": spec["data"], "output": spec["output"], "method": "lora",
        "rank": RANK, "alpha": float(ALPHA), "lora_dropout": DROPOUT, "lr": LR, "lr_scheduler": "constant",
        "weight_decay": 0.0, "steps": spec["steps"], "batch_size": spec["batch_size"], "seed": spec["seed"],
        "checkpoint_every": 0, "validation_share": 0.0, "evaluate": False, "group_by_length": False,
        "padding_free": spec["padding_free"], "gradient_checkpointing": spec["gradient_checkpointing"]})
    lm_train.train(cfg)
    return {"starts": starts, "tokens": tokens, "peak_rss_mib": peak_rss_mib()}


def trl_child(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    starts, tokens = [], []

    class Timed(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            starts.append(time.perf_counter())
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
            tokens.append((real, inputs["input_ids"].numel(), int((inputs["labels"] != -100).sum())))
            return super().training_step(model, inputs, num_items_in_batch)

    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    packing = spec.get("packing", False)
    config = SFTConfig(
        output_dir=spec["output"], max_steps=spec["steps"], learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, seed=spec["seed"], report_to="none", save_strategy="no",
        logging_steps=10**6, use_cpu=True, bf16=False, dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=spec["gradient_checkpointing"],
        padding_free=spec.get("padding_free", False), packing=packing,
        per_device_train_batch_size=1 if packing else spec["batch_size"],
        # padding-free without packing refuses a max_length it would not enforce; no example is near 1024
        max_length=spec["pack_length"] if packing else None if spec.get("padding_free") else 1024)
    peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = Timed(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    return {"starts": starts, "tokens": tokens, "peak_rss_mib": peak_rss_mib()}


# --- the parent -------------------------------------------------------------------------------------

def summarise(result: dict, warmup: int) -> dict:
    starts = result["starts"]
    gaps = [b - a for a, b in zip(starts, starts[1:])][warmup:]
    measured = result["tokens"][warmup:-1] or result["tokens"]
    return {"step_s": statistics.median(gaps), "mean_step_s": statistics.fmean(gaps), "steps": len(gaps),
            "real_tokens": statistics.fmean(t[0] for t in measured),
            "computed_tokens": statistics.fmean(t[1] for t in measured),
            "answer_tokens": statistics.fmean(t[2] for t in measured), "peak_rss_mib": result["peak_rss_mib"]}


def run_child(python: str, tool: str, spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        spec = {**spec, "output": str(Path(folder) / "run")}
        result = Path(folder) / "result.json"
        env = {**os.environ, "PYTHONPATH": ""} if tool == "trl" else dict(os.environ)
        subprocess.run([python, __file__, "--child", tool, "--spec", json.dumps(spec), "--result", str(result)],
                       check=True, env=env, cwd=folder)
        return json.loads(result.read_text())


def mean_batch_tokens(data: Path, model: str, batch_size: int) -> int:
    """The mean real tokens of `batch_size` examples after the chat template (the packing bin)."""
    from transformers import AutoTokenizer

    from imprint.lm.data import read_jsonl, tokenize_all

    tokenizer = AutoTokenizer.from_pretrained(model)
    examples = tokenize_all(tokenizer, read_jsonl(data), 1024)
    return round(batch_size * statistics.fmean(len(e.input_ids) for e in examples))


def spread(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON"),
                        help="python of a virtual environment with trl installed (or $TRL_PYTHON)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5, help="first step intervals left out")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="measure again the runs kept in WORK/runs.json")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "lm_step_time"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--child", choices=("imprint", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (imprint_child if args.child == "imprint" else trl_child)(json.loads(args.spec))
        Path(args.result).write_text(json.dumps(result))
        return
    if any(CONFIGS[c][0] == "trl" for c in args.configs) and not args.trl_python:
        sys.exit("--trl-python: give the python of a virtual environment with trl (see this file's opening lines)")

    work = Path(args.work)
    os.environ.setdefault("IMPRINT_CACHE", str(REPO / "benchmarks" / "_work" / "lm_forgetting" / "cache"))
    from imprint.families.causal_lm import EMBEDDED, resolve_causal_lm

    model = resolve_causal_lm(EMBEDDED)  # the converted folder in the cache (converted now if it is not there)
    data = work / "tasks" / "facts" / "train.jsonl"
    if not data.is_file():
        subprocess.run([sys.executable, "-m", "imprint.cli", "lm", "tasks", "--output", str(work / "tasks"),
                        "--task", "facts"], check=True)
    pack_length = mean_batch_tokens(data, model, args.batch_size)
    spec = {"model": model, "data": str(data), "steps": args.steps + 1, "batch_size": args.batch_size,
            "seed": args.seed, "pack_length": pack_length}
    # finished runs are kept in work/runs.json (keyed by their settings), so a failed or stopped
    # benchmark goes on where it stopped; --fresh measures everything again
    saved_path = work / "runs.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() and not args.fresh else {}
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):  # interleaved, so a slow spell of the machine hits every tool
        for name in args.configs:
            tool, settings = CONFIGS[name]
            key = json.dumps([name, repeat, args.steps, args.warmup, args.batch_size, args.seed])
            if key not in saved:
                python = sys.executable if tool == "imprint" else args.trl_python
                saved[key] = summarise(run_child(python, tool, {**spec, **settings}), args.warmup)
                saved_path.write_text(json.dumps(saved, indent=1))
            summary = saved[key]
            results.setdefault(name, []).append(summary)
            print(f"{name} (run {repeat + 1}): {summary['step_s']:.2f} s/step, {summary['real_tokens']:.0f} tokens "
                  f"({summary['computed_tokens']:.0f} computed), peak RSS {summary['peak_rss_mib']:.0f} MiB", flush=True)
    print(report(args, results, pack_length))


def versions(python: str | None) -> str:
    if not python:
        return "-"
    code = "import torch, transformers, peft, trl; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    return out.stdout.strip()


def report(args, results: dict[str, list[dict]], pack_length: int) -> str:
    import torch

    from results_file import write_section

    table = ["| configuration | s/step (median; runs) | ms per real token | real tokens / step | computed tokens / step "
             "| answer tokens | peak RSS MiB (runs) |", "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        steps = [r["step_s"] for r in runs]
        table.append(f"| {name} | {statistics.fmean(steps):.2f} ({spread(steps)}) "
                     f"| {statistics.fmean(1000 * r['step_s'] / r['real_tokens'] for r in runs):.2f} "
                     f"| {statistics.fmean(r['real_tokens'] for r in runs):.0f} "
                     f"| {statistics.fmean(r['computed_tokens'] for r in runs):.0f} "
                     f"| {statistics.fmean(r['answer_tokens'] for r in runs):.0f} "
                     f"| {statistics.fmean(r['peak_rss_mib'] for r in runs):.0f} "
                     f"({spread([r['peak_rss_mib'] for r in runs], 0)}) |")

    def per_token(run: dict) -> float:
        return run["step_s"] / run["real_tokens"]

    def ratio(a: str | None, b: str | None, of=lambda run: run["step_s"]) -> str:
        """a / b of the runs' means, and the range over every pair of their runs."""
        if a not in results or b not in results:
            return "-"
        x, y = [of(r) for r in results[a]], [of(r) for r in results[b]]
        return (f"{statistics.fmean(x) / statistics.fmean(y):.2f}x (pairs of runs {min(x) / max(y):.2f}-"
                f"{max(x) / min(y):.2f}x)")

    def fastest(tool: str) -> str | None:  # per real token: packing's bins hold fewer tokens than 8 examples
        names = [n for n in results if n.startswith(tool)]
        return min(names, key=lambda n: statistics.fmean(per_token(r) for r in results[n]), default=None)

    def rss(a: str, b: str) -> str:
        if a not in results or b not in results:
            return "-"
        x, y = (statistics.fmean(r["peak_rss_mib"] for r in results[n]) for n in (a, b))
        return f"{x:.0f} / {y:.0f} MiB"

    best_imprint, best_trl = fastest("imprint"), fastest("TRL")
    lines = [
        f"- same settings (padded, no checkpointing): imprint / TRL step time {ratio('imprint padded', 'TRL padded')}; "
        f"peak RSS {rss('imprint padded', 'TRL padded')}",
        f"- same settings with checkpointing: {ratio('imprint padded + checkpointing', 'TRL padded + checkpointing')}; "
        f"peak RSS {rss('imprint padded + checkpointing', 'TRL padded + checkpointing')}",
        f"- each tool's fastest per real token ({best_imprint} / {best_trl}): time per real token "
        f"{ratio(best_imprint, best_trl, per_token)}; peak RSS {rss(best_imprint, best_trl)}",
        "- target: at most 0.8x, and imprint's peak RSS no higher than TRL's",
    ]
    body = (f"`python benchmarks/lm_step_time.py --steps {args.steps} --warmup {args.warmup} --repeats {args.repeats} "
            f"--batch-size {args.batch_size}` on cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores); "
            f"SmolLM2-135M-Instruct, the facts task, LoRA r{RANK} alpha {ALPHA} dropout {DROPOUT} all-linear, "
            f"AdamW lr {LR:g} constant, fp32, {args.batch_size} examples per step (TRL packing: one bin of "
            f"{pack_length} tokens per step). Versions (torch, transformers, peft, trl): imprint's "
            f"{torch.__version__} and TRL's {versions(args.trl_python)}. The step time is the median interval "
            f"between the starts of steps {args.warmup + 1}-{args.steps}; each configuration ran {args.repeats} "
            "times in its own process, the runs interleaved; the figures in brackets are the runs' range.\n\n"
            + "\n".join(table) + "\n\n" + "\n".join(lines))
    return write_section(args.results, "## Language models: LoRA step time against TRL SFTTrainer (issue 17)", body)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    main()
