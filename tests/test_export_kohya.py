"""`imprint export --format kohya`: the names A1111 / ComfyUI / kohya look up, and their header fields.

The expected names are built here independently of the exporter, the way those tools build them:
"lora_te_" / "lora_unet_" + the module path in the text encoder (in the CLIPTextModel layout with
its `text_model.` level) / the diffusers UNet, "." -> "_".
"""

import json
import os
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run_cli
from test_diffusers_compat import fresh_pipeline, text_output, unet_output

TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")
SUFFIXES = (".alpha", ".lora_up.weight", ".lora_down.weight")


def clip_module_path(name):
    """A CLIPTextModel module name in the layout kohya / A1111 / ComfyUI know: with `text_model.`.

    transformers 4 names it `text_model.encoder.layers.0...`; transformers 5 dropped the level
    (`encoder.layers.0...`)."""
    return name if name.startswith("text_model.") else "text_model." + name


def tool_text_encoder_modules(text_encoder):
    """kohya name -> module, for each attention projection found in the text encoder."""
    return {"lora_te_" + clip_module_path(name).replace(".", "_"): module
            for name, module in text_encoder.named_modules() if name.rsplit(".", 1)[-1] in TE_TARGETS}


def tool_unet_modules(unet, targets=UNET_TARGETS):
    return {"lora_unet_" + name.replace(".", "_"): module
            for name, module in unet.named_modules() if name.endswith(targets)}


def module_names(state):
    names = set()
    for key in state:
        for suffix in SUFFIXES:
            if key.endswith(suffix):
                names.add(key[: -len(suffix)])
                break
        else:
            raise AssertionError(f"unexpected kohya key {key}")
    return names


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "dog_kohya.safetensors"
    assert run_cli("export", lora_run, "--format", "kohya", "--output", out) == 0
    with safe_open(str(out), framework="pt") as f:
        header = f.metadata()
    return out, load_file(out), header


