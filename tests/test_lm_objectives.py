"""The language-model objectives (issue 18): each loss against a direct computation on fixed
tensors, DPO against TRL's DPOTrainer on the same batch, preference records, and each objective
training (and resuming exactly) through `imprint lm train` on a tiny Llama."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imprint.lm.data import IGNORE, collate, read_jsonl, tokenize_all
from imprint.util.errors import ImprintError

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory) -> Path:
    """24 word-reversal preference records: chosen the reversed words, rejected the words as given."""
    folder = tmp_path_factory.mktemp("pref")
    g = torch.Generator().manual_seed(1)
    lines = []
    for i in range(24):
        words = [WORDS[j] for j in torch.randint(len(WORDS), (3,), generator=g).tolist()]
        prompt = f"Reverse: {' '.join(words)}"
        if i % 2:  # both of TRL's forms: plain strings and conversational messages
            record = {"prompt": prompt, "chosen": " ".join(reversed(words)), "rejected": " ".join(words)}
        else:
            record = {"prompt": [{"role": "user", "content": prompt}],
                      "chosen": [{"role": "assistant", "content": " ".join(reversed(words))}],
                      "rejected": [{"role": "assistant", "content": " ".join(words)}]}
        lines.append(json.dumps(record))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def load_tiny(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))


# --- masked thought ------------------------------------------------------------------------------

def test_mask_rate_is_the_authors_linear_ramp():
    from imprint.lm.objectives.masked_thought import mask_rate

    # p = min(max, max * step / (steps * warmup + 1)): 100 steps, warmup 0.66 -> full at step 67
    assert mask_rate(0, 100, 0.4, 0.66) == 0
    assert mask_rate(33, 100, 0.4, 0.66) == pytest.approx(0.4 * 33 / 67)
    assert mask_rate(67, 100, 0.4, 0.66) == pytest.approx(0.4)
    assert mask_rate(99, 100, 0.4, 0.66) == pytest.approx(0.4)


@pytest.mark.parametrize("replacement", ["pad", "random"])
def test_masked_thought_masks_answer_inputs_only_and_keeps_the_labels(replacement):
    from imprint.lm.objectives.masked_thought import mask_answers

    ids = torch.arange(1, 4001).reshape(4, 1000) % 90 + 5
    labels = torch.full_like(ids, IGNORE)
    labels[:, 300:] = ids[:, 300:]  # the answer: positions 300..999 of each row
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    out = mask_answers(batch, 0.3, replacement, pad_id=0, vocab=100, generator=torch.Generator().manual_seed(0))
    changed = out["input_ids"] != ids
    assert not changed[:, :300].any()  # the prompt is never masked
    assert torch.equal(out["labels"], labels)  # the targets stay the original tokens
    share = changed[:, 300:].float().mean().item()
    assert 0.26 < share < 0.34  # each answer token masked with probability 0.3
    if replacement == "pad":
        assert (out["input_ids"][changed] == 0).all()
    else:
        assert out["input_ids"][changed].unique().numel() > 50  # drawn over the vocabulary
    again = mask_answers(batch, 0.3, replacement, 0, 100, torch.Generator().manual_seed(0))
    assert torch.equal(again["input_ids"], out["input_ids"])  # seeded: a resume masks the same


# --- one-token rollout ------------------------------------------------------------------------------

def test_otr_loss_is_the_papers_sum_over_the_drawn_tokens():
    from imprint.lm.objectives.otr import otr_loss_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g)
    targets = torch.tensor([0, 3, 3, 6, 2])
    total = otr_loss_sum(logits, targets, samples=16, temperature=1.5, penalty=-0.2,
                         generator=torch.Generator().manual_seed(4))
    # direct: the same draws from softmax(z / tau), then -(1/K) sum_k R(a_k) log softmax(z)[a_k], summed
    drawn = torch.multinomial(torch.softmax(logits / 1.5, -1), 16, replacement=True,
                              generator=torch.Generator().manual_seed(4))
    expected = 0.0
    for t in range(5):
        log_p = torch.log_softmax(logits[t], -1)
        expected -= sum((1.0 if int(a) == int(targets[t]) else -0.2) * log_p[a] for a in drawn[t]) / 16
    torch.testing.assert_close(total, torch.as_tensor(expected, dtype=total.dtype))


def test_otr_gradient_approaches_the_expected_policy_gradient_with_many_draws():
    """With K large the draws' mean approaches E_{a ~ pi_tau}[R(a) grad log pi(a)] (the reviews'
    closed form: pi_tau(x) grad log pi(x) + beta sum_{a != x} pi_tau(a) grad log pi(a))."""
    from imprint.lm.objectives.otr import otr_loss_sum

    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]], requires_grad=True)
    target = torch.tensor([1])
    otr_loss_sum(logits, target, 200_000, 1.3, -0.1, torch.Generator().manual_seed(0)).backward()
    exact_logits = logits.detach().clone().requires_grad_(True)
    tempered = torch.softmax(exact_logits.detach() / 1.3, -1)[0]
    rewards = torch.full((4,), -0.1)
    rewards[1] = 1.0
    (-(tempered * rewards * torch.log_softmax(exact_logits, -1)[0]).sum()).backward()
    torch.testing.assert_close(logits.grad, exact_logits.grad, atol=4e-3, rtol=0)


# --- DPO -------------------------------------------------------------------------------------------------

def test_dpo_loss_is_the_papers_formula():
    from imprint.lm.objectives.dpo import dpo_losses

    policy = torch.tensor([[-3.0, -5.0], [-7.0, -2.0]])
    reference = torch.tensor([[-4.0, -4.0], [-6.0, -3.0]], dtype=torch.float64)
    losses, margin = dpo_losses(policy, reference, beta=0.1)
    expected = [-torch.nn.functional.logsigmoid(torch.tensor(0.1 * ((-3 + 4) - (-5 + 4)))),
                -torch.nn.functional.logsigmoid(torch.tensor(0.1 * ((-7 + 6) - (-2 + 3))))]
    torch.testing.assert_close(losses, torch.stack(expected))
    torch.testing.assert_close(margin, torch.tensor([0.2, -0.2]))


def test_sequence_logps_sum_the_answer_tokens_of_each_row(tiny_llama, preference_data):
    from imprint.lm.objectives.dpo import sequence_logps

    model, tokenizer = load_tiny(tiny_llama)
    examples = tokenize_all(tokenizer, read_jsonl(preference_data)[:3], 512)
    batch = collate([*examples, *(e.rejected for e in examples)], tokenizer.pad_token_id)
    with torch.no_grad():
        got = sequence_logps(model, batch)
        log_probs = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                                      .logits.float(), -1)
    for row in range(6):
        expected = sum(log_probs[row, t - 1, batch["labels"][row, t]] for t in range(1, batch["labels"].shape[1])
                       if batch["labels"][row, t] != IGNORE)
        torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-5)


def test_dpo_loss_equals_trls_dpo_trainer_on_the_same_batch(tiny_llama, tmp_path):
    """TRL 1.x DPOTrainer (reference model given, sigmoid loss) on conversational records, and
    imprint's DPO on the same records: the same tokens, the same loss."""
    trl = pytest.importorskip("trl", reason="TRL is a test dependency: pip install -e '.[test]'")
    from datasets import Dataset

    from imprint.lm.objectives.dpo import DPO

    policy, tokenizer = load_tiny(tiny_llama)
    reference, _ = load_tiny(tiny_llama)
    with torch.no_grad():  # a policy apart from the reference, so the log-ratios are not zero
        g = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    records = [{"prompt": [{"role": "user", "content": "Reverse: red cat sun"}],
                "chosen": [{"role": "assistant", "content": "sun cat red"}],
                "rejected": [{"role": "assistant", "content": "red cat"}]},
               {"prompt": [{"role": "user", "content": "Reverse: a b"}],
                "chosen": [{"role": "assistant", "content": "b a"}],
                "rejected": [{"role": "assistant", "content": "a b c d"}]}]
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, report_to=[], beta=0.1,
                         use_cpu=True, max_length=None, bf16=False)  # TRL turns bf16 on by default
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(records),
                             processing_class=tokenizer)
    trl_batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch)

    data = tmp_path / "pref.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    examples = tokenize_all(tokenizer, read_jsonl(data), 512)
    # the same tokens: TRL's rows (its order) against imprint's, and its completion mask against the labels
    ours = {tuple(e.input_ids): e for pair in examples for e in (pair, pair.rejected)}
    for row in range(trl_batch["input_ids"].shape[0]):
        n = int(trl_batch["attention_mask"][row].sum())
        ids = tuple(trl_batch["input_ids"][row, :n].tolist())
        assert ids in ours
        completion = trl_batch["completion_mask"][row, :n].bool()
        assert [t for t, c in zip(ids, completion) if c] == [label for label in ours[ids].labels if label != IGNORE]
    objective = DPO()
    batch = objective.collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        batch["reference_logps"] = objective.pair_logps(reference, batch).double()
        total, pairs, _ = objective.loss_sum(trainer.model, batch, 0, torch.Generator())
    torch.testing.assert_close(total / pairs, trl_loss.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "chosen": "b"}', "line 2: missing field `rejected`"),
    ('{"prompt": "a", "chosen": "b", "rejected": " "}', "line 2: `rejected` must be non-empty text"),
    ('{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "b", "rejected": "c"}',
     "line 2: the prompt's last message is the assistant's"),
    ('{"prompt": [], "chosen": "b", "rejected": "c"}', "line 2: `prompt` must be a non-empty list"),
])
def test_a_bad_preference_record_is_a_one_line_error(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + line + "\n")
    with pytest.raises(ImprintError, match=message):
        read_jsonl(path)


