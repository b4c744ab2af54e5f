"""Toy-world quality bars (issue 4), written to benchmarks/RESULTS.md.

So far: the shipped evaluator's accuracy per attribute on fresh renders (bar: >= 0.95) and how
well its identity embedding tells the held-out subjects apart. The bars that need the
pre-trained toy-world base model (alignment, LoRA fidelity, PRES, the method table) come with it.

  python benchmarks/toyworld_quality.py [--renders 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402

from imprint.evaluate.metrics import cosine_matrix  # noqa: E402
from imprint.toyworld.evaluator import WEIGHTS, accuracy_on_fresh_renders, load_evaluator, read_images  # noqa: E402
from imprint.toyworld.render import render  # noqa: E402
from imprint.toyworld.subjects import SUBJECTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renders", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()

    start = time.time()
    model = load_evaluator()
    accuracy = accuracy_on_fresh_renders(model, count=args.renders, seed=args.seed)
    embeddings = []
    for subject in SUBJECTS:
        embeddings.append(read_images(model, [render(s, seed) for s, seed in subject.photo_scenes()])["identity"])
    same, other = [], []
    for i, a in enumerate(embeddings):
        sims = cosine_matrix(a, a)
        n = a.shape[0]
        same.append(float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1))))
        other.append(float(torch.stack([cosine_matrix(a, b).mean() for j, b in enumerate(embeddings) if j != i]).mean()))
    rows = "\n".join(f"| {name} | {value:.3f} | {'yes' if value >= 0.95 else 'no'} |" for name, value in accuracy.items())
    body = f"""{time.strftime('%Y-%m-%d')}; weights `{WEIGHTS.name}` ({WEIGHTS.stat().st_size / 2**20:.2f} MiB);
{args.renders} fresh renders (seed {args.seed}); {time.time() - start:.0f} s.
Command: `python benchmarks/toyworld_quality.py --renders {args.renders}`

| attribute | accuracy | >= 0.95 |
| --- | ---: | --- |
{rows}

Identity embedding on the 10 held-out subjects' photos (5 each, never seen in training):
mean cosine between photos of the same subject {sum(same) / len(same):.3f}, to other subjects
{sum(other) / len(other):.3f} (lowest same-subject {min(same):.3f}, highest other {max(other):.3f}).
"""
    print(write_section(args.results, "## Toy world: evaluator", body))


if __name__ == "__main__":
    main()