def test_names_are_the_tools_names(tiny_model, exported):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _, state, _ = exported
    text_encoder = CLIPTextModel.from_pretrained(str(tiny_model), subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(str(tiny_model), subfolder="unet")
    expected_te = set(tool_text_encoder_modules(text_encoder))
    # ComfyUI's table, built from the layer count: lora_te_text_model_encoder_layers_{N}_self_attn_{p}
    layers = CLIPTextConfig.from_pretrained(str(tiny_model), subfolder="text_encoder").num_hidden_layers
    assert expected_te == {f"lora_te_text_model_encoder_layers_{n}_self_attn_{p}"
                           for n in range(layers) for p in TE_TARGETS}
    expected = expected_te | set(tool_unet_modules(unet))
    names = module_names(state)
    assert names == expected
    assert not any(k.startswith("lora_te_encoder_") for k in state)
    # A1111's regexes (extensions-builtin/Lora) for SD 1.x / 2.x names
    a1111 = re.compile(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"
                       r"|lora_unet_(down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_\d+_(.+)")
    assert all(a1111.fullmatch(n) for n in names)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in names  # the tiny UNet: block 1
    for name in names:
        assert {f"{name}{s}" for s in SUFFIXES} <= set(state)
        assert float(state[f"{name}.alpha"]) == 8.0


def test_names_do_not_depend_on_the_text_encoder_layout():
    """A diffusers file from transformers 4 (`text_encoder.text_model.encoder...`) and one from
    transformers 5 (`text_encoder.encoder...`) give the same kohya file; conv names are kohya's."""
    from imprint.util.errors import ImprintError
    from imprint.export.kohya import kohya_state_dict

    def adapter(prefix):
        return {f"{prefix}.lora_A.weight": torch.randn(2, 8), f"{prefix}.lora_B.weight": torch.randn(8, 2)}

    unet = {**adapter("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
            "unet.down_blocks.0.resnets.0.conv1.lora_A.weight": torch.randn(2, 4, 3, 3),
            "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": torch.randn(4, 2, 1, 1)}
    te5 = adapter("text_encoder.encoder.layers.0.self_attn.k_proj")
    te4 = {k.replace("text_encoder.", "text_encoder.text_model."): v for k, v in te5.items()}
    alphas = {"unet": 4.0, "text_encoder": 3.0}
    out5, out4 = kohya_state_dict({**unet, **te5}, alphas), kohya_state_dict({**unet, **te4}, alphas)
    assert out5.keys() == out4.keys()
    assert module_names(out5) == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
        "lora_unet_down_blocks_0_resnets_0_conv1",
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
    }
    assert float(out5["lora_te_text_model_encoder_layers_0_self_attn_k_proj.alpha"]) == 3.0
    assert float(out5["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 4.0
    with pytest.raises(ImprintError, match="same module"):
        kohya_state_dict({**te5, **te4}, alphas)


def test_text_encoder_and_unet_load_in_diffusers(tiny_model, lora_run, exported):
    out, _, _ = exported
    base = fresh_pipeline(tiny_model)
    native = fresh_pipeline(tiny_model)
    native.load_lora_weights(str(lora_run))
    kohya = fresh_pipeline(tiny_model)
    kohya.load_lora_weights(str(out))
    assert (text_output(native) - text_output(base)).abs().max() > 1e-4  # the text-encoder LoRA does something
    torch.testing.assert_close(text_output(kohya), text_output(native), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unet_output(kohya.unet), unet_output(native.unet), atol=1e-5, rtol=1e-4)


def test_text_encoder_applies_the_way_a1111_and_comfyui_look_it_up(tiny_model, lora_run, exported):
    """Merge the file by name lookup in the tools' convention, W += alpha / dim * up @ down; a name
    the table lacks is skipped silently, as those tools do. It must reproduce the trained encoder.
    (diffusers >= 0.3x also accepts names without `text_model.`, so this is the check that fails
    on the names of the old exporter.)"""
    _, state, _ = exported
    merged = fresh_pipeline(tiny_model)
    table = tool_text_encoder_modules(merged.text_encoder)
    skipped, applied = [], 0
    for key, down in state.items():
        if not key.startswith("lora_te") or not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        if name not in table:
            skipped.append(name)
            continue
        up, alpha = state[f"{name}.lora_up.weight"], float(state[f"{name}.alpha"])
        with torch.no_grad():
            table[name].weight += alpha / down.shape[0] * (up @ down)
        applied += 1
    assert not skipped, f"text-encoder modules the tools would drop: {skipped[:3]}"
    assert applied == len(table)
    native = fresh_pipeline(tiny_model)
    native.load_lora_weights(str(lora_run))
    torch.testing.assert_close(text_output(merged), text_output(native), atol=1e-5, rtol=1e-4)


def test_header_has_the_kohya_fields_and_no_local_path(tiny_model, lora_run, exported):
    import imprint

    _, _, header = exported
    meta = json.loads((lora_run / "metadata.json").read_text())
    assert header["ss_network_module"] == "networks.lora"
    assert header["ss_network_dim"] == "2"
    assert header["ss_network_alpha"] == "8.0"
    assert header["ss_sd_model_name"] == tiny_model.name
    assert header["ss_base_model"] == tiny_model.name
    assert header["ss_v2"] == "False"  # cross_attention_dim 32: not the SD 2 text encoder's 1024
    assert header["ss_v_parameterization"] == "False"  # the tiny scheduler predicts epsilon
    assert header["ss_base_model_version"] == "sd_v1"
    assert header["ss_resolution"] == "(32, 32)"
    assert header["ss_steps"] == "5" and header["ss_max_train_steps"] == "5"
    assert float(header["ss_learning_rate"]) == meta["hyperparameters"]["lr"] == 1e-2
    assert header["imprint_version"] == imprint.__version__
    local = {str(tiny_model), str(lora_run), str(tiny_model.parent), str(lora_run.parent), os.getcwd()}
    for key, value in header.items():
        assert isinstance(value, str)
        assert not os.path.isabs(value), (key, value)
        assert not any(p in value for p in local), (key, value)


def test_header_sd2_v_prediction_and_offline_hub_id(tmp_path):
    from imprint.export.kohya import kohya_metadata, model_display_name

    model = tmp_path / "sd2-768"
    (model / "unet").mkdir(parents=True)
    (model / "scheduler").mkdir()
    (model / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 1024}))
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    meta = {"base_model": str(model), "steps": 10,
            "hyperparameters": {"rank": 4, "alpha": None, "resolution": 768, "lora_targets": "attention+conv"}}
    header = kohya_metadata(meta, {}, 4, 4.0)
    assert json.loads(header["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4.0"}
    assert header["ss_v2"] == "True" and header["ss_v_parameterization"] == "True"
    assert header["ss_base_model_version"] == "sd_v2_v"
    assert header["ss_sd_model_name"] == "sd2-768" and header["ss_resolution"] == "(768, 768)"

    # a hub id that is not in the cache: the name as is; SD 2 told by the cross-attention adapter
    # width; the prediction type cannot be known, so neither it nor the version string is written
    hub = {"base_model": "imprint-tests/not-a-cached-model", "hyperparameters": {"rank": 2}}
    cross_k = {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.zeros(2, 1024)}
    header = kohya_metadata(hub, cross_k, 2, 2.0)
    assert header["ss_sd_model_name"] == "imprint-tests/not-a-cached-model"
    assert header["ss_v2"] == "True"
    assert "ss_v_parameterization" not in header and "ss_base_model_version" not in header
    header = kohya_metadata(hub, {}, 2, 2.0)  # nothing to tell the version by: left out, no crash
    assert "ss_v2" not in header and header["ss_network_dim"] == "2"

    assert model_display_name("/data/models/sd15/") == "sd15"
    assert model_display_name("C:\\models\\sd15") == "sd15"
    assert model_display_name("stable-diffusion-v1-5/stable-diffusion-v1-5") == \
        "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.mark.parametrize("stored", [{"alpha": None}, {}])
def test_alpha_none_or_absent_means_rank(tmp_path, stored):
    run = tmp_path / "run"
    run.mkdir()
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(3, 8),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(8, 3)},
              str(run / "pytorch_lora_weights.safetensors"))
    (run / "metadata.json").write_text(json.dumps({
        "method": "lora", "family": "sd", "base_model": "imprint-tests/not-a-cached-model", "steps": 3,
        "hyperparameters": {"rank": 3, **stored}}))
    out = tmp_path / "k.safetensors"
    assert run_cli("export", run, "--format", "kohya", "--output", out) == 0
    state = load_file(out)
    assert float(state["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]) == 3.0
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["ss_network_alpha"] == "3.0"
