"""imprint's commands: train, generate, edit, export, evaluate, compare, toyworld, demo, methods, lm.
Thin: parse, call, report. The train flags are generated from the settings dataclasses."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import imprint
from imprint.util.errors import ImprintError
from imprint.util.files import make_folder

log = logging.getLogger("imprint")

TRAIN_EXAMPLE = """  imprint train --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --images photos/dog --class-name dog --method lora --prior-preservation \\
      --steps 800 --output runs/dog
  imprint train --config examples/sd15-dog-lora.toml --steps 1000   # flags win over the file's keys
  imprint train --config examples/sd15-dog-lora.toml --resume       # continue after a crash or kill

Every flag is also a TOML key (at the top level, or in the table of its section: [prior], [lora], ...).
`imprint methods` lists the methods and their settings.
"""


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from imprint.config import add_flags
    from imprint.image.settings import groups

    parser.add_argument("--config", metavar="TOML", help="TOML run file with the same keys as the flags")
    add_flags(parser, groups(), special={
        "sample_prompt": {"metavar": "PROMPT"},
        "resume": {"nargs": "?", "const": "latest", "metavar": "CHECKPOINT"},
    })


LM_EXAMPLE = """  imprint lm tasks --output lm-tasks                      # the shipped tasks as JSONL
  imprint lm train --data lm-tasks/facts/train.jsonl --method lora --steps 200 --output runs/facts-lora
  imprint lm evaluate runs/facts-lora runs/facts-hft --output report.html
  imprint lm demo
