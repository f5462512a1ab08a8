"""The GPT trains under torch.distributed on CPU (gloo), in 2 processes: DDP on every CPU
backend that implements all model ops, and an FSDP2 (fully_shard) smoke test."""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gpt
import kernels

CPU_FULL_BACKENDS = [b for b in kernels.available_backends("cpu") if not kernels.missing_ops(b, gpt.MODEL_OPS)]
WORLD = 2
STEPS = 12  # at lr 1e-2 the mean loss of the last 4 steps is ~0.57x the first 4's on one rank

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny(backend):
    return gpt.GPT(gpt.GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, backend=backend))


def _batches(rank, steps):
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    data = torch.arange(32).repeat(8)
    for _ in range(steps):
        i = torch.randint(0, len(data) - 17, (4,), generator=g)
        yield torch.stack([data[j:j + 16] for j in i]), torch.stack([data[j + 1:j + 17] for j in i])


def _ddp_worker(rank, port, backend, mode, result_path):
    sys.path.insert(0, os.path.dirname(__file__))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # same init on every rank
        model = _tiny(backend)
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            wrapped = DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard
            for block in model.transformer.h:
                fully_shard(block)
            wrapped = fully_shard(model)
        opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
        losses = []
        for x, y in _batches(rank, STEPS):
            _, loss = wrapped(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if mode == "ddp":
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        else:
            flat = torch.cat([p.full_tensor().detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            torch.save({"params": gathered, "losses": losses}, result_path)
        # Leave together: a rank that tears down its gloo pairs while its peer is still
        # finishing can make the peer abort (SIGABRT), seen on the loaded 2-core CI machine.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run(backend, mode, tmp_path):
    path = str(tmp_path / f"{mode}-{backend}.pt")
    for attempt in range(2):
        try:
            mp.start_processes(_ddp_worker, args=(_free_port(), backend, mode, path), nprocs=WORLD,
                               start_method="spawn", join=True)
            break
        except mp.ProcessExitedException:
            # A gloo rank aborting (SIGABRT) has been seen only under heavy load on the 2-core
            # CI machine, never when these tests run alone: one retry, then the failure stands.
            if attempt == 1:
                raise
    return torch.load(path)


@pytest.mark.parametrize("backend", CPU_FULL_BACKENDS)
def test_ddp_gloo_two_processes(backend, tmp_path):
    out = _run(backend, "ddp", tmp_path)
    p0, p1 = out["params"]
    assert torch.equal(p0, p1), "parameters diverged across ranks"
    losses = out["losses"]
    assert sum(losses[-4:]) < 0.75 * sum(losses[:4]), losses


def test_fsdp2_fully_shard_smoke(tmp_path):
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no FSDP2 fully_shard")
    out = _run("torch", "fsdp", tmp_path)
    p0, p1 = out["params"]
    assert torch.equal(p0, p1)
    losses = out["losses"]
    assert losses[-1] < losses[0]
