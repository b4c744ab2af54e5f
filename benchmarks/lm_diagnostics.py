"""The language-model diagnostics on finished runs of the facts task (issue 18): what TuCo, contrastive
generation and conjugate prompting show about runs whose training data is known.

- TuCo on the task's held-out prompts and on the control prompts (the paper: the fine-tuning's share
  is larger on prompts like its data);
- contrastive generation (CGE, iterative, the paper's alpha 0.1, gamma 1) against plain sampling from
  the run (gamma 0: the same plausible set, no contrast), the same number of texts: the share of texts
  that name an invented entity or answer of the training data, and how many distinct facts surface
  (CGE's claim: it finds what is new in the data without seeing it);
- conjugate prompting (leet and upper) on the control suite: of the answers the run lost, how many the
  transform recovers, beside what the transform costs the base model.

    python benchmarks/lm_diagnostics.py --runs benchmarks/_work/lm_forgetting/runs/facts-lora-lr0.003-n150-s0

Each run's figures are kept in benchmarks/records/lm_diagnostics/RUN.json (committed; RUN is the
folder's name), so a run already diagnosed is only reported, even after its folder is gone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import write_section  # noqa: E402

from imprint.util.files import write_json_atomic  # noqa: E402


ENGLISH = {"what", "which", "who", "when", "where", "the", "dr", "in", "into", "river", "mountains", "industries",
           "name", "tell", "how", "does", "did", "was", "is", "year", "town", "city", "company"}


def invented_names(train_file: Path) -> dict[str, str]:
    """Each invented word of the facts data (in entity names and answers) -> the answer of its fact."""
    names = {}
    for line in train_file.read_text().splitlines():
        record = json.loads(line)
        for word in re.findall(r"\b[A-Z][a-z]{3,}\b", record["prompt"] + " " + record["answer"]):
            if word.lower() not in ENGLISH:
                names[word.lower()] = record["answer"]
    return names


def surfaced(texts: list[str], names: dict[str, str]) -> tuple[float, int]:
    """(share of texts naming an invented word, distinct facts named)."""
    hits = [{names[n] for n in names if re.search(rf"\b{re.escape(n)}\b", t.lower())} for t in texts]
    return sum(bool(h) for h in hits) / max(len(texts), 1), len(set().union(*hits)) if hits else 0


def diagnose_run(run: Path, args) -> dict:
    from imprint.diagnose.conjugate import conjugate_prompting
    from imprint.diagnose.contrastive import contrastive_generation
    from imprint.diagnose.tuco import tuco_by_set
    from imprint.lm.control import control_suite
    from imprint.lm.data import read_jsonl
    from imprint.lm.generate import apply_run, load_base, load_run_model, read_lm_metadata

    cache = Path(args.records) / f"{run.name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    metadata = read_lm_metadata(run)
    data = Path(metadata["hyperparameters"]["data"])
    base = load_base(run, metadata)
    tuned, _ = load_run_model(run, device=base.device)
    test = [r.prompt_messages[-1]["content"] for r in read_jsonl(data.with_name("test.jsonl"))][:args.prompts]
    control = [c["prompt"] for c in control_suite()][:args.prompts]
    result = {"tuco": {k: v["mean"] for k, v in tuco_by_set(base, tuned, {"task": test, "control": control}).items()}}
    names = invented_names(data)
    for name, gamma in (("contrastive", 1.0), ("plain", 0.0)):
        texts = [t["text"] for t in contrastive_generation(tuned, base, args.samples, args.length, iterative=gamma > 0,
                                                           gamma=gamma, prompt=args.prompt, seed=0)]
        share, facts = surfaced(texts, names)
        result[name] = {"share": share, "facts": facts, "examples": texts[:3]}
    del tuned
    for transform in args.transforms:
        fresh = load_base(run, metadata)
        result[f"conjugate-{transform}"] = conjugate_prompting(fresh, lambda lm: apply_run(lm, run, metadata), transform,
                                                               args.max_new_tokens)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--prompts", type=int, default=20, help="TuCo: prompts of each set")
    parser.add_argument("--samples", type=int, default=20, help="texts of each generation")
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--prompt", default="Tell me a fact.", help="the user message the texts answer")
    parser.add_argument("--transforms", nargs="+", default=["leet", "upper"])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--records", default=str(REPO / "benchmarks" / "records" / "lm_diagnostics"),
                        help="where each run's figures are kept (committed)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    rows = ["| run | TuCo task / control | CGE: texts naming the data, facts | plain sampling: the same | "
            + " | ".join(f"conjugate {t}: base plain -> transformed, run lost, recovered" for t in args.transforms)
            + " |", "|---|---|---|---|" + "---|" * len(args.transforms)]
    examples = []
    for run in map(Path, args.runs):
        r = diagnose_run(run, args)
        cells = [f"{r['tuco']['task']:.3f} / {r['tuco']['control']:.3f}",
                 f"{r['contrastive']['share']:.2f}, {r['contrastive']['facts']}",
                 f"{r['plain']['share']:.2f}, {r['plain']['facts']}"]
        for t in args.transforms:
            c = r[f"conjugate-{t}"]
            cells.append(f"{c['base_accuracy']:.2f} -> {c['base_accuracy_transformed']:.2f}, {c['lost']}, "
                         f"{c['recovered']}")
        rows.append(f"| {run.name} | " + " | ".join(cells) + " |")
        examples += [f"- {run.name}, CGE: " + " / ".join(repr(t[:80]) for t in r["contrastive"]["examples"])]
    body = (f"TuCo on {args.prompts} held-out task prompts and {args.prompts} control prompts (mean); {args.samples} "
            f"texts of at most {args.length} tokens answering {args.prompt!r}, iterative contrastive generation "
            "(alpha 0.1, gamma 1) against plain sampling from the run (gamma 0, no updates); a text names the data "
            "when it holds an invented entity or answer of the training file; conjugate prompting on the control "
            "suite.\n\n" + "\n".join(rows) + "\n\n" + "\n".join(examples))
    print(write_section(args.results, "## Language models: diagnostics of the facts runs (issue 18)", body))


if __name__ == "__main__":
    main()
