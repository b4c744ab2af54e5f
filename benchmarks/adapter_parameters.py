"""Trainable parameters of each adapter method on the real UNet architectures (SD 1.5, SD 2.1,
SDXL), built from their configs on the meta device (no weights needed), written to RESULTS.md.

DiffuseKronA's paper gives 0.52 M at (a1, a2) = (4, 64) on SD (and 0.32 M at (8, 64) on SD 1.4,
its Tab. 4) and 3.8 M on SDXL; this table is what imprint's layers count on the same layers
(the UNet's attention q, k, v, out).

  python benchmarks/adapter_parameters.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402

from imprint.methods import METHODS  # noqa: E402

SD15 = dict(cross_attention_dim=768, attention_head_dim=8)
SD21 = dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
SDXL = dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
ARCHITECTURES = {"SD 1.5": SD15, "SD 2.1": SD21, "SDXL": SDXL}
SETTINGS = {  # name: (method, settings)
    "lora r4": ("lora", dict(rank=4)),
    "dora r4": ("dora", dict(rank=4)),
    "loha r4": ("loha", dict(rank=4)),
    "lokr r4, factor -1": ("lokr", dict(rank=4)),
    "krona (4, 64)": ("krona", dict(krona_a1=4, krona_a2=64)),
    "krona (8, 64)": ("krona", dict(krona_a1=8, krona_a2=64)),
    "tlora (2, 6), 3 cores": ("tlora", dict()),
}


class Parts:
    """The family attributes a method's add_trainables reads, around one UNet."""

    lora_targets = {"unet": ["to_q", "to_k", "to_v", "to_out.0"]}
    lora_conv_targets = {}

    def __init__(self, unet):
        self.modules = {"unet": unet}


def count(architecture: dict, method: str, settings: dict) -> int:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**architecture)
        cls = METHODS[method]
        chosen = cls.Settings(**settings)
        if hasattr(chosen, "resolve"):
            chosen.resolve()
        params = cls(chosen).add_trainables(Parts(unet))
    return sum(p.numel() for p in params)


def main() -> None:
    start = time.time()
    rows = []
    for label, (method, settings) in SETTINGS.items():
        counts = [count(arch, method, settings) for arch in ARCHITECTURES.values()]
        rows.append(f"| {label} | " + " | ".join(f"{c / 1e6:.3f} M" for c in counts) + " |")
    table = {label: [count(arch, m, st) for arch in ARCHITECTURES.values()] for label, (m, st) in SETTINGS.items()}
    sd, xl = table["krona (4, 64)"], table["lora r4"]
    notes = f"""
Against the papers (their figures: DiffuseKronA Tab. 2 / section 4.2, TLoRA's abstract and summary):
- SDXL: krona (4, 64) counts {sd[2] / 1e6:.2f} M here, the paper 3.8 M; LoRA r4 {xl[2] / 1e6:.2f} M here, the
  paper's LoRA-DreamBooth 5.8 M: both match.
- SD: krona (4, 64) counts {sd[0] / 1e6:.2f} M (SD 1.5) / {sd[1] / 1e6:.2f} M (SD 2.1) here, the paper 0.52 M; its
  LoRA-DreamBooth is 1.09 M against {xl[0] / 1e6:.2f} M / {xl[1] / 1e6:.2f} M here. The ratio krona / LoRA is the
  same ({sd[0] / xl[0]:.2f} here, {0.52 / 1.09:.2f} in the paper), so the gap is in which SD layers the paper
  counted for both methods (about {0.52 / (sd[0] / 1e6):.2f}x ours), not in the Kronecker factors; the paper does not list them.
- TLoRA reports 0.4 M on SDXL; its ranks and mode sizes are not in what could be read of the paper, so the
  (2, 6), 3-core setting here ({table['tlora (2, 6), 3 cores'][2] / 1e6:.2f} M on SDXL) is imprint's choice, not the paper's.
"""
    header = "| method | " + " | ".join(ARCHITECTURES) + " |\n| --- |" + " ---: |" * len(ARCHITECTURES)
    body = f"""{time.strftime('%Y-%m-%d')}; the UNet's attention projections (to_q, to_k, to_v, to_out.0) of each
architecture, built from its config on the meta device; {time.time() - start:.0f} s.
Command: `python benchmarks/adapter_parameters.py`

{header}
""" + "\n".join(rows) + "\n" + notes
    write_section(Path(__file__).with_name("RESULTS.md"), "## Adapter parameters on the real architectures (issue 13)", body)
    print(body)


if __name__ == "__main__":
    main()
