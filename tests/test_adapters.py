"""The adapter methods (dora, loha, lokr, krona): their formulas on fixed tensors, the result
files loading back with the trained update, merge == forward, and the kohya / LyCORIS export
giving the trained model under the formulas ComfyUI and A1111 apply.

The loader formulas below are written here from ComfyUI's comfy/weight_adapter/{lora,loha,lokr}.py
and base.py (weight_decompose) and A1111's extensions-builtin/Lora, independently of the exporter.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, train_tiny_run
from test_diffusers_compat import fresh_pipeline, text_output, unet_output
from test_export_kohya import clip_module_path

ADAPTERS = ["dora", "loha", "lokr", "krona", "tlora"]
END_TO_END = [*ADAPTERS, "pivotal"]


def prepared(model, name, **settings):
    """The tiny model's family with the method's adapters, moved off their zero start."""
    from imprint.families import load_family
    from imprint.methods import METHODS, Subject

    family = load_family(str(model))
    cls = METHODS[name]
    chosen = cls.Settings(**settings)
    if hasattr(chosen, "resolve"):
        chosen.resolve()
    if hasattr(chosen, "resolve_steps"):
        chosen.resolve_steps(10)
    method = cls(chosen)
    torch.manual_seed(0)
    params = method.prepare(family, Subject("sks", "toy"))
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn_like(p))
    method.after_optimizer_step(family, 1)  # what training does after an update (TI: other rows back)
    return family, method


def settings_of(name):
    return {"krona": {"krona_a1": 4, "krona_a2": 8}, "tlora": {}}.get(name, {"rank": 2, "alpha": 8.0, "train_text_encoder": True})


# --- formulas on fixed tensors -------------------------------------------------------------

def test_krona_forward_is_the_kronecker_update():
    from imprint.methods.krona import KronALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(12, 8)
    layer = KronALinear(base, a1=2, a2=3)
    x = torch.randn(5, 12)
    assert torch.equal(layer(x), base(x))  # B = 0: no update at step 0
    assert layer.lokr_w1.shape == (2, 3) and layer.lokr_w2.shape == (4, 4)
    with torch.no_grad():
        layer.lokr_w2.normal_()
    A, B = layer.lokr_w1.detach(), layer.lokr_w2.detach()
    kron = torch.zeros(8, 12)  # A (x) B element by element: kron[i*4 + k, j*4 + l] = A[i, j] B[k, l]
    for i in range(2):
        for j in range(3):
            kron[i * 4:(i + 1) * 4, j * 4:(j + 1) * 4] = A[i, j] * B
    expected = x @ (base.weight + kron).T + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.merged_weight(), base.weight + kron)


def test_krona_init_follows_the_paper():
    from imprint.methods.krona import KronALinear

    torch.manual_seed(0)
    layer = KronALinear(torch.nn.Linear(256, 256), a1=4, a2=64)
    assert torch.count_nonzero(layer.lokr_w2) == 0
    assert abs(layer.lokr_w1.std().item() - 1 / 4) < 0.02  # N(0, 1/a1^2)


def test_krona_parameter_count_at_the_papers_setting():
    """(a1, a2) = (4, 64) on a 320-wide self-attention: A is 4 x 64, B is 80 x 5 per projection."""
    from imprint.methods.krona import KronALinear

    layer = KronALinear(torch.nn.Linear(320, 320), a1=4, a2=64)
    assert sum(p.numel() for p in (layer.lokr_w1, layer.lokr_w2)) == 4 * 64 + 80 * 5


# --- the loaders' formulas (ComfyUI / A1111), on a kohya file ------------------------------

def loader_delta(parts, weight):
    """dW as ComfyUI computes it for one module's parts (strength 1)."""
    shape = weight.shape
    if "lora_up.weight" in parts:
        up, down = parts["lora_up.weight"], parts["lora_down.weight"]
        diff = (up.flatten(1) @ down.flatten(1)).reshape(shape) * (parts["alpha"].item() / down.shape[0])
        if "dora_scale" in parts:  # LyCORIS' output-axis layout: m (W + dW) / ||W + dW||_row
            merged = weight + diff
            norm = merged.flatten(1).norm(dim=1, keepdim=True)
            return merged * (parts["dora_scale"] / norm) - weight
        return diff
    if "hada_w1_a" in parts:
        p = parts
        scale = p["alpha"].item() / p["hada_w1_b"].shape[0]
        return ((p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])).reshape(shape) * scale
    if any(k.startswith("lokr_") for k in parts):
        dim = None
        w1 = parts.get("lokr_w1")
        if w1 is None:
            dim = parts["lokr_w1_b"].shape[0]
            w1 = parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        w2 = parts.get("lokr_w2")
        if w2 is None:
            dim = parts["lokr_w2_b"].shape[0]
            w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        scale = parts["alpha"].item() / dim if ("alpha" in parts and dim is not None) else 1.0
        return torch.kron(w1, w2).reshape(shape) * scale
    if "diff" in parts:
        assert parts["diff"].shape == shape  # ComfyUI skips a diff of another shape
        return parts["diff"]
    raise AssertionError(f"no loader reads parts {sorted(parts)}")