"""


class _OldStepsSpelling(argparse.Action):
    """`--steps` of generate / evaluate: still accepted, with a warning, as --inference-steps."""

    def __call__(self, parser, namespace, values, option_string=None):
        print("imprint: warning: --steps here means denoising steps: write --inference-steps "
              "(the old spelling will be removed)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_inference_steps(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--inference-steps", type=int, default=default, help="denoising steps of each image")
    parser.add_argument("--steps", type=int, dest="inference_steps", action=_OldStepsSpelling,
                        help="old spelling of --inference-steps (deprecated)")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; each flag's default shown where its help does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


def _command(sub, name: str, help: str, example: str, formatter=_HelpFormatter) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example."""
    return sub.add_parser(name, help=help, description=help, epilog="example:\n" + example,
                          formatter_class=formatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imprint", description="Teach a text-to-image model a subject from a few photos.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"imprint {imprint.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    # the train flags write their own defaults (theirs are None, so that TOML values are not overridden)
    train = _command(sub, "train", "personalise a model on subject photos", TRAIN_EXAMPLE,
                     formatter=argparse.RawDescriptionHelpFormatter)
    _add_train_flags(train)

    gen = _command(sub, "generate", "generate images with a finished run (or a base model)",
                   '  imprint generate --run runs/dog "a sks dog on the beach" --num-images 4 '
                   "--output out/beach\n"
                   '  imprint generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 "a dog on the beach" '
                   "--with self-subject-attention --subject photos/dog --output out/ssa")
    gen.add_argument("prompts", nargs="+", help="prompts; write the run's token for the subject")
    gen.add_argument("--run", help="run folder made by imprint train (or none: --model's base model)")
    gen.add_argument("--model", help="base model (default: the one the run was trained on)")
    from imprint.image.training_free import METHODS as TRAINING_FREE

    gen.add_argument("--with", dest="with_method", choices=TRAINING_FREE,
                     help="a generation-time subject method over a photo of --subject: self-subject-attention "
                     "(DreamTuner: each self-attention also attends to the photo noised to the step; SD, SDXL), "
                     "freecus (FreeCus: the photo's subject keys and values join FLUX's vital attention layers), "
                     "diptych (Diptych prompting: a FLUX Fill model inpaints the right panel of a diptych whose left "
                     "panel is the photo; pass the Fill model as --model)")
    gen.add_argument("--subject", metavar="DIR", help="--with: the subject's photos")
    gen.add_argument("--subject-masks", metavar="DIR",
                     help="--with: the photos' subject masks (default: DIR/masks of --subject)")
    gen.add_argument("--subject-photo", type=int, default=0,
                     help="--with: which photo of --subject is the reference (sorted by name; default: 0)")
    gen.add_argument("--subject-weight", type=float,
                     help="--with: self-subject-attention's w_ref (default: the paper's 3; 0: plain generation), "
                     "diptych's attention lambda (default: the paper's 1.3; 1: none)")
    gen.add_argument("--subject-name", help="diptych: what the subject is, for its prompt (default: DIR/class.txt)")
    gen.add_argument("--description", help="freecus: the subject's description, appended to each prompt (the "
                     "paper has a multimodal LLM write it)")
    gen.add_argument("--num-images", type=int, default=4, help="images per prompt")
    gen.add_argument("--seed", type=int, default=0, help="image j of prompt i starts from seed + 1000 i + j")
    _add_inference_steps(gen, 30)
    gen.add_argument("--guidance-scale", type=float,
                     help="guidance (default: the model's pipeline's: SD 7.5, SDXL 5, SD3 7, FLUX 3.5)")
    gen.add_argument("--resolution", type=int, help="image size (default: the training resolution)")
    gen.add_argument("--output", required=True, help="folder for the PNGs and grid.png")
    gen.add_argument("--keep-appearance", metavar="IMAGE",
                     help="disenbooth runs: keep this image's pose and background (adds its identity-irrelevant "
                     "embedding to the prompt's)")
    gen.add_argument("--reference-guidance", action="store_true",
                     help="HiFi Tuner's reference-guided generation: each image is generated twice from its noise, "
                     "the second time with the subject photo nearest the first (by --reference-features) aligned "
                     "to it, DDIM-inverted and steering the subject's region; needs the run's subject masks")
    gen.add_argument("--reference-masks", metavar="DIR", help="--reference-guidance: the subject photos' masks "
                     "(default: the run's --masks, or the masks --auto-masks made in the run folder)")
    gen.add_argument("--reference-segmenter", default="CIDAS/clipseg-rd64-refined",
                     help="--reference-guidance: CLIPSeg model that finds the subject in the first image, prompted "
                     "with the class name (default: CIDAS/clipseg-rd64-refined)")
    gen.add_argument("--reference-features", default="facebook/dino-vits16",
                     help="--reference-guidance: image model that picks the nearest subject photo, the paper's DINO "
                     "(hub id or folder; 'toyworld' for the toy world) (default: facebook/dino-vits16)")
    gen.add_argument("--appearance-weight", type=float, default=1.0,
                     help="weight of --keep-appearance's embedding (default: 1.0)")

    ed = _command(sub, "edit", "put the run's subject in place of an object of a real photo (HiFi Tuner's "
                  "subject substitution)",
                  '  imprint edit --run runs/dog --image cat.jpg --source-prompt "a photo of a cat on a sofa" '
                  "--replace cat --output dog-on-sofa.png")
    ed.add_argument("--run", required=True, help="run folder made by imprint train")
    ed.add_argument("--image", required=True, help="the photo to edit")
    ed.add_argument("--source-prompt", required=True, help="a caption of the photo")
    ed.add_argument("--replace", required=True, help="the caption's word for the object the subject replaces")
    ed.add_argument("--output", required=True, help="the image file to write")
    ed.add_argument("--model", help="base model (default: the one the run was trained on)")
    _add_inference_steps(ed, 50)
    ed.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default: 7.5)")
    ed.add_argument("--null-steps", type=int, default=10,
                    help="Adam steps of the null-text inversion per denoising step (default: 10)")
    ed.add_argument("--resolution", type=int, help="image size (default: the training resolution)")

    export = _command(sub, "export", "write a run in another ecosystem's format",
                      "  imprint export runs/dog --format kohya --output dog_kohya.safetensors")
    export.add_argument("run", help="run folder made by imprint train")
    export.add_argument("--format", choices=["kohya"], default="kohya",
                        help="kohya: the A1111 / ComfyUI LoRA / LyCORIS layout (LoRA, DoRA, LoHa, LoKr; "
                        "krona as LoKr) [default: kohya]")
    export.add_argument("--output", required=True, help="the .safetensors file to write")
    export.add_argument("--diff", action="store_true",
                        help="write each adapted layer's full weight delta (`diff` keys): exact in every "
                        "loader (DoRA included), but as large as those layers; needs the base model; "
                        "always so for tlora and full [default: off]")
    export.add_argument("--svd-rank", type=int, help="write each adapted layer's merged delta as a LoRA of "
                        "this rank (truncated SVD; the error is logged); needs the base model [default: off]")

    ev = _command(sub, "evaluate", "DreamBench metrics of a run, the base model and the real images",
                  "  imprint evaluate runs/dog --images-per-prompt 4   # -> runs/dog/eval/report.html")
    ev.add_argument("run", help="run folder made by imprint train")
    ev.add_argument("--model", help="base model (default: the one the run was trained on)")
    ev.add_argument("--images", help="real subject photos (default: the run's --images)")
    ev.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt (DreamBench: 4)")
    ev.add_argument("--seed", type=int, default=0, help="image j of prompt i starts from seed + 1000 i + j")
    ev.add_argument("--prompts", help="file of prompts, one per line, with {token} and {class_name} "
                                      "(default: the backend's, DreamBench's 25)")
    ev.add_argument("--metrics", default="dreambench", help="metric backend (dreambench, toyworld)")
    ev.add_argument("--dino-model", default="facebook/dino-vits16", help="DINO model (hub id or folder)")
    ev.add_argument("--clip-model", default="openai/clip-vit-base-patch32", help="CLIP model (hub id or folder)")
    ev.add_argument("--blip-model", help="also score BLIP-T, ClassDiffusion's text alignment, with this BLIP "
                    "image-text retrieval model, e.g. Salesforce/blip-itm-large-coco [default: off]")
    _add_inference_steps(ev, 30)
    ev.add_argument("--guidance-scale", type=float, default=7.5,
                    help="classifier-free guidance (the toy-world model: 6)")
    ev.add_argument("--resolution", type=int, help="default: the training resolution")

    cmp = _command(sub, "compare", "one table of several evaluated runs",
                   "  imprint compare runs/dog-lora runs/dog-full --output compare.html")
    cmp.add_argument("runs", nargs="+", help="run folders with eval/metrics.json")
    cmp.add_argument("--output", help="also write the table as HTML here")

    dg = _command(sub, "diagnose", "what a run changed: intruder dimensions, and for language-model runs the tuning "
                  "contribution (TuCo), contrastive generation and conjugate prompting; for image runs the class "
                  "prompt's images before and after; into RUN/diagnostics.json and the run's report",
                  "  imprint diagnose runs/facts-lora --what intruders tuco\n  imprint diagnose runs/dog-lora")
    dg.add_argument("runs", nargs="+", help="run folders (imprint train or imprint lm train)")
    dg.add_argument("--what", nargs="+", help="which diagnostics (default: all for the run's kind): intruders, tuco, "
                    "contrastive, conjugate (language); intruders, class_images (image)")
    dg.add_argument("--prompts", type=int, default=20, help="TuCo: prompts of each set (task, control)")
    dg.add_argument("--samples", type=int, default=10, help="contrastive generation: texts to generate")
    dg.add_argument("--length", type=int, default=64, help="contrastive generation: longest text in tokens")
    dg.add_argument("--no-iterative", dest="iterative", action="store_false",
                    help="contrastive generation: do not update the pre-trained side between texts")
    dg.add_argument("--prompt", help="contrastive generation: a user message to answer (default: the start token "
                    "alone, as the paper)")
    dg.add_argument("--transform", default="leet", choices=("leet", "upper"),
                    help="conjugate prompting: the prompt transform")
    dg.add_argument("--max-new-tokens", type=int, default=48, help="conjugate prompting: longest answer")
    dg.add_argument("--images", type=int, default=4, help="image runs: class-prompt images of each model")
    dg.add_argument("--seed", type=int, default=0, help="seed of the sampled texts and images")

    toy = _command(sub, "toyworld", "the toy world: write its held-out subjects as photo folders",
                   "  imprint toyworld subjects --output toy-subjects\n"
               "  imprint train --images toy-subjects/emblem_star --class-name star ...")
    toy.add_argument("action", choices=["subjects", "domains", "train-evaluator", "train-segmenter", "pretrain"],
                     help="subjects: write the held-out subjects (photos, class.txt and their true "
                          "masks in masks/, for --masks); domains: a domain (style) set per subject, 10 "
                          "images sharing its shape and emblem on every colour and pattern; train-evaluator: retrain the "
                          "shipped evaluator (seeded, ~20 min on 2 cores); train-segmenter: retrain the shipped "
                          "text-prompted segmenter (a small CLIPSeg for --auto-mask-model); pretrain: train the base "
                          "model from scratch (seeded, resumable, < 2 h on 2 cores)")
    toy.add_argument("--output", help="subjects, domains: folder for one sub-folder per subject; "
                                      "train-evaluator: the .safetensors file, train-segmenter: the model "
                                      "folder (default: the shipped one); "
                                      "pretrain: the model folder to write (required)")
    toy.add_argument("--steps", type=int, help="optimizer steps (train-evaluator: 1800; train-segmenter: 3000; "
                                                "pretrain: the denoiser's, 5000)")
    toy.add_argument("--seed", type=int, default=0, help="seed of the renders and the training")
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
    demo.add_argument("--inference-steps", "--eval-steps", dest="eval_steps", type=int, default=20,
                      help="denoising steps of every generated image")

    methods = _command(sub, "methods", "list the training methods and their settings", "  imprint methods")
    methods.add_argument("--name", help="only this method")

    from imprint.cli_lm import add_lm_commands

    add_lm_commands(_command(sub, "lm", "language models: teach a causal LM a task from a few hundred examples "
                             "and measure what it learned and what it forgot", LM_EXAMPLE))
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


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ImprintError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def describe_methods(only: str | None = None, registry: dict | None = None) -> str:
    """`imprint methods` (`imprint lm methods`): each method, what it trains, its default lr and its settings."""
    import dataclasses

    from imprint.config import default_text, flag
    from imprint.methods import METHODS

    registry = METHODS if registry is None else registry
    if only and only not in registry:
        raise ImprintError(f"--name {only}: unknown method; choose one of {', '.join(sorted(registry))}")
    lines = []
    for name, cls in sorted(registry.items()):
        if only and name != only:
            continue
        lr = f" (default lr {cls.default_lr:g})" if hasattr(cls, "default_lr") else ""
        lines.append(f"{name}: {cls.summary}{lr}")
        for f in dataclasses.fields(cls.Settings):
            lines.append(f"  {flag(f.name):22s} {f.metadata.get('help', '')} [default: {default_text(f)}]")
        if not dataclasses.fields(cls.Settings):
            lines.append("  (no settings of its own)")
    return "\n".join(lines) + "\n"