def test_a_preference_record_round_trips_through_the_run_folder_form(tmp_path):
    from imprint.lm.data import write_jsonl

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Reverse: a b", "chosen": "b a", "rejected": "a b"}\n')
    record = read_jsonl(path)[0]
    assert record.messages[-1] == {"role": "assistant", "content": "b a"} and record.answer == "b a"
    write_jsonl([record.to_json()], tmp_path / "back.jsonl")
    back = read_jsonl(tmp_path / "back.jsonl")[0]
    assert (back.messages, back.rejected, back.answer) == (record.messages, "a b", "b a")


# --- training through imprint lm train ---------------------------------------------------------------

def lm_train(model, data, out, extra, kill=None, resume=False):
    """`imprint lm train` with the tests' small settings: in this process (-> (exit code, stderr)), or,
    to be killed at a step, in a child process (-> CompletedProcess)."""
    args = ["lm", "train", "--model", str(model), "--data", str(data), "--output", str(out), "--steps", "6",
            "--checkpoint-every", "2", "--batch-size", "4", "--seed", "3", "--lr", "3e-3", "--no-evaluate", *extra]
    args += ["--resume"] if resume else []
    if kill:
        env = {**os.environ, "IMPRINT_TEST_KILL": kill}
        return subprocess.run([sys.executable, "-m", "imprint.cli", *args], env=env, capture_output=True, text=True,
                              timeout=300)
    from imprint.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


