"""imprint's commands: train, generate, export, evaluate, compare, toyworld, demo. Thin: parse, call, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from imprint.errors import ImprintError

log = logging.getLogger("imprint")

TRAIN_EXAMPLE = """  imprint train --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --images photos/dog --class-name dog --method lora --prior-preservation \\
      --steps 800 --output runs/dog
  imprint train --config run.toml --steps 1000      # flags win over the file's keys
  imprint train --config run.toml --resume           # continue after a crash or kill
"""

HELP = {
    "model": "hub id or local diffusers folder of the base model",
    "images": "folder of subject photos (jpg/png/webp)",
    "class_name": "the subject's class noun, e.g. dog",
    "token": "rare identifier for the subject (default sks)",
    "instance_prompt": "training caption; {token} and {class_name} are filled in",
    "class_prompt": "prompt of the prior-preservation class images",
    "method": "lora | full | textual_inversion",
    "rank": "LoRA rank (default 4)",
    "alpha": "LoRA alpha (default: the rank)",
    "lora_targets": "attention (the UNet's attention projections, as diffusers' example) | attention+conv "
                    "(also its ResNet convolutions, as LyCORIS' LoCon: reaches levels without attention)",
    "num_vectors": "textual inversion: embedding vectors for the token",
    "train_text_encoder": "also train the text encoder (lora, full)",
    "steps": "optimizer steps",
    "lr": "learning rate (default per method: lora 1e-4, full 5e-6, textual_inversion 5e-4)",
    "batch_size": "subject images per step (as many class images are added with prior preservation)",
    "resolution": "training size in pixels (square)",
    "prior_preservation": "add the DreamBooth prior-preservation loss on class images",
    "num_class_images": "class images to generate / use",
    "prior_loss_weight": "weight of the prior-preservation loss",
    "class_images": "folder of class images (default: a cache generated once per model/prompt/size)",
    "mixed_precision": "no | fp16 | bf16",
    "gradient_checkpointing": "trade compute for memory",
    "checkpoint_every": "write a resumable checkpoint every N steps (0: never)",
    "keep_checkpoints": "how many checkpoints to keep",
    "sample_every": "write a sample grid every N steps (0: only at the end)",
    "sample_prompt": "prompt of the sample grids (repeatable); {token} and {class_name} are filled",
    "select_best": "score each checkpoint with the lambda-harmonic reward (RPO) and keep the best; "
                   "the value is lambda, e.g. 0.5",
    "select_prompts": "validation prompts for --select-best",
    "metrics": "metric backend for --select-best (dreambench)",
    "dino_model": "DINO model for the metrics (hub id or folder)",
    "clip_model": "CLIP model for the metrics (hub id or folder)",
    "final_samples": "write a sample grid when training ends (--no-final-samples skips it)",
    "output": "run folder",
    "resume": "resume the run in --output from its latest checkpoint (or from the folder given)",
}


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from imprint.config import FIELDS

    parser.add_argument("--config", help="TOML file with the same keys as the flags")
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        kind = str(field.type)
        kwargs = {"dest": name, "default": None, "help": HELP.get(name, "")}
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif name == "sample_prompt":
            parser.add_argument(flag, action="append", metavar="PROMPT", **kwargs)
        elif name == "resume":
            parser.add_argument(flag, nargs="?", const="latest", metavar="CHECKPOINT", **kwargs)
        else:
            caster = int if kind.startswith("int") else float if kind.startswith("float") else str
            parser.add_argument(flag, type=caster, **kwargs)


def _command(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example."""
    return sub.add_parser(name, help=help, epilog="example:\n" + example,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imprint", description="Teach a text-to-image model a subject from a few photos.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    train = _command(sub, "train", "personalise a model on subject photos", TRAIN_EXAMPLE)
    _add_train_flags(train)

    gen = _command(sub, "generate", "generate images with a finished run",
                   '  imprint generate --run runs/dog "a sks dog on the beach" --num-images 4 '
                   "--output out/beach")
    gen.add_argument("prompts", nargs="+", help="prompts; write the run's token for the subject")
    gen.add_argument("--run", required=True, help="run folder made by imprint train")
    gen.add_argument("--model", help="base model (default: the one the run was trained on)")
    gen.add_argument("--num-images", type=int, default=4)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=30, help="denoising steps")
    gen.add_argument("--guidance-scale", type=float, default=7.5)
    gen.add_argument("--resolution", type=int, help="default: the training resolution")
    gen.add_argument("--output", required=True, help="folder for the PNGs and grid.png")

    export = _command(sub, "export", "write a run in another ecosystem's format",
                      "  imprint export runs/dog --format kohya --output dog_kohya.safetensors")
    export.add_argument("run", help="run folder made by imprint train")
    export.add_argument("--format", choices=["kohya"], default="kohya",
                        help="kohya: the A1111 / ComfyUI LoRA layout")
    export.add_argument("--output", required=True, help="the .safetensors file to write")

    ev = _command(sub, "evaluate", "DreamBench metrics of a run, the base model and the real images",
                  "  imprint evaluate runs/dog --images-per-prompt 4   # -> runs/dog/eval/report.html")
    ev.add_argument("run", help="run folder made by imprint train")
    ev.add_argument("--model", help="base model (default: the one the run was trained on)")
    ev.add_argument("--images", help="real subject photos (default: the run's --images)")
    ev.add_argument("--images-per-prompt", type=int, default=4)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--prompts", help="file of prompts, one per line, with {token} and {class_name}")
    ev.add_argument("--metrics", default="dreambench", help="metric backend")
    ev.add_argument("--dino-model", default="facebook/dino-vits16")
    ev.add_argument("--clip-model", default="openai/clip-vit-base-patch32")
    ev.add_argument("--steps", type=int, default=30, help="denoising steps")
    ev.add_argument("--guidance-scale", type=float, default=7.5,
                    help="classifier-free guidance (the toy-world model: 6)")
    ev.add_argument("--resolution", type=int, help="default: the training resolution")

    cmp = _command(sub, "compare", "one table of several evaluated runs",
                   "  imprint compare runs/dog-lora runs/dog-full --output compare.html")
    cmp.add_argument("runs", nargs="+", help="run folders with eval/metrics.json")
    cmp.add_argument("--output", help="also write the table as HTML here")

    toy = _command(sub, "toyworld", "the toy world: write its held-out subjects as photo folders",
                   "  imprint toyworld subjects --output toy-subjects\n"
               "  imprint train --images toy-subjects/emblem_star --class-name star ...")
    toy.add_argument("action", choices=["subjects", "train-evaluator", "pretrain"],
                     help="subjects: write the held-out subjects; train-evaluator: retrain the "
                          "shipped evaluator (seeded, ~20 min on 2 cores); pretrain: train the base "
                          "model from scratch (seeded, resumable, < 2 h on 2 cores)")
    toy.add_argument("--output", help="subjects: folder for one sub-folder per subject; "
                                      "train-evaluator: the .safetensors file (default: the shipped one); "
                                      "pretrain: the model folder to write (required)")
    toy.add_argument("--steps", type=int, help="optimizer steps (train-evaluator: 1800; "
                                                "pretrain: the denoiser's, 5000)")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--device", help="pretrain, train-evaluator: cpu or cuda (default: cuda if there is one)")
    toy.add_argument("--snapshot", metavar="DIR", help="pretrain: write a loadable model from the newest "
                                                       "checkpoint of the pre-training in --output, and stop")

    demo = _command(sub, "demo", "personalise the built-in toy-world model to a toy subject and "
                                 "evaluate it: the whole job offline, in minutes",
                    "  imprint demo --output demo-output")
    demo.add_argument("--output", default="demo-output", help="folder for the subject, run and eval")
    demo.add_argument("--steps", type=int, default=200, help="LoRA training steps")
    demo.add_argument("--subject", default="striped_circle", help="a toy-world subject (imprint toyworld subjects)")
    demo.add_argument("--images-per-prompt", type=int, default=4,
                      help="evaluation images per prompt (4: the DreamBench protocol)")
    demo.add_argument("--eval-steps", type=int, default=20, help="denoising steps of every generated image")
    return parser


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_command(args: argparse.Namespace) -> int:
    if args.command == "train":
        from imprint.config import FIELDS, build_config, load_toml
        from imprint.train.loop import train

        toml_values = load_toml(args.config) if args.config else {}
        cfg = build_config(toml_values, {k: getattr(args, k) for k in FIELDS})
        out = train(cfg)
        print(f"run written to {out}")
    elif args.command == "generate":
        from imprint.generate import generate

        if args.num_images <= 0:
            raise ImprintError("--num-images must be > 0")
        paths = generate(args.run, args.prompts, args.output, model=args.model,
                         num_images=args.num_images, seed=args.seed, steps=args.steps,
                         guidance_scale=args.guidance_scale, resolution=args.resolution)
        print(f"{len(paths)} images and grid.png written to {args.output}")
    elif args.command == "export":
        from imprint.export.kohya import export_kohya

        print(f"wrote {export_kohya(args.run, args.output)}")
    elif args.command == "evaluate":
        from imprint.evaluate.run import evaluate_run

        if args.images_per_prompt <= 0:
            raise ImprintError("--images-per-prompt must be > 0")
        result = evaluate_run(
            args.run, model=args.model, images=args.images, images_per_prompt=args.images_per_prompt,
            seed=args.seed, prompts_file=args.prompts, metrics=args.metrics, steps=args.steps,
            resolution=args.resolution, guidance_scale=args.guidance_scale,
            backend_options={"dino_model": args.dino_model, "clip_model": args.clip_model})
        for name, values in (("run", result["summary"]), ("base model", result["baseline"]["summary"]),
                             ("real images", result["real_images"]["summary"])):
            cells = "  ".join(f"{m} {values[m]['mean']:.3f}" for m in result["metrics"]
                              if values.get(m) and values[m]["mean"] is not None)
            print(f"{name:12s} {cells}")
        print(f"report: {Path(args.run) / 'eval' / 'report.html'}")
    elif args.command == "compare":
        from imprint.evaluate.compare import compare_runs

        print(compare_runs(args.runs, args.output), end="")
    elif args.command == "toyworld" and args.action == "subjects":
        from imprint.toyworld.subjects import SUBJECTS, write_subjects

        if not args.output:
            raise ImprintError("toyworld subjects: --output FOLDER is required")
        folders = write_subjects(args.output)
        for subject, folder in zip(SUBJECTS, folders):
            print(f"{folder}  class {subject.class_name}")
    elif args.command == "toyworld" and args.action == "pretrain":
        from imprint.toyworld.pretrain import PretrainRecipe, pretrain

        if not args.output:
            raise ImprintError("toyworld pretrain: --output FOLDER is required")
        if args.snapshot:
            from imprint.toyworld.pretrain import snapshot

            print(f"snapshot written to {snapshot(args.output, args.snapshot)}")
            return 0
        recipe = PretrainRecipe(seed=args.seed)
        if args.steps:
            recipe.unet_steps = args.steps
        summary = pretrain(args.output, recipe, device=args.device)
        print(json.dumps(summary["seconds"]))
        print(f"model written to {args.output}")
    elif args.command == "toyworld":
        from imprint.toyworld.evaluator import (WEIGHTS, accuracy_on_fresh_renders, load_evaluator,
                                                train_evaluator)

        output = Path(args.output) if args.output else WEIGHTS
        print(train_evaluator(steps=args.steps or 1800, seed=args.seed, output=output, device=args.device))
        print("accuracy on fresh renders:", accuracy_on_fresh_renders(load_evaluator(output)))
    elif args.command == "demo":
        from imprint.demo import run_demo

        run_demo(args.output, steps=args.steps, subject=args.subject,
                 images_per_prompt=args.images_per_prompt, eval_steps=args.eval_steps)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="imprint: %(message)s")
    _quiet_libraries()
    try:
        return run_command(args)
    except ImprintError as e:
        if args.debug:
            raise
        print(f"imprint: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imprint: interrupted; resume with --resume (checkpoints are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
