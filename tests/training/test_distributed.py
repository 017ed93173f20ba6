"""Data-parallel training: batch sharding, and one DDP step (gloo, 2 CPU processes) against one process."""

import os
import socket
import time
from collections import namedtuple

import pytest
import torch
import torch.multiprocessing as mp

from graphreg.errors import ConfigError, GraphregError
from graphreg.ops.losses import RegistrationLoss
from graphreg.training import build_model, dense_loss_fn, load_model, train
from graphreg.training.distributed import init_distributed, shard_batch

BATCH = 4
TINY = {"encoder": [4, 4], "decoder": [4, 4, 4], "integration_steps": 0}
Pair = namedtuple("Pair", "fixed moving")


# ---------------------------------------------------------------------- sharding
def test_shard_batch_interleaves_rows_of_every_tensor():
    batch = {"x": torch.arange(6).view(6, 1), "pair": Pair(torch.arange(6), torch.arange(6) * 10),
             "items": [torch.arange(6)], "scalar": torch.tensor(3.0), "name": "kept"}
    shard = shard_batch(batch, rank=1, world_size=3)
    assert shard["x"].tolist() == [[1], [4]]
    assert isinstance(shard["pair"], Pair) and shard["pair"].moving.tolist() == [10, 40]
    assert shard["items"][0].tolist() == [1, 4]
    assert shard["scalar"].item() == 3.0 and shard["name"] == "kept"
    # the shards of all ranks together are the batch
    rows = sorted(sum((shard_batch(batch, r, 3)["x"].ravel().tolist() for r in range(3)), []))
    assert rows == list(range(6))


def test_exception_batch_not_divisible():
    with pytest.raises(ConfigError, match=r"batch_size: expected a multiple of the world size 4.*\(6, 2\)"):
        shard_batch({"x": torch.zeros(6, 2)}, rank=0, world_size=4)


def test_single_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(GraphregError, match="WORLD_SIZE: expected an integer, got 'two'"):
        init_distributed()


# ---------------------------------------------------------------------- one DDP step
def _batch():
    generator = torch.Generator().manual_seed(1)
    fixed = torch.rand(BATCH, 1, 8, 8, 8, generator=generator)
    moving = torch.roll(fixed, 1, dims=2) + 0.1 * torch.rand(BATCH, 1, 8, 8, 8, generator=generator)
    return {"fixed": fixed, "moving": moving, "fixed_mask": torch.ones(BATCH, 1, 8, 8, 8), "index": torch.arange(BATCH)}


def _train_one_step(out_dir, seen):
    torch.manual_seed(0)
    model = build_model("voxelmorph", TINY)
    loss_fn = dense_loss_fn(RegistrationLoss(similarity="mse", regulariser="diffusion", weight=0.5))

    def recording_loss(network, batch):
        seen.extend(batch["index"].tolist())
        return loss_fn(network, batch)

    result = train(model, recording_loss, lambda step: _batch(), steps=1, out_dir=out_dir, lr=1e-2,
                   device="cpu", progress=False)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return result, model.state_dict(), grads


def _rank_main(rank, world_size, port, root):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    seen = []
    result, state, grads = _train_one_step(root / f"rank{rank}", seen)
    torch.save({"loss": result.history[0]["loss"], "state": state, "grads": grads, "seen": seen,
                "model_path": str(result.model_path), "group_left": not torch.distributed.is_initialized()},
               root / f"result{rank}.pt")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_step_equals_single_process_step(tmp_path, monkeypatch):
    # forked ranks inherit this process's imports; DistributedDataParallel imports torch._dynamo, which
    # takes seconds: import it once here rather than in both ranks (spawned ranks work the same, slower)
    import torch._dynamo  # noqa: F401

    ranks = mp.start_processes(_rank_main, args=(2, _free_port(), tmp_path), nprocs=2, join=False,
                               start_method="fork")
    # a forked rank once hung (the other had ended) with this process's threads busy: fail, never hang CI
    deadline = time.monotonic() + 300
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two DDP ranks did not finish within 300 s")
    ranks = [torch.load(tmp_path / f"result{r}.pt", weights_only=True) for r in range(2)]

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen = []
        single, state, grads = _train_one_step(tmp_path / "single", seen)
    finally:
        torch.set_num_threads(threads)

    # each rank trained on its own half of the batch, together on all of it
    assert ranks[0]["seen"] == [0, 2] and ranks[1]["seen"] == [1, 3] and seen == [0, 1, 2, 3]
    for result in ranks:
        assert result["group_left"]
        assert result["loss"] == pytest.approx(single.history[0]["loss"], rel=1e-5)
        for name, value in grads.items():  # DDP averaged the gradients of the two halves
            torch.testing.assert_close(result["grads"][name], value, rtol=1e-4, atol=1e-7)
        for name, value in state.items():
            torch.testing.assert_close(result["state"][name], value, rtol=1e-5, atol=1e-6)
    # only rank 0 wrote files; its model.pt holds the updated weights
    assert not (tmp_path / "rank1").exists()
    assert {p.name for p in (tmp_path / "rank0").iterdir()} == {"checkpoints", "history.jsonl", "model.pt"}
    written = load_model(tmp_path / "rank0" / "model.pt").state_dict()
    for name, value in state.items():
        torch.testing.assert_close(written[name], value, rtol=1e-5, atol=1e-6)