def apply_like_the_loaders(pipe, state):
    """Merge a kohya / LyCORIS file into a diffusers pipeline by the tools' names and formulas."""
    modules = {"lora_unet_" + n.replace(".", "_"): m for n, m in pipe.unet.named_modules()}
    modules.update({"lora_te_" + clip_module_path(n).replace(".", "_"): m
                    for n, m in pipe.text_encoder.named_modules()})
    grouped = {}
    for key, value in state.items():
        name, _, part = key.partition(".")
        grouped.setdefault(name, {})[part] = value.float()
    for name, parts in grouped.items():
        module = modules[name]  # a name the tools do not know would be skipped: fail instead
        with torch.no_grad():
            module.weight += loader_delta(parts, module.weight.float())
    return len(grouped)


# --- round trips through the result files and the export ----------------------------------

def write_run(folder, model, name, method, family):
    folder.mkdir()
    files = method.save_result(family, folder)
    hp = {**{"rank": None, "alpha": None}, **vars(method.settings)}
    (folder / "metadata.json").write_text(json.dumps({
        "method": name, "base_model": str(model), "family": "sd", "hyperparameters": hp}))
    return files


@pytest.mark.parametrize("name", ADAPTERS)
def test_result_and_export_give_the_trained_model(name, tiny_model, tmp_path):
    from imprint.methods import METHODS

    family, method = prepared(tiny_model, name, **settings_of(name))
    trained_unet, trained_text = unet_output(family.unet), None
    if "text_encoder" in method.trained_parts():
        trained_text = text_output_of(family)
    with family.adapters_disabled():
        frozen_unet = unet_output(family.unet)
    assert (trained_unet - frozen_unet).abs().max() > 1e-3  # the update is really there

    run = tmp_path / "run"
    write_run(run, tiny_model, name, method, family)
    # imprint's own loader (imprint generate)
    pipe = fresh_pipeline(tiny_model)
    METHODS[name].load_into_pipeline(pipe, run, json.loads((run / "metadata.json").read_text()))
    torch.testing.assert_close(unet_output(pipe.unet), trained_unet, rtol=1e-4, atol=1e-5)
    if trained_text is not None:
        torch.testing.assert_close(text_output(pipe), trained_text, rtol=1e-4, atol=1e-5)

    # the export, applied with the loaders' formulas to the base model
    for diff in (False, True):
        out = tmp_path / f"export-{diff}.safetensors"
        assert run_cli("export", run, "--output", out, *(["--diff"] if diff else [])) == 0
        state = load_file(out)
        if not diff:
            kinds = {k.partition(".")[2] for k in state}
            expected = {"dora": {"lora_up.weight", "lora_down.weight", "alpha", "dora_scale"},
                        "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
                        "krona": {"lokr_w1", "lokr_w2"}, "tlora": {"diff"}}.get(name)
            if expected:
                assert kinds == expected
            else:
                assert kinds <= {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}
        base = fresh_pipeline(tiny_model)
        assert apply_like_the_loaders(base, state) >= 8
        torch.testing.assert_close(unet_output(base.unet), trained_unet, rtol=1e-4, atol=1e-5)
        if trained_text is not None:
            torch.testing.assert_close(text_output(base), trained_text, rtol=1e-4, atol=1e-5)


