"""DisenBooth: the image adapter's and the contrastive term's formulas on fixed tensors, the
subject rows' conditioning f_s + f_i and the weak denoising loss in the task, and the result
(LoRA file + adapter) generating with f_s alone or, with --keep-appearance, f_s + f_i."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from conftest import FAST, photo_folder, run_cli
from imprint.methods.disenbooth import ImageAdapter, contrastive


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    from imprint.tiny import save_clip_vision_model

    return save_clip_vision_model(tmp_path_factory.mktemp("clip-vision") / "clip", projection_dim=16)


def test_image_adapter_is_mlp_of_masked_features_plus_their_projection():
    torch.manual_seed(0)
    adapter = ImageAdapter(3, 2)
    with torch.no_grad():
        adapter.mask.copy_(torch.tensor([0.0, 2.0, -1.0]))
    e = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    masked = torch.sigmoid(torch.tensor([0.0, 2.0, -1.0])) * e
    first, second, residual = adapter.mlp[0], adapter.mlp[2], adapter.residual
    expected = torch.stack([
        second.weight @ torch.relu(first.weight @ row + first.bias) + second.bias + residual.weight @ row
        for row in masked])
    torch.testing.assert_close(adapter(e), expected)
    # text-wide features: the residual is the masked features themselves (the paper's formula);
    # the mask starts at 0, so they start halved
    same = ImageAdapter(2, 2)
    e2 = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(same(e2), same.mlp(0.5 * e2) + 0.5 * e2)


def test_contrastive_is_the_mean_rows_cosine_of_mean_token_and_image_embedding():
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [0.0, -2.0]]])  # (2 rows, 2 tokens, 2)
    image = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(contrastive(text, image), torch.tensor(1.0))
    # row 0: mean token (0.5, 0.5) against (1, 1): cosine 1; row 1: mean token (1, 0) against (1, 0): 1
    image[1] = torch.tensor([0.0, 1.0])  # now row 1's cosine is 0: the mean is 0.5
    torch.testing.assert_close(contrastive(text, image), torch.tensor(0.5))


def task_for(tiny_model, tmp_path, encoder, **extra):
    from imprint.core.precision import make_accelerator
    from imprint.image.data import load_subject_images
    from imprint.image.settings import build_config
    from imprint.image.train import SubjectTask

    folder = photo_folder(tmp_path, 3)
    cfg = build_config({}, {"model": str(tiny_model), "images": str(folder), "class_name": "toy",
                            "method": "disenbooth", "disenbooth_image_encoder": str(encoder),
                            "output": str(tmp_path / "run"), "resolution": 32, "batch_size": 2,
                            "prior_preservation": True, "num_class_images": 2, "class_inference_steps": 2, **extra})
    subject = load_subject_images(folder, 32)
    return SubjectTask(cfg, make_accelerator("no"), subject), subject


def test_subject_rows_get_their_photos_embedding_and_the_weak_loss(tiny_model, tmp_path, clip_vision):
    from imprint.image.image_encoder import ImageEncoder

    task, subject = task_for(tiny_model, tmp_path, clip_vision, flip=True)
    family, method = task.family, task.method
    mirrored = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in subject.images]
    torch.testing.assert_close(method.features, ImageEncoder(str(clip_vision), "x").encode(subject.images + mirrored))
    seen_photos = set()
    for step in range(4):
        batch = task.batches(step, 0)[0]
        photos, rows = batch.extras["photo"], batch.rows("instance")
        assert (photos[~rows] == -1).all() and ((photos[rows] >= 0) & (photos[rows] < 6)).all()
        seen_photos |= set(photos[rows].tolist())
        plain = batch.conditioning
        conditioned = method.condition_subject_rows(plain, rows, batch)["prompt_embeds"]
        for row in range(len(batch.roles)):
            expected = plain["prompt_embeds"][row]
            if rows[row]:  # f_s + f_i, f_i added to every token
                expected = expected + method.adapter(method.features[photos[row]]).unsqueeze(0)
            torch.testing.assert_close(conditioned[row], expected)
        losses = method.losses(batch, rows, family, plain)
        index = rows.nonzero().flatten()
        weak = F.mse_loss(family.predict(batch.noisy[index], batch.timesteps[index],
                                         {k: v[index] for k, v in plain.items()}).float(), batch.target[index].float())
        torch.testing.assert_close(losses["disenbooth_weak"], 0.01 * weak)
        f_i = method.adapter(method.features[photos[index]])
        cosines = [F.cosine_similarity(plain["prompt_embeds"][i].mean(0), f, dim=0) for i, f in zip(index, f_i)]
        torch.testing.assert_close(losses["disenbooth_contrastive"], 0.001 * torch.stack(cosines).mean())
    assert any(p >= 3 for p in seen_photos)  # --flip: mirrored photos' features are used too
    loss, parts = task.loss(0, 0)
    assert {"loss_disenbooth_weak", "loss_disenbooth_contrastive"} <= set(parts)
    loss.backward()
    assert method.adapter.mask.grad.abs().sum() > 0 and method.adapter.mlp[0].weight.grad.abs().sum() > 0
    lora_grads = [p.grad for n, p in family.modules["unet"].named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_disenbooth_end_to_end_and_keep_appearance(tiny_model, tmp_path, clip_vision):
    from imprint.image.generate import add_appearance, load_run_pipeline
    from imprint.image.image_encoder import ImageEncoder
    from imprint.util.errors import ImprintError

    folder = photo_folder(tmp_path, 3)
    run = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--images", folder, "--class-name", "toy", *FAST, "--steps", "3",
                   "--checkpoint-every", "0", "--no-final-samples", "--method", "disenbooth", "--lr", "1e-2",
                   "--disenbooth-image-encoder", clip_vision, "--output", run) == 0
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["image_encoder"] == str(clip_vision)
    adapter = load_file(run / "disenbooth_adapter.safetensors")
    assert adapter["mask"].abs().sum() > 0  # trained
    lora = load_file(run / "pytorch_lora_weights.safetensors")
    assert meta["trainable_parameters"] == sum(v.numel() for v in [*lora.values(), *adapter.values()])

    pipe, method, metadata = load_run_pipeline(run)
    plain_positive, plain_negative = pipe.encode_prompt("a photo of sks toy", "cpu", 1, True, "")
    photo = folder / "1.png"
    add_appearance(pipe, method, run, metadata, photo, 0.5)
    positive, negative = pipe.encode_prompt("a photo of sks toy", "cpu", 1, True, "")
    features = ImageEncoder(str(clip_vision), "x").encode([Image.open(photo).convert("RGB")])
    restored = ImageAdapter(16, positive.shape[-1])
    restored.load_state_dict(adapter)
    with torch.no_grad():
        f_i = restored(features)
    torch.testing.assert_close(positive, plain_positive + 0.5 * f_i.unsqueeze(1))
    torch.testing.assert_close(negative, plain_negative)  # the negative prompt keeps its own

    out = tmp_path / "out"
    assert run_cli("generate", "--run", run, "a sks toy on the beach", "--num-images", "1", "--inference-steps", "2",
                   "--output", out / "plain") == 0
    assert run_cli("generate", "--run", run, "a sks toy on the beach", "--num-images", "1", "--inference-steps", "2",
                   "--keep-appearance", photo, "--appearance-weight", "5", "--output", out / "kept") == 0
    a = torch.tensor(list(Image.open(out / "plain" / "00-00.png").getdata()), dtype=torch.float)
    b = torch.tensor(list(Image.open(out / "kept" / "00-00.png").getdata()), dtype=torch.float)
    assert (a - b).abs().mean() > 0.1  # the appearance changed the image

    # the kohya export holds the identity LoRA, what generation uses without an appearance image
    assert run_cli("export", run, "--output", tmp_path / "kohya.safetensors") == 0
    exported = load_file(tmp_path / "kohya.safetensors")
    assert sum(k.endswith("lora_up.weight") for k in exported) == sum(k.endswith("lora_B.weight") for k in lora)

    with pytest.raises(ImprintError, match="keep-appearance"):  # a missing image is named
        add_appearance(pipe, method, run, metadata, tmp_path / "missing.png", 1.0)


def test_keep_appearance_refused_for_other_methods(lora_run, subject_dir, tmp_path, capsys):
    code = run_cli("generate", "--run", lora_run, "a sks toy", "--num-images", "1", "--inference-steps", "2",
                   "--keep-appearance", subject_dir / "00.png", "--output", tmp_path / "out")
    assert code != 0
    err = capsys.readouterr().err
    assert "--keep-appearance" in err and "disenbooth" in err and "Traceback" not in err
