"""Worker for tests/test_distributed.py: trains a fused_rnn model and the same torch.nn model
side by side under DDP or FSDP2 (fully_shard) in N processes, and checks that every gradient
(each rank's shard) and every parameter after each optimiser step is torch.nn's.

    python tests/dist_worker.py {ddp,fsdp2} {gloo,nccl} NPROCS STORE_FILE

Rendezvous through a file store (no port to pick); gloo talks over loopback only (the caller
sets GLOO_SOCKET_IFNAME=lo). Exits non-zero if any rank fails.
"""

from __future__ import annotations

import copy
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fused_rnn

T, B, I, H, STEPS = 5, 3, 4, 6, 3  # noqa: E741


class Net(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(2 * H, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out).square().mean()


def _rnns() -> dict[str, nn.Module]:
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    rnns = {"lstm": nn.LSTM(I, H, **kw), "gru": nn.GRU(I, H, **kw)}
    if hasattr(fused_rnn, "RNN"):
        rnns["rnn_relu"] = nn.RNN(I, H, nonlinearity="relu", **kw)
    return rnns


def _wrap(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.rnn)
    fully_shard(model)
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part: the shard of an FSDP2 DTensor, the tensor itself under DDP."""
    return t.to_local() if hasattr(t, "to_local") else t


def _check(name: str, what: str, theirs: nn.Module, ours: nn.Module) -> None:
    pairs = zip(theirs.named_parameters(), ours.named_parameters())
    for (na, a), (nb, b) in pairs:
        assert na == nb, (na, nb)
        ta, tb = (a.grad, b.grad) if what == "grad" else (a.detach(), b.detach())
        torch.testing.assert_close(
            _local(tb),
            _local(ta),
            rtol=1e-9,
            atol=1e-12,
            msg=lambda m, nb=nb: f"{name} {nb} {what}: {m}",
        )


def worker(rank: int, strategy: str, backend: str, nprocs: int, store: str) -> None:
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=rank,
        world_size=nprocs,
        timeout=timedelta(seconds=60),
    )
    device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        for name, rnn in _rnns().items():
            torch.manual_seed(0)  # the same initial weights on every rank
            theirs = Net(rnn).to(device=device, dtype=torch.float64)
            ours = fused_rnn.convert(copy.deepcopy(theirs))
            assert type(ours.rnn).__module__.startswith("fused_rnn")
            theirs, ours = _wrap(theirs, strategy, device), _wrap(ours, strategy, device)
            opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (theirs, ours)]
            for step in range(STEPS):
                gen = torch.Generator().manual_seed(1000 * rank + step)  # each rank its own data
                x = torch.randn(B, T, I, generator=gen, dtype=torch.float64).to(device)
                for m, opt in zip((theirs, ours), opts):
                    opt.zero_grad()
                    m(x).backward()
                _check(name, "grad", theirs, ours)  # after DDP's / FSDP's gradient reduction
                for opt in opts:
                    opt.step()
                _check(name, "param", theirs, ours)
            if rank == 0:
                print(f"{strategy}/{backend}/{name}: {STEPS} steps match torch.nn", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    strategy, backend, nprocs, store = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    mp.spawn(worker, args=(strategy, backend, nprocs, store), nprocs=nprocs, join=True)
