"""Step time and peak memory: imprint vs diffusers' train_dreambooth_lora.py vs the bare step.

The model is the Stable Diffusion 1.5 architecture with random weights (built from configs,
no download), LoRA rank 4 (--rank), prior preservation on, batch 1 (+1 class image), 256 px by default.

  imprint step   per-step times from the run's log.jsonl, after --warmup steps
  script step    (wall time of a warmup+steps run - wall time of a warmup run) / steps,
                 the same for both runs except the steps in between
  bare step      UNet with the same PEFT LoRA, fwd + bwd + AdamW on batch 2 cached latents

Each runs in its own process; peak RSS is that process's ru_maxrss (os.wait4).
Writes the figures to benchmarks/RESULTS.md with the command that produced them.

  python benchmarks/step_time.py --diffusers-script PATH/examples/dreambooth/train_dreambooth_lora.py

--family sdxl | flux: the same at that family's real size (SDXL base 1.0's or FLUX.1-dev's
architecture, random weights), imprint against diffusers' train_dreambooth_lora_sdxl.py /
train_dreambooth_lora_flux.py on the same saved model, where the machine can hold it (a model
that cannot fit in memory is reported as such, not run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
# ../shared beside the checkout; on the device machine a copy placed in the checkout's shared/
DREAMBENCH = next((d for d in (REPO.parent / "shared" / "dreambench", REPO / "shared" / "dreambench") if d.is_dir()),
                  REPO.parent / "shared" / "dreambench")


def run_measured(args: list[str], log_path: Path, env=None, timeout: float | None = None) -> tuple[float, float, int]:
    """-> (wall seconds, peak RSS in MiB, exit code) of one child process; past `timeout` seconds
    it is killed (exit code -9)."""
    import threading

    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        if timer:
            timer.cancel()
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, code


def build_model(path: Path) -> Path:
    if not (path / "model_index.json").is_file():
        print(f"building the SD1.5-architecture model (random weights) in {path}", flush=True)
        subprocess.run([sys.executable, "-c",
                        f"from imprint.tiny import save_sd_model; save_sd_model({str(path)!r}, size='sd15')"],
                       check=True)
    return path


FAMILY_MODELS = {  # name -> (folder, builder call, parameters in billions, a script's own flags)
    "sdxl": ("sdxl-random", "from imprint.tiny import build_sdxl_pipeline as b, save_pipeline as s; "
             "s(b(size='sdxl'), {path!r})", 3.5, []),
    "flux": ("flux-dev-random", "import torch; torch.set_default_dtype(torch.bfloat16); "
             "from imprint.tiny import build_flux_pipeline as b, save_pipeline as s; s(b(size='flux-dev'), {path!r})",
             16.9, ["--guidance_scale", "1", "--max_sequence_length", "512"]),
}


def available_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**30
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 2**20


def family_benchmark(args) -> None:
    """--family sdxl | flux: imprint and diffusers' script of that family, on its real-size architecture."""
    import diffusers
    import torch

    folder, build, billions, script_flags = FAMILY_MODELS[args.family]
    bytes_per = 4 if args.mixed_precision == "no" else 2
    need = billions * 1e9 * bytes_per / 2**30
    have = available_memory_gib(args.device)
    tag = f"{args.family}-{args.resolution}px-{args.mixed_precision}"
    command = "python benchmarks/step_time.py " + " ".join(sys.argv[1:])
    head = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, device {args.device}, torch "
            f"{torch.__version__}, diffusers {diffusers.__version__}; {args.family} architecture (random weights), "
            f"LoRA r{args.rank}, prior preservation, batch 1, {args.resolution} px, precision {args.mixed_precision}; "
            f"{args.steps} timed steps after {args.warmup} warm-up.\nCommand: `{command}`\n")
    title = f"## Step time, {args.family} at real size, {args.resolution} px, {args.mixed_precision}, {args.device}"
    if need > 0.9 * have:
        body = head + (f"\nNot run: the frozen weights alone are {need:.0f} GiB in this precision and the "
                       f"{'GPU' if args.device.startswith('cuda') else 'machine'} has {have:.0f} GiB available.")
        print(write_section(args.results, title, body))
        return
    model = WORK / folder
    if not (model / "model_index.json").is_file():
        print(f"building the {args.family} architecture (random weights) in {model}", flush=True)
        subprocess.run([sys.executable, "-c", build.format(path=str(model))], check=True)
    print("imprint ...", flush=True)
    ours = imprint_run(args, model, WORK / f"imprint-{tag}")
    print(f"  {ours['step_s']:.3f} s/step, peak RSS {ours['peak_rss_mib']:.0f} MiB", flush=True)
    rows = [f"| imprint | {ours['step_s']:.2f} | {ours['peak_rss_mib']:.0f} | - |"]
    if args.diffusers_script:
        print("diffusers script ...", flush=True)
        short_wall, _ = script_run(args, model, args.warmup, WORK / f"script-short-{tag}", script_flags)
        long_wall, rss = script_run(args, model, args.warmup + args.steps, WORK / f"script-long-{tag}", script_flags)
        step = (long_wall - short_wall) / args.steps
        rows[0] = rows[0][:-4] + f" {ours['step_s'] / step:.2f}x |"
        rows.append(f"| diffusers {Path(args.diffusers_script).name} | {step:.2f} | {rss:.0f} | 1.00x |")
        print(f"  {step:.3f} s/step, peak RSS {rss:.0f} MiB", flush=True)
    body = head + "\n| trainer | s/step | peak RSS (MiB) | vs script |\n| --- | ---: | ---: | ---: |\n" + "\n".join(rows)
    print(write_section(args.results, title, body))


