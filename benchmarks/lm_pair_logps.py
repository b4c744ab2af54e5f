"""What DPO and SPIN did to the answers' likelihoods (issue 18): the summed log-probability of the chosen
and of the rejected answer of the task's first --pairs validation preference pairs, averaged, under the
base model and under each objectives-pass run of one seed. A DPO margin that grows while both answers
fall is likelihood displacement; SPIN's chosen answer is the human one, so its log-probability shows
whether an iteration kept what SFT learned.

Runs are the folders lm_objectives.py trained (SFT: the lm_forgetting pass's LoRA run); a run without a
folder is skipped and named. Writes one RESULTS.md section per task.

    python benchmarks/lm_pair_logps.py --task arithmetic --runs sft dpo spin-0 spin-1 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from lm_forgetting import RECORDS as FORGETTING_RECORDS  # noqa: E402
from lm_objectives import OBJECTIVES, run_folder, sft_folder  # noqa: E402
from results_file import write_section  # noqa: E402


def mean_log_probs(lm, pairs: list[dict]) -> dict[str, float]:
    """Mean over the pairs of the summed log p of the chosen and of the rejected answer, given the prompt."""
    from imprint.lm.evaluate import answer_log_probs

    conversations = [[{"role": "user", "content": p["prompt"]}] for p in pairs]
    out = {}
    for key in ("chosen", "rejected"):
        ids = [lm.tokenizer(p[key], add_special_tokens=False)["input_ids"] for p in pairs]
        per_token = answer_log_probs(lm, conversations, ids)
        out[key] = sum(float(lp.gather(-1, torch.tensor(i)[:, None]).sum()) for lp, i in zip(per_token, ids)) / len(pairs)
    return out


def folder(args, objective: str) -> Path:
    if objective == "sft":
        return sft_folder(args, args.task, args.seed)
    return run_folder(Path(args.work), args.task, objective, args.seed, args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--runs", nargs="+", default=["sft", "dpo", "spin-0", "spin-1"], choices=OBJECTIVES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--pairs", type=int, default=60, help="the first N validation preference pairs")
    parser.add_argument("--probe-steps", type=int, default=40, help="the forgetting pass's probe length (its lr key)")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "lm_objectives"))
    parser.add_argument("--forgetting-work", default=str(REPO / "benchmarks" / "_work" / "lm_forgetting"))
    parser.add_argument("--forgetting-records", default=str(FORGETTING_RECORDS))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    os.environ.setdefault("IMPRINT_CACHE", str(Path(args.forgetting_work) / "cache"))
    from imprint.families.causal_lm import EMBEDDED, CausalLM
    from imprint.lm.generate import load_run_model

    source = Path(args.work) / "tasks" / args.task / "validation-preferences.jsonl"
    if not source.is_file():
        sys.exit(f"{source} is missing; run benchmarks/lm_objectives.py --tasks {args.task} first")
    pairs = [json.loads(line) for line in source.read_text().splitlines() if line.strip()][:args.pairs]
    rows, missing = [], []
    torch.set_grad_enabled(False)
    for name in ["base", *args.runs]:
        run = None if name == "base" else folder(args, name)
        if run is None:
            lm = CausalLM.load(EMBEDDED)
        elif (run / "metadata.json").is_file():
            lm, _ = load_run_model(run)
        else:
            missing.append(name)
            continue
        lp = mean_log_probs(lm, pairs)
        rows.append(f"| {name} | {lp['chosen']:.1f} | {lp['rejected']:.1f} | {lp['chosen'] - lp['rejected']:+.1f} |")
        print(rows[-1], flush=True)
    body = (f"SmolLM2-135M-Instruct; the first {len(pairs)} validation preference pairs of {args.task} (chosen: the "
            f"gold answer; rejected: a wrong answer of the same form); each run's seed {args.seed}, {args.steps} steps. "
            "Mean over the pairs of the answer's summed log-probability given the prompt (chat template).\n\n"
            "| model | log p chosen | log p rejected | margin |\n|---|---|---|---|\n" + "\n".join(rows)
            + (f"\n\nNo run folder yet for: {', '.join(missing)}." if missing else ""))
    print(write_section(args.results, f"## Language models: answer log-probabilities on {args.task}'s preference pairs "
                        "(issue 18)", body))


if __name__ == "__main__":
    main()
