"""imprint lm: JSONL data, answer-only labels, batches, the loss, methods, resume, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imprint.lm.data import IGNORE, BatchPlan, Record, collate, read_jsonl, tokenize_record
from imprint.util.errors import ImprintError

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]


@pytest.fixture(scope="session")
def reverse_data(tmp_path_factory) -> Path:
    """40 word-reversal examples (prompt / completion / answer), as the shipped transform task."""
    folder = tmp_path_factory.mktemp("lm-data")
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(40):
        words = [WORDS[i] for i in torch.randint(len(WORDS), (3,), generator=g).tolist()]
        answer = " ".join(reversed(words))
        lines.append(json.dumps({"prompt": f"Reverse: {' '.join(words)}", "completion": answer, "answer": answer,
                                 "match": "exact"}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def tokenizer_of(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# --- data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "completion": "b"', "line 2: not valid JSON"),
    ('{"prompt": "a"}', "line 2: missing field `completion`"),
    ('{"prompt": "a", "completion": "  "}', "line 2: `completion` is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: the last message must be the assistant's"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "line 2: messages[0] must be"),
    ('{"prompt": "a", "completion": "b", "match": "fuzzy"}', "line 2"),
    ('[1, 2]', "line 2: a record must be a JSON object"),
])
def test_a_bad_line_is_a_one_line_error_naming_it(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "fine", "completion": "ok"}\n' + line + "\n")
    with pytest.raises(ImprintError) as e:
        read_jsonl(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_over_long_example_names_its_line_and_the_flag(tiny_llama, tmp_path):
    from imprint.lm.data import tokenize_all

    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "short", "completion": "ok"}\n{"prompt": "' + "long " * 50 + '", "completion": "ok"}\n')
    with pytest.raises(ImprintError, match=r"line 2: \d+ tokens, over --max-length 100"):
        tokenize_all(tokenizer_of(tiny_llama), read_jsonl(path), max_length=100)


def test_labels_are_the_assistant_turns_and_their_end_of_turn(tiny_llama):
    tokenizer = tokenizer_of(tiny_llama)
    record = Record([{"role": "user", "content": "Say A"}, {"role": "assistant", "content": "A."},
                     {"role": "user", "content": "Say B"}, {"role": "assistant", "content": "B!"}], "B!", "exact", 1)
    example = tokenize_record(tokenizer, record)
    full = tokenizer.apply_chat_template(record.messages, tokenize=False)
    assert tokenizer.decode(example.input_ids) == full  # the pieces make the whole conversation
    trained = [t if t != IGNORE else None for t in example.labels]
    runs, current = [], []
    for token in trained + [None]:
        if token is None and current:
            runs.append(tokenizer.decode(current))
            current = []
        elif token is not None:
            current.append(token)
    assert runs == ["A.<|im_end|>\n", "B!<|im_end|>\n"]


def test_batches_are_the_same_after_a_resume_and_grouping_pads_less():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (200,), generator=g).tolist()
    plan, again = BatchPlan(lengths, 8, seed=1), BatchPlan(lengths, 8, seed=1)
    assert [plan(n) for n in range(60)] == [again(n) for n in reversed(range(60))][::-1]
    epoch = sorted(i for n in range(25) for i in plan(n))
    assert epoch == list(range(200))  # an epoch visits every example once

    def padding(p):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in (p(n) for n in range(25)))
    assert padding(plan) < 0.5 * padding(BatchPlan(lengths, 8, seed=1, group_by_length=False))


# --- the loss ----------------------------------------------------------------------------------

def make_config(model, data, output, **flags):
    from imprint.lm.settings import build_config

    return build_config({}, {"model": str(model), "data": str(data), "output": str(output), **flags})


def test_accumulated_loss_is_the_token_mean_of_one_big_batch(tiny_llama, reverse_data, tmp_path):
    """A step of 2 micro-batches gives the gradient of sum(CE) / all answer tokens of the step."""
    from imprint.core.precision import make_accelerator
    from imprint.families.causal_lm import CausalLM
    from imprint.lm.data import tokenize_all
    from imprint.lm.train import LMTask
    from imprint.methods import LM_METHODS

    cfg = make_config(tiny_llama, reverse_data, tmp_path / "run", method="full", batch_size=3,
                      gradient_accumulation_steps=2)
    lm = CausalLM.load(str(tiny_llama))
    examples = tokenize_all(lm.tokenizer, read_jsonl(reverse_data), 512)
    # unequal answer lengths, so a mean of micro-batch means would differ
    examples[0].labels = [IGNORE] * (len(examples[0].labels) - 3) + examples[0].labels[-3:]
    task = LMTask(cfg, make_accelerator("no"), lm, examples, LM_METHODS["full"]())
    for micro in range(2):
        loss, _ = task.loss(0, micro)
        (loss / 2).backward()
    accumulated = [p.grad.clone() for p in task.params]
    task.lm.model.zero_grad()
    rows = [examples[i] for micro in range(2) for i in task.plan(micro)]
    batch = collate(rows, lm.tokenizer.pad_token_id)
    logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    direct = torch.nn.functional.cross_entropy(logits[targets != IGNORE], targets[targets != IGNORE])
    direct.backward()
    for a, p in zip(accumulated, task.params):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_padding_free_batches_give_the_padded_loss_and_gradient(tiny_llama, reverse_data):
    """Examples end to end in one row, position ids restarting: each example attends only to itself,
    so the loss and the gradient are the padded batch's (the rows differ in length here)."""
    from imprint.families.causal_lm import CausalLM
    from imprint.lm.data import tokenize_all
    from imprint.lm.objectives.base import answer_loss_sum

    lm = CausalLM.load(str(tiny_llama))
    lm.model.requires_grad_(True)
    examples = tokenize_all(lm.tokenizer, read_jsonl(reverse_data), 512)[:5]
    examples[1] = type(examples[1])(examples[1].input_ids + examples[0].input_ids[:7],
                                    examples[1].labels + examples[0].labels[:7])
    assert len({len(e.input_ids) for e in examples}) > 1
    packed = collate(examples, lm.tokenizer.pad_token_id, padding_free=True)
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples)) and "attention_mask" not in packed
    results = []
    for batch in (collate(examples, lm.tokenizer.pad_token_id), packed):
        lm.model.zero_grad()
        total, tokens = answer_loss_sum(lm.model, batch)
        total.backward()
        results.append((total.item(), tokens, [p.grad.clone() for p in lm.model.parameters()]))
    (padded_total, padded_tokens, padded_grads), (free_total, free_tokens, free_grads) = results
    assert free_tokens == padded_tokens
    assert free_total == pytest.approx(padded_total, rel=1e-5)
    for a, b in zip(padded_grads, free_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- methods, resume ----------------------------------------------------------------------------

CASES = {
    "lora": ["--method", "lora", "--lr", "1e-2", "--rank", "4", "--lr-scheduler", "cosine"],
    # DoRA's magnitudes beside A and B; dropout seeded per step
    "dora": ["--method", "lora", "--dora", "--rslora", "--lr", "1e-2", "--rank", "4", "--lora-dropout", "0.2"],
    "full": ["--method", "full", "--lr", "1e-3", "--gradient-accumulation-steps", "2"],
    # a new half at step 3: the resume (from 4) must restore the second stage's half
    "hft": ["--method", "hft", "--lr", "1e-3", "--hft-stages", "2"],
    # masks refreshed at step 3, before the checkpoint (4) the resume starts from
    "lift": ["--method", "lift", "--lr", "1e-2", "--lift-rank", "2", "--lift-filter-rank", "4",
             "--lift-update-interval", "3"],
    # phase 2 from step 3: the resume (from 4) restores its mask and its fresh optimizer's state
    "ltsft": ["--method", "ltsft", "--lr", "1e-2", "--ltsft-density", "0.05", "--ltsft-l1", "0.1"],
    # stage 2 (offsets on the chosen heads) from step 3
    "lofit": ["--method", "lofit", "--lofit-heads", "3", "--lofit-l1", "1e-3"],
    "locft": ["--method", "locft", "--lr", "1e-2", "--locft-layer", "2"],
}


def lm_train(model, data, out, extra, kill=None, resume=False):
    env = dict(os.environ)
    env.pop("IMPRINT_TEST_KILL", None)
    if kill:
        env["IMPRINT_TEST_KILL"] = kill
    args = [sys.executable, "-m", "imprint.cli", "lm", "train", "--model", str(model), "--data", str(data),
            "--output", str(out), "--steps", "6", "--checkpoint-every", "2", "--batch-size", "4", "--seed", "3",
            "--no-evaluate", *extra] + (["--resume"] if resume else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def result_tensors(run: Path) -> dict[str, torch.Tensor]:
    files = sorted(run.glob("**/*.safetensors"))
    files = [f for f in files if "checkpoints" not in f.parts]
    assert files, f"no result files in {run}"
    return {f"{f.relative_to(run)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_and_resumed_equals_unbroken(case, tiny_llama, reverse_data, tmp_path):
    unbroken = lm_train(tiny_llama, reverse_data, tmp_path / "a", CASES[case])
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    killed = lm_train(tiny_llama, reverse_data, tmp_path / "b", CASES[case], kill="step:5")
    assert killed.returncode != 0
    resumed = lm_train(tiny_llama, reverse_data, tmp_path / "b", CASES[case], resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = result_tensors(tmp_path / "a"), result_tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    base = result_tensors(tiny_llama)
    changed = [k for k in a if k.startswith("model/") and not torch.equal(a[k], base[k.replace("model/", "", 1)])]
    assert changed or case in ("lora", "dora", "lift", "ltsft", "lofit", "locft")  # the full-weight methods changed the model
    validation = json.loads((tmp_path / "b" / "validation.json").read_text())["validation_loss"]
    assert set(validation) == {"2", "4", "6"}


def test_lora_result_is_a_peft_adapter_and_equals_the_applied_run(tiny_llama, reverse_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from imprint.lm.generate import load_run_model

    run = lm_train(tiny_llama, reverse_data, tmp_path / "run", CASES["lora"])
    assert run.returncode == 0, run.stderr[-2000:]
    lm, metadata = load_run_model(tmp_path / "run")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                           str(tmp_path / "run" / "adapter"))
    ids = torch.randint(0, 250, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, peft_model(ids).logits, rtol=1e-5, atol=1e-5)
        with peft_model.disable_adapter():
            assert (lm.model(ids).logits - peft_model(ids).logits).abs().max() > 1e-3  # it did learn
    assert metadata["trainable_parameters"] == sum(v.numel() for v in result_tensors(tmp_path / "run").values())


def test_hft_trains_exactly_half_of_each_block_by_category():
    from imprint.methods.hft import CATEGORIES, draw_half

    g = torch.Generator().manual_seed(0)
    half = draw_half(30, g)
    for chosen in half:
        assert len(chosen & set(CATEGORIES["attention"])) == 2
        assert len(chosen & set(CATEGORIES["norm"])) == 1
        assert len(chosen & set(CATEGORIES["mlp"])) in (1, 2)
    assert sum(len(c & set(CATEGORIES["mlp"])) for c in half) == 45  # half of 90 MLP matrices
    assert half != draw_half(30, torch.Generator().manual_seed(1))


def test_hft_leaves_the_frozen_half_as_it_was(tiny_llama, reverse_data, tmp_path):
    from imprint.methods.hft import CATEGORIES, HFT_STREAM, draw_half, member_of
    from imprint.util.rng import step_generator

    run = lm_train(tiny_llama, reverse_data, tmp_path / "run", ["--method", "hft", "--lr", "1e-2"])
    assert run.returncode == 0, run.stderr[-2000:]
    tuned, base = load_file(str(tmp_path / "run" / "model" / "model.safetensors")), load_file(str(tiny_llama / "model.safetensors"))
    half = draw_half(4, step_generator(3, HFT_STREAM, 0))
    for name, value in base.items():
        parts = name.split(".")
        if "layers" not in parts:
            continue
        layer = int(parts[parts.index("layers") + 1])
        trained = member_of(name) in half[layer]
        assert trained != torch.equal(value, tuned[name]), name
    assert any(member_of(n) in CATEGORIES["norm"] for n in base)
    changed = sum(value.numel() for name, value in base.items() if not torch.equal(value, tuned[name]))
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["trainable_parameters"] == changed < sum(v.numel() for v in base.values())


# --- evaluation ---------------------------------------------------------------------------------

def test_evaluation_of_the_base_against_itself_has_no_drift(tiny_llama, reverse_data):
    from imprint.families.causal_lm import CausalLM
    from imprint.lm.evaluate import evaluate_model

    lm = CausalLM.load(str(tiny_llama))
    targets = read_jsonl(reverse_data)[:4]
    result = evaluate_model(lm, None, targets, max_new_tokens=4)
    assert result["kl_drift"] == pytest.approx(0.0, abs=1e-9)
    assert result["target"]["accuracy"] == result["target"]["base_accuracy"]
    assert result["target"]["gain"] == 0


def test_lm_evaluate_writes_the_evaluation_and_a_report(tiny_llama, reverse_data, tmp_path):
    from imprint.cli import main

    run = lm_train(tiny_llama, reverse_data, tmp_path / "run", CASES["lora"] + ["--validation-share", "0.1"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert main(["lm", "evaluate", str(tmp_path / "run"), "--max-new-tokens", "4",
                 "--output", str(tmp_path / "all.html")]) == 0
    result = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert result["target"]["examples"] == 4 and result["kl_drift"] > 0
    assert (tmp_path / "run" / "report.html").is_file() and "<svg" in (tmp_path / "all.html").read_text()


def test_lm_commands_show_their_defaults_and_errors(tiny_llama, tmp_path, capsys):
    from imprint.cli import build_parser, main

    with pytest.raises(SystemExit):
        build_parser().parse_args(["lm", "train", "--help"])
    text = capsys.readouterr().out
    assert "--batch-size BATCH_SIZE" in text and "[default: 8]" in text and "[default: smollm2]" in text
    assert main(["lm", "methods"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{m}:" in listed for m in ("lora", "full", "hft"))
    assert main(["lm", "train", "--model", str(tiny_llama), "--data", str(tmp_path / "missing.jsonl"),
                 "--output", str(tmp_path / "run")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["lm", "train", "--data", "x.jsonl", "--output", "o", "--hft-stages", "2"]) == 2
    assert "a setting of hft" in capsys.readouterr().err


# --- LiNeS ----------------------------------------------------------------------------------------

def test_lines_scaling_is_the_papers_formula_per_block(tiny_llama, reverse_data, tmp_path):
    """theta_0 + (alpha + beta * l / (L - 1)) * tau in block l, alpha outside the blocks."""
    from imprint.families.causal_lm import CausalLM
    from imprint.lm import lines as lines_module
    from imprint.lm.generate import load_run_model

    run = lm_train(tiny_llama, reverse_data, tmp_path / "run", CASES["full"])
    assert run.returncode == 0, run.stderr[-2000:]
    tuned = {k: v for k, v in load_run_model(tmp_path / "run")[0].model.named_parameters()}
    base = {k: v for k, v in CausalLM.load(str(tiny_llama)).model.named_parameters()}
    lm, metadata = load_run_model(tmp_path / "run")
    metadata = {**metadata, "method": "lines", "source_run": str(tmp_path / "run"), "alpha": 0.3, "beta": 0.7}
    scaled = CausalLM.load(str(tiny_llama))
    lines_module.apply(scaled, tmp_path / "run", metadata)
    L, seen = 4, set()
    for name, p in scaled.model.named_parameters():
        parts = name.split(".")
        scale = 0.3 + 0.7 * int(parts[2]) / (L - 1) if parts[1] == "layers" else 0.3
        direct = base[name] + scale * (tuned[name] - base[name])
        torch.testing.assert_close(p, direct, rtol=0, atol=1e-7, msg=name)
        seen.add(round(scale, 6))
    assert seen == {0.3, round(0.3 + 0.7 / 3, 6), round(0.3 + 1.4 / 3, 6), 1.0}


def test_lines_chooses_by_twice_the_normalised_target_plus_control():
    from imprint.lm.lines import choose

    sweep = [{"alpha": 1.0, "beta": 0.0, "target": 0.8, "retention": 0.5},
             {"alpha": 0.5, "beta": 0.5, "target": 0.7, "retention": 0.9},   # 2 * 0.875 + 0.9 = 2.65
             {"alpha": 0.0, "beta": 1.0, "target": 0.2, "retention": 1.0}]   # 2 * 0.25 + 1 = 1.5
    assert choose(sweep)["alpha"] == 0.5
    assert choose(sweep, target_weight=10)["alpha"] == 1.0  # 10 * 1 + 0.5 beats 10 * 0.875 + 0.9
    # a tie goes to the smaller alpha, as the authors' argmax over alphas swept upward from 0
    tie = [{"alpha": 1.0, "beta": 0.0, "target": 0.85, "retention": 12 / 17},
           {"alpha": 0.5, "beta": 0.5, "target": 0.8, "retention": 14 / 17}]  # both 46 / 17
    assert choose(tie)["alpha"] == 0.5


def test_lm_lines_writes_a_run_that_evaluates_and_generates(tiny_llama, reverse_data, tmp_path, monkeypatch):
    from imprint.cli import main

    run = lm_train(tiny_llama, reverse_data, tmp_path / "run", CASES["lora"] + ["--validation-share", "0.1"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert main(["lm", "lines", str(tmp_path / "run"), "--alphas", "0,0.5,1", "--max-new-tokens", "3"]) == 0
    chosen = json.loads((tmp_path / "run-lines" / "lines.json").read_text())
    assert [e["alpha"] for e in chosen["sweep"]] == [1.0, 0.5, 0.0]
    assert main(["lm", "evaluate", str(tmp_path / "run"), "--max-new-tokens", "3"]) == 0
    itself = json.loads((tmp_path / "run" / "evaluation.json").read_text())  # alpha 1, beta 0: the run
    assert chosen["sweep"][0]["kl_drift"] == pytest.approx(itself["kl_drift"], rel=1e-4)
    assert chosen["sweep"][0]["kl_drift"] > 0
    assert main(["lm", "evaluate", str(tmp_path / "run-lines"), "--max-new-tokens", "3"]) == 0
    assert main(["lm", "generate", "--run", str(tmp_path / "run-lines"), "Reverse: red cat", "--max-new-tokens", "3"]) == 0
    # now that the run has its evaluation, alpha 1 reuses it where the targets and length match
    import imprint.lm.evaluate as evaluate

    measured = []
    real = evaluate.evaluate_model
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: measured.append(1) or real(*a, **k))
    assert main(["lm", "lines", str(tmp_path / "run"), "--alphas", "0,1", "--max-new-tokens", "3",
                 "--output", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "lines.json").read_text())
    assert len(measured) == 1 and again["sweep"][0]["kl_drift"] == itself["kl_drift"]
    assert main(["lm", "lines", str(tmp_path / "run"), "--alphas", "0,1", "--max-new-tokens", "4",
                 "--output", str(tmp_path / "longer")]) == 0
    assert len(measured) == 3  # another answer length: measured again


# --- LIFT -------------------------------------------------------------------------------------------

def test_lift_mask_is_the_top_entries_of_the_low_rank_approximation():
    from imprint.methods.lift import principal_mask

    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 9, generator=g)
    u, s, vh = torch.linalg.svd(w)
    approx = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    mask = principal_mask(w, 3, 20)
    threshold = approx.abs().flatten().sort(descending=True).values[19]
    assert mask.numel() == 20 and torch.equal(mask, (approx.abs().flatten() >= threshold).nonzero().flatten())


def test_lift_sparse_adam_equals_a_dense_masked_adam():
    """Same tensors, same gradients: the sparse state gives the dense masked Adam's weights, also
    across a mask refresh (moments kept where the masks overlap, zero where an entry is new)."""
    from imprint.methods.lift import SparseMaskedAdam

    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(8, 6, generator=g)
    masks = [torch.randperm(48, generator=g)[:15].sort().values, torch.randperm(48, generator=g)[:15].sort().values]
    assert 0 < len(set(masks[0].tolist()) & set(masks[1].tolist())) < 15
    grads = [torch.randn(8, 6, generator=g) for _ in range(6)]
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.95), 1e-6, 0.1

    p = torch.nn.Parameter(w0.clone())
    opt = SparseMaskedAdam([p], [masks[0]], lr=lr, weight_decay=wd)
    dense, m, v = w0.clone().flatten(), torch.zeros(48), torch.zeros(48)
    for t, grad in enumerate(grads, start=1):
        if t == 4:
            opt.set_masks([masks[1]])
            keep = torch.zeros(48, dtype=torch.bool)
            keep[masks[1]] = True
            m, v = m * keep, v * keep
        mask = torch.zeros(48, dtype=torch.bool)
        mask[masks[0] if t < 4 else masks[1]] = True
        p.grad = grad.clone()
        opt.step()
        gm = grad.flatten() * mask
        m, v = b1 * m + (1 - b1) * gm, b2 * v + (1 - b2) * gm * gm
        update = (lr / (1 - b1 ** t)) * m / ((v / (1 - b2 ** t)).sqrt() + eps)
        dense = torch.where(mask, dense * (1 - lr * wd) - update, dense)
    torch.testing.assert_close(p.data.flatten(), dense, rtol=1e-6, atol=1e-7)
    changed = (p.data.flatten() != w0.flatten()).nonzero().flatten().tolist()
    assert set(changed) == set(masks[0].tolist()) | set(masks[1].tolist())


# --- LT-SFT ------------------------------------------------------------------------------------------

def test_ltsft_mask_is_the_k_most_changed_entries_over_all_tensors():
    from imprint.methods.ltsft import top_k_mask

    base = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    tuned = {"a": torch.tensor([[0.5, -3.0, 0.1], [1.0, 1.0, 0.0]]), "b": torch.tensor([2.0, -1.0, 0.2, 0.0])}
    masks = top_k_mask(tuned, base, 2)
    assert masks["a"].tolist() == [[False, True, False], [False, False, False]]
    assert masks["b"].tolist() == [True, False, False, False]
    masks = top_k_mask(tuned, base, 4)  # places 3-5 tie at 1.0: exactly 4 kept, the first tie dropped
    assert masks["a"].tolist() == [[False, True, False], [False, True, False]]
    assert masks["b"].tolist() == [True, True, False, False]
    generator = torch.Generator().manual_seed(0)  # random changes: the same entries as topk over them all
    base = {n: torch.randn(shape, generator=generator) for n, shape in {"c": (7, 9), "d": (50,), "e": (3, 4, 5)}.items()}
    tuned = {n: t + torch.randn(t.shape, generator=generator) for n, t in base.items()}
    masks = top_k_mask(tuned, base, 37)
    flat = torch.cat([(tuned[n] - base[n]).abs().flatten() for n in base])
    chosen = torch.cat([masks[n].flatten() for n in base])
    assert chosen.tolist() == torch.zeros_like(chosen).index_fill(0, flat.topk(37).indices, True).tolist()


def test_ltsft_phase2_lr_scale_multiplies_the_scheduled_lr_in_phase_2_only():
    from diffusers.optimization import get_scheduler

    from imprint.methods.ltsft import LTSFT, LTSFTSettings

    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    method = LTSFT(LTSFTSettings(ltsft_phase2_lr_scale=30.0))
    method.attach_optimizer(optimizer)
    schedule = []
    for step in range(4):
        if step == 2:  # phase 2 begins
            method.masks = {"w": torch.ones(4, dtype=torch.bool)}
        scheduled = scheduler.get_last_lr()[0]
        method.before_optimizer_step(None, step)
        schedule.append((scheduled, optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * (1 - s / 10) for s in range(4)]
    assert [a for a, _ in schedule] == pytest.approx(expected)  # the schedule itself is untouched
    assert [b for _, b in schedule] == pytest.approx(expected[:2] + [30 * e for e in expected[2:]])
    with pytest.raises(Exception, match="ltsft-phase2-lr-scale"):
        LTSFTSettings(ltsft_phase2_lr_scale=0.0).resolve()


def test_ltsft_result_changes_at_most_k_entries_and_composes(tiny_llama, reverse_data, tmp_path):
    from safetensors.torch import load_file as load

    from imprint.families.causal_lm import CausalLM
    from imprint.methods.sparse_delta import apply_sparse_delta

    run = lm_train(tiny_llama, reverse_data, tmp_path / "run", CASES["ltsft"])
    assert run.returncode == 0, run.stderr[-2000:]
    delta = load(str(tmp_path / "run" / "sparse_delta.safetensors"))
    lm = CausalLM.load(str(tiny_llama))
    eligible = sum(p.numel() for n, p in lm.model.named_parameters() if "norm" not in n)
    changed = sum(v.numel() for k, v in delta.items() if k.endswith(".values"))
    assert 0 < changed <= round(0.05 * eligible)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    apply_sparse_delta(lm.model, tmp_path / "run" / "sparse_delta.safetensors")
    apply_sparse_delta(lm.model, tmp_path / "run" / "sparse_delta.safetensors", scale=-1.0)
    for n, p in lm.model.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=1e-6)


# --- merging ---------------------------------------------------------------------------------------

def test_ties_is_trim_elect_and_disjoint_mean():
    from imprint.lm.merge import ties_merge

    a = torch.tensor([3.0, -2.0, 0.1, 1.0, 0.0])
    b = torch.tensor([-1.0, -4.0, 0.2, 2.0, 0.5])
    # density 0.6: a keeps 3, -2, 1; b keeps -1, -4, 2
    # entry 0: 3 - 1 = 2 > 0: only a agrees -> 3; entry 1: both negative -> mean -3; entry 3: mean 1.5
    expected = torch.tensor([3.0, -3.0, 0.0, 1.5, 0.0])
    torch.testing.assert_close(ties_merge([a, b], 0.6), expected)


def test_task_arithmetic_alpha_is_one_over_t():
    from imprint.lm.merge import merge_alpha, merged_vector

    g = torch.Generator().manual_seed(0)
    vectors = [{"w": torch.randn(3, 4, generator=g)} for _ in range(3)]
    merged = merged_vector(vectors, "task_arithmetic")
    torch.testing.assert_close(merged["w"], sum(v["w"] for v in vectors))
    assert merge_alpha(vectors, merged) == pytest.approx(1 / 3)


def test_compose_adds_the_sparse_deltas_and_merge_makes_a_run(tiny_llama, reverse_data, tmp_path):
    from imprint.cli import main
    from imprint.families.causal_lm import CausalLM
    from imprint.lm.generate import load_run_model
    from imprint.methods.sparse_delta import apply_sparse_delta

    for name, seed in (("one", "3"), ("two", "4")):
        run = lm_train(tiny_llama, reverse_data, tmp_path / name, CASES["ltsft"] + ["--seed", seed, "--validation-share", "0.1"])
        assert run.returncode == 0, run.stderr[-2000:]
    assert main(["lm", "compose", str(tmp_path / "one"), str(tmp_path / "two"), "--output", str(tmp_path / "both")]) == 0
    composed = load_run_model(tmp_path / "both")[0]
    direct = CausalLM.load(str(tiny_llama))
    for name in ("one", "two"):
        apply_sparse_delta(direct.model, tmp_path / name / "sparse_delta.safetensors")
    for (n, p), q in zip(composed.model.named_parameters(), direct.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)
    assert main(["lm", "merge", str(tmp_path / "one"), str(tmp_path / "two"), "--how", "ties", "--beta", "0.5",
                 "--output", str(tmp_path / "ties")]) == 0
    metadata = json.loads((tmp_path / "ties" / "metadata.json").read_text())
    assert metadata["beta"] == 0.5 and metadata["alpha"] > 0
    assert main(["lm", "evaluate", str(tmp_path / "ties"), "--max-new-tokens", "3"]) == 0
    assert json.loads((tmp_path / "ties" / "evaluation.json").read_text())["target"]["examples"] == 8


# --- LoFiT --------------------------------------------------------------------------------------------

def test_lofit_edits_each_heads_slice_as_the_paper():
    from imprint.methods.lofit import HeadVectors, top_heads

    g = torch.Generator().manual_seed(0)
    vectors = HeadVectors(layers=2, heads=3, head_dim=4)
    with torch.no_grad():
        vectors.scalings.copy_(torch.randn(2, 3, 4, generator=g))
        vectors.offsets.copy_(torch.randn(2, 3, 4, generator=g))
    z = torch.randn(5, 7, 12, generator=g)
    out = vectors.edit(1, z)
    for h in range(3):
        direct = (1 + vectors.scalings[1, h]) * z[..., 4 * h:4 * h + 4] + vectors.offsets[1, h]
        torch.testing.assert_close(out[..., 4 * h:4 * h + 4], direct)
    norms = vectors.scalings.norm(dim=-1)
    mask = top_heads(vectors.scalings, 2)
    assert mask.sum() == 2 and norms[mask].min() >= norms[~mask].max()


def test_lofit_result_as_an_o_proj_bias_equals_the_offsets(tiny_llama, tmp_path):
    from imprint.families.causal_lm import CausalLM
    from imprint.methods.lofit import LoFiT, LoFiTSettings

    lm = CausalLM.load(str(tiny_llama))
    method = LoFiT(LoFiTSettings(lofit_heads=3))
    method.set_run_length(2)
    method.prepare(lm, seed=0)
    heads = torch.zeros(4, 4, dtype=torch.bool)
    heads[0, 1] = heads[2, 3] = heads[3, 0] = True
    method.start_stage2(heads, fresh=True)
    with torch.no_grad():
        method.vectors.offsets.mul_(300)  # visible in the logits
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hooked = lm.model(ids).logits
    method.save_result(lm, tmp_path)
    fresh = CausalLM.load(str(tiny_llama))
    with torch.no_grad():
        plain = fresh.model(ids).logits
        LoFiT.apply_result(fresh, tmp_path, {})
        applied = fresh.model(ids).logits
    assert (hooked - plain).abs().max() > 1e-2
    torch.testing.assert_close(applied, hooked, rtol=1e-4, atol=1e-5)


# --- LocFT-BF ------------------------------------------------------------------------------------------

def test_locft_trains_one_weight_skips_low_loss_steps_and_stops_on_the_epoch_mean(tiny_llama, reverse_data, tmp_path):
    from safetensors.torch import load_file as load

    trained = lm_train(tiny_llama, reverse_data, tmp_path / "trained", CASES["locft"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    weight = load(str(tmp_path / "trained" / "locft_weight.safetensors"))
    assert list(weight) == ["model.layers.2.mlp.down_proj.weight"]
    base = load(str(tiny_llama / "model.safetensors"))["model.layers.2.mlp.down_proj.weight"]
    assert not torch.equal(weight["model.layers.2.mlp.down_proj.weight"], base)
    # every batch loss is below 100: every step is skipped, and the first epoch's mean stops the run
    # (36 training examples in batches of 4: 9 steps an epoch)
    stopped = lm_train(tiny_llama, reverse_data, tmp_path / "stopped", CASES["locft"][:-2] + [
        "--locft-layer", "2", "--locft-skip-loss", "100", "--locft-stop-loss", "100", "--steps", "30"])
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    metadata = json.loads((tmp_path / "stopped" / "metadata.json").read_text())
    assert metadata["steps"] == 9 and metadata["stopped_early"]
    unchanged = load(str(tmp_path / "stopped" / "locft_weight.safetensors"))["model.layers.2.mlp.down_proj.weight"]
    assert torch.equal(unchanged, base)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "examples").glob("lm-*.toml")), ids=lambda p: p.name)
def test_lm_examples_parse(path):
    from imprint.config import load_toml
    from imprint.lm.settings import build_config, groups

    cfg = build_config(load_toml(str(path), groups()), {})
    assert cfg.run.data and cfg.run.output and cfg.data.validation_data
