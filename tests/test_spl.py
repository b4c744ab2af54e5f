"""ClassDiffusion's semantic preservation loss: the formula on fixed tensors, the pooled EOS
encoding it uses, its value and gradient inside a run, and its one-line error."""

import torch
import torch.nn.functional as F

from conftest import FAST, draw_subject, run_cli
from imprint.objectives.spl import semantic_preservation_loss


def test_formula_against_a_direct_computation():
    a = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
    b = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    direct = ((1 - 2 / (3 * 2)) + (1 - 25 / (5 * 5))) / 2
    torch.testing.assert_close(semantic_preservation_loss(a, b), torch.tensor(direct))


def test_pooled_text_is_the_eos_token_after_the_final_norm(tiny_model):
    from imprint.families import load_family

    family = load_family(str(tiny_model))
    tokens = family.tokenize(["a photo of a toy", "a toy"])
    pooled = family.pooled_text_embeddings(tokens)
    hidden = family.text_encoder(tokens).last_hidden_state  # after the final layer norm
    eos = [int((row == family.tokenizer.eos_token_id).nonzero()[0]) for row in tokens]
    torch.testing.assert_close(pooled, torch.stack([hidden[i, e] for i, e in enumerate(eos)]))


def test_spl_in_a_textual_inversion_run(tiny_model, tmp_path):
    from imprint.core.precision import make_accelerator
    from imprint.image.data import load_subject_images
    from imprint.image.settings import build_config
    from imprint.image.train import SubjectTask

    folder = tmp_path / "subject"
    folder.mkdir()
    for i in range(2):
        draw_subject(folder / f"{i}.png", i)
    cfg = build_config({}, {"model": str(tiny_model), "images": str(folder), "class_name": "toy",
                            "output": str(tmp_path / "run"), "resolution": 32, "method": "textual_inversion",
                            "spl_weight": 2.0})
    task = SubjectTask(cfg, make_accelerator("no"), load_subject_images(folder, 32))
    family = task.family
    loss, parts = task.loss(0, 0)
    subject_prompt = f"a photo of a {task.method.prompt_token()} toy"
    with torch.no_grad():
        pooled = family.text_encoder(family.tokenize([subject_prompt, "a photo of a toy"])).pooler_output
    direct = 2.0 * (1 - F.cosine_similarity(pooled[0], pooled[1], dim=0))
    assert abs(parts["loss_spl"] - float(direct)) < 1e-5
    assert float(direct) > 0  # the token starts as the class word, but the prompts differ by a word
    loss.backward()
    grad = family.text_encoder.get_input_embeddings().weight.grad
    assert grad[task.method.token_ids].abs().sum() > 0  # it reaches the token's embedding


def test_spl_without_a_trained_text_encoder_is_one_line(tiny_model, tmp_path, capsys):
    folder = tmp_path / "subject"
    folder.mkdir()
    draw_subject(folder / "0.png", 0)
    rc = run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST,
                 "--output", tmp_path / "run", "--spl-weight", "1")
    err = capsys.readouterr().err
    assert rc == 2 and "--spl-weight: its loss reaches only the text encoder" in err and "Traceback" not in err
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST,
                   "--output", tmp_path / "run", "--spl-weight", "1", "--method", "pivotal", "--steps", "2",
                   "--checkpoint-every", "0", "--no-final-samples") == 0
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"loss_spl"' in log
