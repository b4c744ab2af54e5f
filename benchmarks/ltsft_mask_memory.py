"""The memory LT-SFT's mask selection adds (issue 17): the k most-changed entries over every
weight of a SmolLM2-sized model, chosen by imprint's top_k_mask against torch.topk over all the
entries at once (the way it was chosen before), each in a fresh process so the peak RSS is its own.

The weights are random tensors of SmolLM2-135M's shapes (the embedding and 30 blocks' linears), the
changes small random noise, k = 1% (LT-SFT's default density): no model is loaded.

    python benchmarks/ltsft_mask_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import write_section  # noqa: E402

# SmolLM2-135M: hidden 576, MLP 1536, 30 blocks (q, o 576x576; k, v 192x576; gate, up, down), vocab 49152
SHAPES = [(49152, 576)] + [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)] * 30


def topk_over_all(tuned: dict, base: dict, k: int) -> dict:
    """The earlier selection: every change in one tensor, torch.topk over it."""
    diffs = {n: (tuned[n] - base[n]).abs() for n in tuned}
    threshold = torch.cat([d.flatten() for d in diffs.values()]).topk(k).values[-1]
    return {n: d >= threshold for n, d in diffs.items()}


def measure(how: str) -> dict:
    from imprint.methods.ltsft import top_k_mask

    generator = torch.Generator().manual_seed(0)
    base = {f"w{i}": torch.randn(shape, generator=generator) for i, shape in enumerate(SHAPES)}
    tuned = {n: t + 0.01 * torch.randn(t.shape, generator=generator) for n, t in base.items()}
    entries = sum(t.numel() for t in base.values())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    masks = (top_k_mask if how == "imprint" else topk_over_all)(tuned, base, entries // 100)
    seconds = time.perf_counter() - start
    added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - before
    return {"how": how, "entries": entries, "kept": sum(int(m.sum()) for m in masks.values()),
            "seconds": seconds, "added_gib": added, "weights_gib": 2 * entries * 4 / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--one", choices=["imprint", "topk"], help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    rows = []
    for how in ("topk", "imprint"):
        out = subprocess.run([sys.executable, __file__, "--one", how], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = ["| selection | entries | kept | peak RSS added, GiB | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['how']} | {r['entries']:,} | {r['kept']:,} | {r['added_gib']:.2f} | {r['seconds']:.1f} |")
    body = (f"`python benchmarks/ltsft_mask_memory.py` on cpu ({torch.get_num_threads()} threads): the 1% most-changed "
            f"entries of SmolLM2-135M's shapes (random weights, {rows[0]['weights_gib']:.2f} GiB of base and tuned "
            "weights, not counted), each selection in a fresh process; `topk` is torch.topk over every change at "
            "once (LT-SFT's selection until 2026-12-06), `imprint` the in-place selection of top_k_mask.\n\n"
            + "\n".join(table))
    print(write_section(args.results, "## LT-SFT mask selection memory (issue 17)", body))


if __name__ == "__main__":
    main()