def text_output_of(family):
    ids = family.tokenizer(["a photo of a toy"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return family.text_encoder(ids)[0]


@pytest.mark.parametrize("name", ADAPTERS)
def test_merged_weights_equal_the_adapted_forward(name, tiny_model):
    """merge(adapter)(x) == forward_with_adapter(x), for every adapted layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from imprint.methods.layers import AdapterLinear

    family, _ = prepared(tiny_model, name, **settings_of(name))
    checked = 0
    for module in [*family.unet.modules(), *family.text_encoder.modules()]:
        if not isinstance(module, (BaseTunerLayer, AdapterLinear)):
            continue
        base = module.base_layer
        x = torch.randn(3, base.in_features)
        with torch.no_grad():
            adapted = module(x)
            if isinstance(module, AdapterLinear):
                merged = torch.nn.functional.linear(x, module.merged_weight(), base.bias)
            else:
                module.merge()
                merged = module(x)  # merged: the base layer with the merged weight
                module.unmerge()
        torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("name", END_TO_END)
def test_trains_generates_and_exports_end_to_end(name, tiny_model, tmp_path):
    flags = {"krona": ["--krona-a2", "8"], "tlora": []}.get(name, ["--rank", "2"])
    run = train_tiny_run(tmp_path, tiny_model, "--method", name, "--steps", "3", "--lr", "1e-2", *flags)
    assert json.loads((run / "metadata.json").read_text())["method"] == name
    assert run_cli("generate", "--run", run, "a sks toy", "--num-images", "1", "--inference-steps", "2",
                   "--output", tmp_path / "gen") == 0
    assert (tmp_path / "gen" / "00-00.png").is_file()
    assert run_cli("export", run, "--output", tmp_path / "k.safetensors") == 0


# --- pivotal tuning -----------------------------------------------------------------------

def test_pivotal_embedding_learns_at_its_rate_then_freezes(tiny_model, tmp_path):
    run = train_tiny_run(tmp_path, tiny_model, "--method", "pivotal", "--steps", "4", "--lr", "1e-2",
                         "--embedding-lr", "0.05", "--freeze-embedding-at", "2", "--checkpoint-every", "1",
                         "--keep-checkpoints", "4", "--no-final-samples")
    ckpt = {n: load_file(run / "checkpoints" / f"checkpoint-{n}" / "trainable.safetensors") for n in (1, 2, 3)}
    state = json.loads((run / "checkpoints" / "checkpoint-1" / "state.json").read_text())
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [1e-2, 0.05]
    emb = {n: c["learned_embeds"] for n, c in ckpt.items()}
    assert not torch.equal(emb[1], emb[2])  # trained up to the freeze step
    assert torch.equal(emb[2], emb[3])  # then fixed
    final = load_file(run / "learned_embeds.safetensors")
    assert torch.equal(next(iter(final.values())), emb[2])
    lora = [k for k in ckpt[2] if k.startswith("lora.")]
    assert lora and any(not torch.equal(ckpt[2][k], ckpt[3][k]) for k in lora)  # LoRA goes on


def test_pivotal_result_loads_into_diffusers(tiny_model, tmp_path):
    """The LoRA file and the embedding file, applied by diffusers, give the trained text encoder and UNet."""
    from imprint.methods import METHODS

    family, method = prepared(tiny_model, "pivotal", rank=2, num_vectors=2, freeze_embedding_at=5)
    prompt = f"a photo of {method.prompt_token()} toy"
    ids = family.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        trained_text = family.text_encoder(ids)[0]
    trained_unet = unet_output(family.unet)
    run = tmp_path / "run"
    write_run(run, tiny_model, "pivotal", method, family)
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".safetensors") == [
        "learned_embeds.safetensors", "pytorch_lora_weights.safetensors"]
    pipe = fresh_pipeline(tiny_model)
    METHODS["pivotal"].load_into_pipeline(pipe, run, method.metadata())
    text = METHODS["pivotal"].rewrite_prompt("a photo of sks toy", {"token": "sks", **method.metadata()})
    text = pipe.maybe_convert_prompt(text, pipe.tokenizer)  # the pipeline expands a multi-vector token
    ids = pipe.tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(ids)[0], trained_text, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unet_output(pipe.unet), trained_unet, rtol=1e-4, atol=1e-5)


# --- transformed LoRA ---------------------------------------------------------------------

def test_tlora_rings_against_a_direct_computation():
    from imprint.methods.tlora import TLoRALinear, ring_chain, ring_matrix, split_dimension

    assert split_dimension(320, 3) == [8, 8, 5] and split_dimension(768, 2) == [32, 24]
    assert split_dimension(7, 3) == [7, 1, 1]
    torch.manual_seed(0)
    cores = [torch.randn(2, 3, 2, 2), torch.randn(3, 2, 2, 2)]
    direct = torch.zeros(6, 6)
    for i1 in range(2):
        for i2 in range(3):
            for j1 in range(3):
                for j2 in range(2):
                    direct[i1 * 3 + i2, j1 * 2 + j2] = torch.trace(cores[0][i1, j1] @ cores[1][i2, j2])
    torch.testing.assert_close(ring_matrix(cores), direct)
    chain = [torch.randn(2, 3, 3), torch.randn(4, 3, 3)]
    torch.testing.assert_close(ring_chain(chain)[1 * 4 + 3], chain[0][1] @ chain[1][3])

    layer = TLoRALinear(torch.nn.Linear(12, 8), transform_rank=2, residual_rank=3, cores=2)
    torch.testing.assert_close(layer.transform_matrix(), torch.eye(12))  # T = I at step 0 (Prop. 1)
    x = torch.randn(4, 12)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # D = 0 at step 0
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    t = ring_matrix(list(layer.transform))
    d = torch.zeros(8, 12)  # D[i, j] = tr(B1[i1] B2[i2] C1[j1] C2[j2]), row-major modes
    b, c = list(layer.residual_out), list(layer.residual_in)
    (o1, o2), (n1, n2) = layer.out_modes, layer.in_modes
    for i in range(8):
        for j in range(12):
            d[i, j] = torch.trace(b[0][i // o2] @ b[1][i % o2] @ c[0][j // n2] @ c[1][j % n2])
    expected = x @ (layer.base_layer.weight @ t + d).T + layer.base_layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_svd_export_reports_its_error_and_is_exact_at_full_rank(tiny_model, tmp_path, caplog):
    family, method = prepared(tiny_model, "tlora")
    trained = unet_output(family.unet)
    run = tmp_path / "run"
    write_run(run, tiny_model, "tlora", method, family)
    out = tmp_path / "svd.safetensors"
    with caplog.at_level("INFO", logger="imprint"):
        assert run_cli("export", run, "--output", out, "--svd-rank", "64") == 0  # >= every layer's width
    assert "relative error" in caplog.text
    base = fresh_pipeline(tiny_model)
    apply_like_the_loaders(base, load_file(out))
    torch.testing.assert_close(unet_output(base.unet), trained, rtol=1e-3, atol=1e-4)
    assert run_cli("export", run, "--output", out, "--svd-rank", "1") == 0
    base = fresh_pipeline(tiny_model)
    apply_like_the_loaders(base, load_file(out))
    assert (unet_output(base.unet) - trained).abs().max() > 1e-4  # rank 1 loses something


def test_compile_regional_compiles_each_repeated_block(tiny_model):
    """--compile regional: every transformer block gets a compiled forward (the run itself is
    measured in benchmarks/, where a CPU start of about a minute is not a test's)."""
    from imprint.families import load_family

    family = load_family(str(tiny_model))
    blocks = [m for m in family.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(getattr(b, "_compiled_call_impl", None) is None for b in blocks)
    family.compile_denoiser("regional")
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert getattr(family.unet, "_compiled_call_impl", None) is None  # the whole model is not