OBJECTIVES = {  # what each keeps across a resume: DPO its reference file; SPIN its generated pairs too (as
    # S3FT keeps its answers), with accumulation; masked-thought and OTR draw from a per-micro-batch
    # seeded stream (test_masked_thought_... checks a seeded draw repeats)
    "dpo": ["--objective", "dpo"],
    "spin": ["--objective", "spin", "--spin-max-new-tokens", "6", "--gradient-accumulation-steps", "2"],
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_trains_and_resumes_exactly(name, tiny_llama, preference_data, tmp_path):
    code, err = lm_train(tiny_llama, preference_data, tmp_path / "a", OBJECTIVES[name])
    assert code == 0, err[-2000:]
    killed = lm_train(tiny_llama, preference_data, tmp_path / "b", OBJECTIVES[name], kill="step:5")
    assert killed.returncode != 0
    code, err = lm_train(tiny_llama, preference_data, tmp_path / "b", OBJECTIVES[name], resume=True)
    assert code == 0, err[-2000:]
    for f in ("adapter/adapter_model.safetensors",):
        a, b = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if line.strip()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    metadata = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert metadata["objective"] == name
    validation = json.loads((tmp_path / "b" / "validation.json").read_text())["validation_loss"]
    assert set(validation) == {"2", "4", "6"}
    if name == "dpo":
        assert (tmp_path / "a" / "reference_logps.safetensors").is_file()
        assert "dpo_reward_accuracy" in log[-1]


def test_dpo_starts_at_log_2_and_lowers_its_loss(tiny_llama, preference_data, tmp_path):
    """At the first step the policy is the reference, so every pair's loss is log 2 (a wrong reference
    would show here); after a few steps on one batch of 4 pairs the chosen answers gain on the rejected."""
    out, data = tmp_path / "run", tmp_path / "four.jsonl"
    data.write_text("".join(preference_data.read_text().splitlines(keepends=True)[:4]))
    code, err = lm_train(tiny_llama, data, out, ["--objective", "dpo", "--steps", "8", "--dpo-beta", "0.5",
                                                 "--validation-share", "0"])
    assert code == 0, err[-2000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [entry for entry in log if "dpo_loss" in entry]
    assert steps[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert steps[-1]["dpo_loss"] < 0.3 and steps[-1]["dpo_reward_accuracy"] == 1


def test_dpo_needs_preference_records(tiny_llama, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' * 4)
    code, err = lm_train(tiny_llama, data, tmp_path / "run", ["--objective", "dpo"])
    assert code != 0
    assert "--data" in err and "line 1" in err and "needs preference records" in err


def test_a_setting_of_another_objective_is_an_error(tiny_llama, preference_data, tmp_path):
    code, err = lm_train(tiny_llama, preference_data, tmp_path / "run", ["--objective", "dpo", "--mask-rate", "0.2"])
    assert code != 0 and "a setting of masked-thought, not of --objective dpo" in err


def test_otr_trains_through_imprint_lm_train(tiny_llama, preference_data, tmp_path):
    code, err = lm_train(tiny_llama, preference_data, tmp_path / "run", ["--objective", "otr", "--otr-samples", "16",
                                                                         "--steps", "2", "--validation-share", "0"])
    assert code == 0, err[-2000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if line.strip()]
    assert all(math.isfinite(e["otr_loss"]) and e["answer_loss"] > 0 for e in log if "otr_loss" in e) and len(log) >= 2


# --- S3FT --------------------------------------------------------------------------------------------------

def test_s3ft_trains_on_the_models_own_answer_where_the_judge_accepts_it():
    from imprint.lm.data import Record
    from imprint.lm.objectives.s3ft import select_targets

    records = [Record([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"gold {i}"}],
                      f"{i}", "final_number", i + 1) for i in range(5)]
    predictions = ["it is 0", "it is 7", "", "3, surely", "nine"]
    paraphrases = [None, "so: 1", "I think 5", None, None]
    # the records' own rule (final number): 0 and 3 match, an empty answer never counts; of the
    # paraphrases of the others, record 1's passes and record 2's does not
    selected, kinds = select_targets(records, predictions, None, paraphrases)
    assert kinds == ["own", "paraphrase", "gold", "own", "gold"]
    assert [r.messages[-1]["content"] for r in selected] == ["it is 0", "so: 1", "gold 2", "3, surely", "gold 4"]
    assert all(r.messages[:-1] == o.messages[:-1] and r.answer == o.answer for r, o in zip(selected, records))
    # a user's judge sees (prompt, prediction, gold text)
    seen = []
    selected, kinds = select_targets(records, predictions, lambda p, y, g: seen.append((p, y, g)) or p in ("q1", "q2"))
    assert kinds == ["gold", "own", "gold", "gold", "gold"] and ("q1", "it is 7", "gold 1") in seen
    assert selected[1].messages[-1]["content"] == "it is 7"


def test_s3ft_run_trains_on_the_chosen_targets_and_reports_their_shares(tiny_llama, preference_data, tmp_path,
                                                                         monkeypatch):
    """In process, with the base model's answers stood in (a random tiny model answers nothing): the
    training examples are the targets S3FT chose, kept in s3ft.jsonl and counted in metadata.json."""
    import imprint.lm.evaluate
    from imprint.lm.train import LMTask, train
    from imprint.lm.settings import build_config

    def answers(lm, conversations, max_new_tokens, system_prompt=None):
        return [f"{'PARA' if 'own words' in c[-1]['content'] else 'OWN'} {i}" for i, c in enumerate(conversations)]

    monkeypatch.setattr(imprint.lm.evaluate, "generate_answers", answers)
    seen = {}
    original = LMTask.__init__

    def spy(self, cfg, accelerator, lm, examples, *rest, **kwargs):
        seen["texts"] = [lm.tokenizer.decode([t for t in e.labels if t >= 0]) for e in examples]
        original(self, cfg, accelerator, lm, examples, *rest, **kwargs)

    monkeypatch.setattr(LMTask, "__init__", spy)
    judge = tmp_path / "judge.py"  # own answers pass for cat prompts, paraphrases for dog prompts
    judge.write_text("def f(prompt, prediction, gold):\n"
                     "    return ('cat' in prompt and prediction.startswith('OWN')) or "
                     "('dog' in prompt and prediction.startswith('PARA'))\n")
    cfg = build_config({}, {"model": str(tiny_llama), "data": str(preference_data), "output": str(tmp_path / "run"),
                            "objective": "s3ft", "s3ft_judge": f"{judge}:f", "steps": 1, "evaluate": False,
                            "validation_share": 0.0})
    run = train(cfg)
    saved = [json.loads(line) for line in (run / "s3ft.jsonl").read_text().splitlines()]
    records = read_jsonl(preference_data)
    for record, entry, text in zip(records, saved, seen["texts"]):
        prompt = record.messages[-2]["content"]
        kind = "own" if "cat" in prompt else "paraphrase" if "dog" in prompt else "gold"
        assert entry["target"] == kind
        expected = {"own": entry["prediction"], "paraphrase": entry["paraphrase"], "gold": record.messages[-1]["content"]}
        assert text.startswith(expected[kind])  # the trained tokens (then the end-of-turn)
    metadata = json.loads((run / "metadata.json").read_text())
    counts = {k: [e["target"] for e in saved].count(k) for k in ("own", "paraphrase", "gold")}
    assert metadata["s3ft_targets"] == counts and min(counts.values()) > 0


def test_a_bad_s3ft_judge_is_a_one_line_error(tiny_llama, preference_data, tmp_path):
    code, err = lm_train(tiny_llama, preference_data, tmp_path / "run", ["--objective", "s3ft", "--s3ft-judge",
                                                                          f"{tmp_path}/none.py:f"])
    assert code != 0 and "--s3ft-judge" in err and "not found" in err


# --- SPIN ------------------------------------------------------------------------------------------------------

def test_spin_iterations_start_from_the_previous_one_which_is_their_reference(tiny_llama, tmp_path):
    """Two iterations: the second starts from the first's result, trains on its own pairs and the
    first's, and its first step's loss is log 2 (the reference is the model it starts from)."""
    from imprint.lm.generate import load_run_model

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}", "completion": f"{w} {w}"}) + "\n" for w in WORDS))
    out = tmp_path / "spin"
    from imprint.cli import main

    args = ["lm", "spin", "--model", str(tiny_llama), "--data", str(data),
            "--output", str(out), "--iterations", "2", "--steps", "3", "--batch-size", "4", "--lr", "1e-2",
            "--spin-max-new-tokens", "5", "--spin-temperature", "1.0", "--validation-share", "0", "--no-evaluate"]
    assert main(args) == 0
    first, second = (json.loads((out / f"iter-{t}" / "metadata.json").read_text()) for t in (0, 1))
    assert "init_from" not in first and Path(second["init_from"]) == (out / "iter-0").resolve()
    assert (first["spin_generated"], first["spin_mixed_previous"]) == (8, 0)
    assert (second["spin_generated"], second["spin_mixed_previous"]) == (8, 8)
    for t in (0, 1):
        log = [json.loads(line) for line in (out / f"iter-{t}" / "log.jsonl").read_text().splitlines() if line.strip()]
        assert [e for e in log if "dpo_loss" in e][0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    # iteration 1's model is the base with iteration 0's result and then its own applied
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        logits = [load_run_model(out / f"iter-{t}", device="cpu")[0].model(input_ids=ids).logits for t in (0, 1)]
        base = load_tiny(tiny_llama)[0](input_ids=ids).logits
    assert not torch.allclose(logits[0], base) and not torch.allclose(logits[1], logits[0])
    before = [(out / f"iter-{t}" / "metadata.json").stat().st_mtime_ns for t in (0, 1)]
    assert main(args) == 0  # both finished: nothing to redo
    assert [(out / f"iter-{t}" / "metadata.json").stat().st_mtime_ns for t in (0, 1)] == before


def test_init_from_must_be_a_run_of_the_same_base(tiny_llama, tmp_path):
    from imprint.tiny import save_tiny_llama

    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' * 4)
    code, err = lm_train(tiny_llama, data, tmp_path / "run", ["--init-from", str(tmp_path / "nothing")])
    assert code != 0 and "--init-from" in err
    other = save_tiny_llama(tmp_path / "other", seed=0, hidden=32)
    code, err = lm_train(other, data, tmp_path / "first", ["--steps", "1", "--validation-share", "0"])
    assert code == 0, err[-2000:]
    code, err = lm_train(tiny_llama, data, tmp_path / "run2", ["--init-from", str(tmp_path / "first")])
    assert code != 0 and "trained on another base model" in err
