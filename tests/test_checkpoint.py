import torch

from imprint.core import checkpoint as ckpt
from imprint.util.rng import batch_indices


def test_optimizer_state_round_trip_without_pickle(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(3):
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
    path = ckpt.save_checkpoint(tmp_path, 3, {"w": params[0].detach()}, opt.state_dict(),
                                {"last_epoch": 3}, {}, keep=2)
    assert sorted(p.name for p in path.iterdir()) == ["optimizer.safetensors", "state.json",
                                                       "trainable.safetensors"]
    state, trainable, opt_state = ckpt.load_checkpoint(path)
    assert state["step"] == 3 and state["lr_scheduler"] == {"last_epoch": 3}
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-3)
    fresh.load_state_dict(opt_state)
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        for key in a:
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]))


def test_last_k_kept_and_temporaries_ignored(tmp_path):
    empty_opt = {"state": {}, "param_groups": []}
    for step in (2, 4, 6, 8):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, empty_opt, {}, {}, keep=2)
    (tmp_path / "checkpoints" / ".tmp-checkpoint-10-abcd").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]
    assert ckpt.find_resume_checkpoint(tmp_path, "latest").name == "checkpoint-8"


def test_data_order_is_a_function_of_the_step():
    # every epoch visits every item once; a step's batch is the same however the run got there
    order = [batch_indices(0, 1, step, 2, 5) for step in range(5)]
    flat = sum(order, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert batch_indices(0, 1, 3, 2, 5) == order[3]
