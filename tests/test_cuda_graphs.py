"""A whole training step (forward, backward, optimiser step) of a fused_rnn model captured in a
CUDA graph and replayed, two ways: torch.cuda.graph by hand, and
torch.compile(mode="reduce-overhead") (CUDA graphs under Inductor). Each replay must give the
parameters the same model trained eagerly step by step gets. GPU only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fused_rnn

pytestmark = pytest.mark.gpu

T, B, I, H, STEPS = 7, 4, 8, 16, 3  # noqa: E741


class Net(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(I, H, num_layers=2, batch_first=True)
        self.head = nn.Linear(H, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0]).square().mean()


def _batches():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(B, T, I, generator=gen).cuda() for _ in range(STEPS)]


def _eager(model: nn.Module, batches) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in batches:
        opt.zero_grad(set_to_none=False)
        model(x).backward()
        opt.step()
    return model


def _assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(
            p, q, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU], ids=["lstm", "gru"])
def test_cuda_graph_capture_and_replay_of_a_training_step(cls):
    torch.manual_seed(0)
    model = Net(cls).cuda()
    twin = copy.deepcopy(model)
    batches = _batches()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    static_x = batches[0].clone()
    # Warm up on a side stream (lazy initialisation, workspaces), as torch's recipe does; then
    # put the parameters back so the graph's steps line up with the eager twin's.
    start = copy.deepcopy(model.state_dict())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            opt.zero_grad(set_to_none=False)
            model(static_x).backward()
    torch.cuda.current_stream().wait_stream(side)
    model.load_state_dict(start)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        static_loss = model(static_x)
        static_loss.backward()
        opt.step()
    # Capture records without running: replay each batch (zero_grad outside the graph).
    model.load_state_dict(start)
    for x in batches:
        static_x.copy_(x)
        opt.zero_grad(set_to_none=False)
        graph.replay()
    torch.cuda.synchronize()
    _assert_same_params(model, _eager(twin, batches))


@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU], ids=["lstm", "gru"])
def test_compile_reduce_overhead_training_step(cls):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net(cls).cuda()
    twin = copy.deepcopy(model)
    batches = _batches()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in batches:
        torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=False)
        compiled(x).backward()
        opt.step()
    torch.cuda.synchronize()
    _assert_same_params(model, _eager(twin, batches))