def run_command(args: argparse.Namespace) -> int:
    if args.command == "train":
        from imprint.config import all_fields, load_toml
        from imprint.image.settings import build_config, groups
        from imprint.image.train import train

        toml_values = load_toml(args.config, groups()) if args.config else {}
        cfg = build_config(toml_values, {k: getattr(args, k) for k in all_fields(groups())})
        out = train(cfg)
        print(f"run written to {out}")
    elif args.command == "methods":
        print(describe_methods(args.name), end="")
    elif args.command == "generate":
        from imprint.image.generate import generate

        _positive(args, "num_images", "inference_steps", "resolution")
        paths = generate(args.run, args.prompts, args.output, model=args.model,
                         num_images=args.num_images, seed=args.seed, inference_steps=args.inference_steps,
                         guidance_scale=args.guidance_scale, resolution=args.resolution,
                         keep_appearance=args.keep_appearance, appearance_weight=args.appearance_weight,
                         reference_guidance=args.reference_guidance, reference_masks=args.reference_masks,
                         reference_segmenter=args.reference_segmenter, reference_features=args.reference_features,
                         with_method=args.with_method, subject=args.subject, subject_masks=args.subject_masks,
                         subject_photo=args.subject_photo, method_weight=args.subject_weight,
                         subject_name=args.subject_name, description=args.description)
        print(f"{len(paths)} images and grid.png written to {args.output}")
    elif args.command == "edit":
        from imprint.image.generate import edit

        _positive(args, "inference_steps", "resolution", "null_steps")
        written = edit(args.run, args.image, args.source_prompt, args.replace, args.output, model=args.model,
                       inference_steps=args.inference_steps, guidance_scale=args.guidance_scale,
                       null_steps=args.null_steps, resolution=args.resolution)
        print(f"wrote {written}")
    elif args.command == "export":
        from imprint.export.kohya import export_kohya

        print(f"wrote {export_kohya(args.run, args.output, diff=args.diff, svd_rank=args.svd_rank)}")
    elif args.command == "evaluate":
        from imprint.image.evaluate_run import evaluate_run

        _positive(args, "images_per_prompt", "inference_steps", "resolution")
        result = evaluate_run(
            args.run, model=args.model, images=args.images, images_per_prompt=args.images_per_prompt,
            seed=args.seed, prompts_file=args.prompts, metrics=args.metrics,
            inference_steps=args.inference_steps,
            resolution=args.resolution, guidance_scale=args.guidance_scale,
            backend_options={"dino_model": args.dino_model, "clip_model": args.clip_model,
                             "blip_model": args.blip_model})
        for name, values in (("run", result["summary"]), ("base model", result["baseline"]["summary"]),
                             ("real images", result["real_images"]["summary"])):
            cells = "  ".join(f"{m} {values[m]['mean']:.3f}" for m in result["metrics"]
                              if values.get(m) and values[m]["mean"] is not None)
            print(f"{name:12s} {cells}")
        print(f"report: {Path(args.run) / 'eval' / 'report.html'}")
    elif args.command == "diagnose":
        from imprint.diagnose.run import diagnose
        from imprint.evaluate.diagnostics import summary_lines

        for number in ("prompts", "samples", "length", "max_new_tokens", "images"):
            if getattr(args, number) <= 0:
                raise ImprintError(f"--{number.replace('_', '-')} must be > 0, got {getattr(args, number)}")
        for run in args.runs:
            result = diagnose(run, tuple(args.what) if args.what else None, prompts=args.prompts, samples=args.samples,
                              length=args.length, iterative=args.iterative, prompt=args.prompt,
                              transform=args.transform, max_new_tokens=args.max_new_tokens, images=args.images,
                              seed=args.seed)
            print(f"{run}:")
            for line in summary_lines(result):
                print(f"  {line}")
    elif args.command == "compare":
        from imprint.evaluate.compare import compare_runs

        print(compare_runs(args.runs, args.output), end="")
    elif args.command == "toyworld" and args.action in ("subjects", "domains"):
        from imprint.toyworld.subjects import SUBJECTS, write_domain, write_subjects

        if not args.output:
            raise ImprintError(f"toyworld {args.action}: --output FOLDER is required")
        make_folder(args.output, "--output")
        folders = (write_subjects(args.output) if args.action == "subjects"
                   else [write_domain(s, Path(args.output) / s.name) for s in SUBJECTS])
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
    elif args.command == "toyworld" and args.action == "train-segmenter":
        from imprint.toyworld.segmenter import SEGMENTER_DIR, mask_iou, train_segmenter

        output = train_segmenter(Path(args.output) if args.output else SEGMENTER_DIR, steps=args.steps or 3000,
                                 seed=args.seed)
        print(f"segmenter written to {output}; mask IoU on fresh renders {mask_iou(output):.3f}")
    elif args.command == "toyworld":
        from imprint.toyworld.evaluator import (WEIGHTS, accuracy_on_fresh_renders, load_evaluator,
                                                train_evaluator)

        output = Path(args.output) if args.output else WEIGHTS
        print(train_evaluator(steps=args.steps or 1800, seed=args.seed, output=output, device=args.device))
        print("accuracy on fresh renders:", accuracy_on_fresh_renders(load_evaluator(output)))
    elif args.command == "lm":
        from imprint.cli_lm import run_lm_command

        return run_lm_command(args)
    elif args.command == "demo":
        from imprint.demo import run_demo

        make_folder(args.output, "--output")
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