def bare_step(args) -> None:
    """Child mode: the floor any trainer pays per step."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    device = torch.device(args.device)
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet").to(device, dtype)
    unet.requires_grad_(False)
    if args.attention == "classic":  # the attention before torch's SDPA: explicit softmax(QK^T)V
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    impl = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.adamw]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, **impl)
    g = torch.Generator().manual_seed(0)
    side = args.resolution // 8
    latents = torch.randn(2, 4, side, side, generator=g).to(device)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(device, dtype)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (2,), generator=g).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = unet((latents + noise).to(dtype), t, cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    print(json.dumps({"step_s": statistics.mean(times), "median_s": statistics.median(times),
                      "peak_gpu_gib": peak_gpu}))


def imprint_run(args, model: Path, out: Path, extra: tuple[str, ...] = (), timeout: float | None = None) -> dict:
    steps = args.warmup + args.steps
    cmd = [sys.executable, "-m", "imprint.cli", "train", "--model", str(model),
           "--images", str(DREAMBENCH / "dog"), "--class-name", "dog", "--method", "lora",
           "--rank", str(args.rank), "--prior-preservation", "--class-images", str(DREAMBENCH / "cat"),
           "--num-class-images", "5", "--resolution", str(args.resolution), "--steps", str(steps),
           "--batch-size", "1", "--checkpoint-every", "0", "--no-final-samples",
           "--mixed-precision", args.mixed_precision, "--seed", "0", "--output", str(out), *extra]
    wall, rss, code = run_measured(cmd, out.with_suffix(".log"), timeout=timeout)
    if code == -9 and timeout:
        return {"timed_out": timeout}
    if code:
        raise SystemExit(f"imprint failed, see {out.with_suffix('.log')}")
    times = [json.loads(line)["time"] for line in open(out / "log.jsonl")]
    deltas = [b - a for a, b in zip(times[args.warmup - 1:], times[args.warmup:])]
    return {"step_s": statistics.mean(deltas), "median_s": statistics.median(deltas),
            "wall_s": wall, "peak_rss_mib": rss}


def script_run(args, model: Path, steps: int, out: Path, extra: list[str] = ()) -> tuple[float, float]:
    cmd = [sys.executable, args.diffusers_script, "--pretrained_model_name_or_path", str(model),
           "--instance_data_dir", str(DREAMBENCH / "dog"), "--class_data_dir", str(DREAMBENCH / "cat"),
           "--with_prior_preservation", "--num_class_images", "5",
           "--instance_prompt", "a photo of sks dog", "--class_prompt", "a photo of dog",
           "--resolution", str(args.resolution), "--train_batch_size", "1", "--rank", str(args.rank),
           "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
           "--max_train_steps", str(steps), "--checkpointing_steps", "1000000", "--seed", "0",
           "--mixed_precision", args.mixed_precision, "--report_to", "all",
           "--dataloader_num_workers", "0", "--output_dir", str(out), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    wall, rss, code = run_measured(cmd, out.with_suffix(".log"), env)
    if code:
        raise SystemExit(f"diffusers script failed, see {out.with_suffix('.log')}")
    return wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers-script", help="path to examples/dreambooth/train_dreambooth_lora.py (with "
                        "--family: train_dreambooth_lora_sdxl.py / train_dreambooth_lora_flux.py)")
    parser.add_argument("--family", default="sd15", choices=["sd15", "sdxl", "flux"],
                        help="sd15: the SD1.5 table; sdxl / flux: that family at its real size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (16: SimpleTuner's published GPU figure's)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--options", action="store_true",
                        help="measure the step options instead (issue 13): imprint with --compile off / regional / "
                             "full, and the bare step with SDPA or the classic attention and AdamW's loop / foreach / "
                             "fused implementations")
    parser.add_argument("--option-timeout", type=float, default=15, help="--options: minutes a compiled run may take")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "classic"], help=argparse.SUPPRESS)
    parser.add_argument("--adamw", default="loop", choices=["loop", "foreach", "fused"], help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        return bare_step(args)

    WORK.mkdir(parents=True, exist_ok=True)
    if args.family != "sd15":
        return family_benchmark(args)
    model = build_model(WORK / "sd15-random")
    tag = f"{args.resolution}px-{args.mixed_precision}"
    if args.options:
        return step_options(args, model, tag)
    for stale in WORK.glob(f"*-{tag}*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()

    print("bare step ...", flush=True)
    bare_cmd = [sys.executable, __file__, "--bare", "--model", str(model), "--steps", str(args.steps), "--rank", str(args.rank),
                "--warmup", str(args.warmup), "--resolution", str(args.resolution),
                "--mixed-precision", args.mixed_precision, "--device", args.device]
    bare_log = WORK / f"bare-{tag}.log"
    _, bare_rss, code = run_measured(bare_cmd, bare_log)
    if code:
        raise SystemExit(f"bare step failed, see {bare_log}")
    bare = json.loads(bare_log.read_text().strip().splitlines()[-1])
    print(f"  {bare['step_s']:.3f} s/step", flush=True)

    print("imprint ...", flush=True)
    ours = imprint_run(args, model, WORK / f"imprint-{tag}")
    print(f"  {ours['step_s']:.3f} s/step, peak RSS {ours['peak_rss_mib']:.0f} MiB", flush=True)

    script = None
    if args.diffusers_script:
        print("diffusers script ...", flush=True)
        short_wall, _ = script_run(args, model, args.warmup, WORK / f"script-short-{tag}")
        long_wall, script_rss = script_run(args, model, args.warmup + args.steps, WORK / f"script-long-{tag}")
        script = {"step_s": (long_wall - short_wall) / args.steps, "peak_rss_mib": script_rss,
                  "wall_s": long_wall}
        print(f"  {script['step_s']:.3f} s/step, peak RSS {script_rss:.0f} MiB", flush=True)

    write_results(args, bare, bare_rss, ours, script)


def run_bare(args, model: Path, log: Path, *extra: str) -> tuple[dict, float]:
    cmd = [sys.executable, __file__, "--bare", "--model", str(model), "--steps", str(args.steps), "--rank", str(args.rank),
           "--warmup", str(args.warmup), "--resolution", str(args.resolution),
           "--mixed-precision", args.mixed_precision, "--device", args.device, *extra]
    _, rss, code = run_measured(cmd, log)
    if code:
        raise SystemExit(f"bare step failed, see {log}")
    return json.loads(log.read_text().strip().splitlines()[-1]), rss


def step_options(args, model: Path, tag: str) -> None:
    """--options: each step option against today's step (issue 13)."""
    import diffusers
    import torch

    rows = []
    base = None
    for mode in ("off", "regional", "full"):
        print(f"imprint --compile {mode} ...", flush=True)
        out = WORK / f"options-imprint-{mode}-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        r = imprint_run(args, model, out, ("--compile", mode), timeout=args.option_timeout * 60 if mode != "off" else None)
        if "timed_out" in r:
            rows.append(f"| imprint `--compile {mode}` | not finished in {args.option_timeout:g} min "
                        f"(compilation and {args.warmup + args.steps} steps) | - | - | - |")
            print(f"  stopped after {args.option_timeout:g} min", flush=True)
            continue
        base = base or r
        rows.append(f"| imprint `--compile {mode}`{' (today)' if mode == 'off' else ''} | {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f}x | "
                    f"{r['wall_s']:.0f} s | {r['peak_rss_mib']:.0f} |")
        print(f"  {r['step_s']:.3f} s/step, wall {r['wall_s']:.0f} s", flush=True)
    bare_base = None
    for label, extra in (("SDPA, AdamW loop (today)", ("--attention", "sdpa", "--adamw", "loop")),
                         ("classic attention, AdamW loop", ("--attention", "classic", "--adamw", "loop")),
                         ("SDPA, AdamW foreach", ("--attention", "sdpa", "--adamw", "foreach")),
                         ("SDPA, AdamW fused", ("--attention", "sdpa", "--adamw", "fused"))):
        print(f"bare step, {label} ...", flush=True)
        b, rss = run_bare(args, model, WORK / f"options-bare-{extra[1]}-{extra[3]}-{tag}.log", *extra)
        bare_base = bare_base or b
        rows.append(f"| bare step: {label} | {b['step_s']:.3f} | {b['step_s'] / bare_base['step_s']:.2f}x | - | {rss:.0f} |")
        print(f"  {b['step_s']:.3f} s/step", flush=True)
    command = "python benchmarks/step_time.py " + " ".join(sys.argv[1:])
    body = "\n".join([
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}; SD1.5 architecture (random weights), LoRA r{args.rank}, prior preservation, "
        f"batch 1, {args.resolution} px, precision {args.mixed_precision}, device {args.device}; "
        f"{args.steps} timed steps after {args.warmup} warm-up (the compilation falls in the warm-up).",
        f"Command: `{command}`",
        "",
        "| step | s/step | vs today's | process wall time | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows])
    print(write_section(args.results, f"## Step options: compile, SDPA, AdamW implementation ({args.device}, "
                        f"{args.resolution} px, issue 13)", body))


def write_results(args, bare, bare_rss, ours, script) -> None:
    import diffusers
    import torch

    command = "python benchmarks/step_time.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Step time, SD1.5 architecture, LoRA r{args.rank}, prior preservation, batch 1, "
        f"{args.resolution} px, precision {args.mixed_precision}, device {args.device}",
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}; {args.steps} timed steps after {args.warmup} warm-up.",
        f"Command: `{command}`",
        "",
        "| trainer | s/step | peak RSS (MiB) | vs script | vs bare step |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    def row(name, r, rss):
        vs_script = f"{r['step_s'] / script['step_s']:.2f}x" if script else "-"
        vs_bare = f"{r['step_s'] / bare['step_s']:.2f}x"
        rss_vs = f" ({rss / script['peak_rss_mib']:.2f}x)" if script else ""
        return f"| {name} | {r['step_s']:.3f} | {rss:.0f}{rss_vs} | {vs_script} | {vs_bare} |"

    lines.append(row("imprint", ours, ours["peak_rss_mib"]))
    if script:
        lines.append(row("diffusers train_dreambooth_lora.py", script, script["peak_rss_mib"]))
    lines.append(row("bare UNet fwd+bwd+AdamW (batch 2)", bare, bare_rss))
    if bare.get("peak_gpu_gib"):
        lines.append(f"\nBare step peak GPU memory: {bare['peak_gpu_gib']:.2f} GiB")
    section = write_section(args.results, lines[0], "\n".join(lines[2:]))
    print(section)


if __name__ == "__main__":
    main()
