"""Plumbing shared by the three examples: command-line options, backend switch, device, seeding,
the training loop with tqdm bars, ``--compare``, checkpoints and the results log.

An example describes itself as a :class:`Task` (how to build the model, the batches, the loss and
the metrics) and hands it to :func:`run`, which either trains it (:func:`fit`) or trains it twice,
once with torch's RNN modules and once converted to fused_rnn, and prints both side by side
(:func:`compare`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import DEFAULT_DATA_ROOT, DataError

BACKENDS = ("torch", "auto", "reference", "cpp", "cuda", "triton")
TORCH_RNNS = (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)


@dataclass
class Task:
    """What :func:`fit` and :func:`compare` need to know about one example.

    ``make_model()`` returns a fresh model built from torch.nn RNN modules (on the CPU);
    ``batches(epoch)`` the training batches of that epoch (deterministic for a given epoch);
    ``loss(model, batch)`` the mean training loss of a batch as a 0-dim tensor (the model is in
    train mode and on ``device``); ``evaluate(model, split)`` a dict of metrics with a ``score``
    entry (higher is better) used to pick the best epoch. ``config`` (the model's constructor
    keywords) and ``vocabs`` (name -> token list) are saved in checkpoints so that the model can
    be rebuilt and used from them.
    """

    name: str
    make_model: Callable[[], nn.Module]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batches: Callable[[int], list]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    evaluate: Callable[[nn.Module, str], dict[str, float]]
    dev_split: str
    test_split: str
    config: dict = field(default_factory=dict)
    vocabs: dict = field(default_factory=dict)


def add_common_args(p: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float) -> None:
    """Options every example takes; example-specific defaults come in as keywords."""
    g = p.add_argument_group("common")
    g.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA_ROOT,
        help="data root (default: ../shared/data relative to the repository root)",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="torch = plain torch.nn modules; any other value converts them with "
        "fused_rnn.convert(model, backend=...)",
    )
    g.add_argument(
        "--compare",
        action="store_true",
        help="train the same model with torch and with --backend (same seed) and "
        "print time per epoch and loss curves side by side",
    )
    g.add_argument(
        "--smoke",
        action="store_true",
        help="tiny subset, small model, one short epoch (a quick end-to-end check)",
    )
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="at most this many batches per epoch (0 = the whole training set)",
    )
    g.add_argument("--batch-size", type=int, default=batch_size)
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument(
        "--schedule",
        choices=("plateau", "cosine"),
        default="plateau",
        help="plateau: multiply the learning rate by --lr-decay after an epoch whose dev score "
        "is not the best so far; cosine: linear warm-up over --warmup steps, then cosine decay "
        "to 0 at the last step of --epochs (the dev score then only picks the checkpoint)",
    )
    g.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        help="--schedule plateau: multiply the learning rate by this when the dev score does "
        "not improve",
    )
    g.add_argument("--warmup", type=int, default=0, help="--schedule cosine: warm-up steps")
    g.add_argument("--optimizer", choices=("adam", "adamw"), default="adam")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="decoupled weight decay (adamw) of the weight matrices and embeddings, not biases",
    )
    g.add_argument("--clip", type=float, default=5.0, help="gradient-norm clipping")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda"
    )
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    g.add_argument("--checkpoint", type=Path, default=None, help="where to save the best model")
    g.add_argument(
        "--results",
        type=Path,
        default=None,
        help="append a JSON line with the final metrics and timings to this file",
    )
    g.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="stop after the epoch that passes this many minutes of training and "
        "evaluation, then score the best epoch on test (0 = no limit)",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    g.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="with --compare: also draw both loss curves into this PNG",
    )


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    return dev


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def apply_backend(model: nn.Module, backend: str) -> nn.Module:
    """``backend == "torch"``: the model unchanged. Otherwise every torch RNN module inside that
    fused_rnn has a drop-in for (nn.LSTM/GRU/LSTMCell/GRUCell, and nn.RNN/RNNCell once
    fused_rnn.RNN exists) is replaced in place by that subclass with the same weights."""
    if backend == "torch":
        return model
    try:
        import fused_rnn
    except ImportError as e:
        raise SystemExit(
            f"--backend {backend} needs the fused_rnn package ({e}); "
            "install it (pip install -e .) or use --backend torch"
        ) from e
    convert = getattr(fused_rnn, "convert", None)
    if convert is None:
        raise SystemExit("this fused_rnn has no convert(); use --backend torch")
    model = convert(model, backend=backend)
    # A recurrent module of a kind this fused_rnn has no drop-in for (nn.RNN before fused_rnn.RNN
    # existed) is left as it is: say so rather than let the run pass for a fused one.
    left = sorted({type(m).__name__ for m in model.modules() if type(m) in TORCH_RNNS})
    if left:
        print(
            f"note: this fused_rnn has no drop-in for nn.{', nn.'.join(left)}: "
            "it runs as torch's module",
            flush=True,
        )
    return model


def machine() -> str:
    """One line naming where the numbers were measured."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    return f"CPU {platform.machine()} {os.cpu_count()} cores, {threads} torch threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(task: Task, backend: str, device: torch.device) -> nn.Module:
    return apply_backend(task.make_model(), backend).to(device)


def make_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """``--optimizer`` at ``--lr``; with adamw, ``--weight-decay`` applies to parameters with
    two or more dimensions (weights, embeddings), as usual not to biases."""
    if args.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=args.lr)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr)


def make_schedule(opt: torch.optim.Optimizer, task: Task, args):
    """``--schedule cosine``: a per-step LambdaLR (linear warm-up, then cosine to 0 over
    ``--epochs`` epochs of ``--max-steps`` or all batches). None for plateau."""
    if args.schedule != "cosine":
        return None
    per_epoch = len(task.batches(1))
    if args.max_steps:
        per_epoch = min(per_epoch, args.max_steps)
    total, warmup = max(1, args.epochs * per_epoch), max(0, args.warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_epoch(
    model, opt, task: Task, epoch: int, args, device, desc: str, sched=None
) -> list[float]:
    """One pass over ``task.batches(epoch)`` (at most ``--max-steps`` batches), stepping the
    per-step schedule ``sched`` if any. Returns the loss of every step."""
    model.train()
    batches = task.batches(epoch)
    if args.max_steps:
        batches = batches[: args.max_steps]
    losses = []
    bar = tqdm(
        batches,
        desc=desc,
        disable=args.no_progress,
        leave=False,
        mininterval=1.0,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for batch in bar:
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{task.name}: loss became {loss.item()} at step {len(losses)}")
        loss.backward()
        if args.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
    return losses


def _timed_epoch(
    model, opt, task, epoch, args, device, desc, sched=None
) -> tuple[list[float], float]:
    _sync(device)
    t0 = time.perf_counter()
    losses = train_epoch(model, opt, task, epoch, args, device, desc, sched)
    _sync(device)
    return losses, time.perf_counter() - t0


def _evaluate(task: Task, model: nn.Module, split: str) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, split)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def fit(task: Task, args, device: torch.device) -> dict:
    """Train ``--epochs`` epochs, keep the best epoch on the dev split, score it on the test split,
    save the checkpoint and return a summary."""
    seed_all(args.seed)
    model = build(task, args.backend, device)
    opt = task.make_optimizer(model)
    sched = make_schedule(opt, task, args)
    print(
        f"[{task.name}] backend={args.backend} device={device} ({machine()}) "
        f"params={sum(p.numel() for p in model.parameters()):,}",
        flush=True,
    )
    best_score, best_state, best_epoch = -math.inf, None, 0
    epoch_times, epoch_losses, dev_history = [], [], []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        losses, dt = _timed_epoch(model, opt, task, epoch, args, device, f"epoch {epoch}", sched)
        dev = _evaluate(task, model, task.dev_split)
        epoch_times.append(dt)
        epoch_losses.append(sum(losses) / len(losses))
        dev_history.append(dev)
        print(
            f"epoch {epoch}: train_loss={epoch_losses[-1]:.4f} time={dt:.1f}s "
            f"{task.dev_split}: {_fmt(dev)}",
            flush=True,
        )
        if dev["score"] > best_score:
            best_score, best_epoch = dev["score"], epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        elif sched is None:
            for group in opt.param_groups:
                group["lr"] *= args.lr_decay
        if args.time_budget and time.perf_counter() - start > 60 * args.time_budget:
            print(f"time budget of {args.time_budget} min used up after epoch {epoch}", flush=True)
            break
    model.load_state_dict(best_state)
    test = _evaluate(task, model, task.test_split)
    print(
        f"best epoch {best_epoch} ({task.dev_split} score {best_score:.4f}); "
        f"{task.test_split}: {_fmt(test)}",
        flush=True,
    )
    summary = {
        "task": task.name,
        "backend": args.backend,
        "device": str(device),
        "machine": machine(),
        "command": " ".join(sys.argv) if args.argv is None else " ".join(args.argv),
        "epochs": len(epoch_times),
        "best_epoch": best_epoch,
        "sec_per_epoch": epoch_times,
        "train_loss": epoch_losses,
        "dev": dev_history,
        "test": test,
    }
    if args.checkpoint is not None:
        save_checkpoint(args.checkpoint, task, best_state, summary)
        print(f"checkpoint saved to {args.checkpoint}", flush=True)
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return summary


def compare(task: Task, args, device: torch.device) -> dict:
    """Train the same model (same seed, same batches) with plain torch modules and with
    fused_rnn's, then print the time per epoch and the loss curves side by side."""
    fused = args.backend if args.backend != "torch" else "auto"
    runs = {}
    for backend in ("torch", fused):
        seed_all(args.seed)
        model = build(task, backend, device)
        opt = task.make_optimizer(model)
        sched = make_schedule(opt, task, args)
        curve, times = [], []
        for epoch in range(1, args.epochs + 1):
            # Reseed per epoch so dropout and teacher forcing draw the same numbers in both runs.
            seed_all(args.seed * 1000 + epoch)
            losses, dt = _timed_epoch(
                model, opt, task, epoch, args, device, f"{backend} epoch {epoch}", sched
            )
            curve += losses
            times.append(dt)
        runs[backend] = {"losses": curve, "sec_per_epoch": times}
    a, b = runs["torch"]["losses"], runs[fused]["losses"]
    print(f"[{task.name}] compare on {device} ({machine()}): torch vs fused_rnn backend={fused}")
    print(f"{'epoch':>5} {'torch s':>9} {'fused s':>9} {'speed-up':>8}")
    for e, (ta, tb) in enumerate(
        zip(runs["torch"]["sec_per_epoch"], runs[fused]["sec_per_epoch"]), 1
    ):
        print(f"{e:>5} {ta:>9.2f} {tb:>9.2f} {ta / tb:>7.2f}x")
    every = max(1, len(a) // 20)
    print(f"{'step':>5} {'torch loss':>11} {'fused loss':>11} {'|diff|':>9}")
    for i in list(range(0, len(a), every)) + ([len(a) - 1] if (len(a) - 1) % every else []):
        print(f"{i + 1:>5} {a[i]:>11.5f} {b[i]:>11.5f} {abs(a[i] - b[i]):>9.2e}")
    diffs = [abs(x - y) for x, y in zip(a, b)]
    print(f"max |diff| over {len(a)} steps: {max(diffs):.3e}", flush=True)
    if args.plot is not None:
        plot_curves(runs, task.name, device, args.plot)
    out = {
        "task": task.name,
        "device": str(device),
        "machine": machine(),
        "fused": fused,
        "runs": runs,
        "max_abs_diff": max(diffs),
    }
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(out) + "\n")
    return out


def plot_curves(runs: dict, title: str, device: torch.device, path: Path) -> None:
    """Training loss per step of each run, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run_ in runs.items():
        sec = sum(run_["sec_per_epoch"]) / len(run_["sec_per_epoch"])
        label = (
            f"{name} ({sec:.1f} s/epoch)"
            if name == "torch"
            else f"fused_rnn {name} ({sec:.1f} s/epoch)"
        )
        ax.plot(range(1, len(run_["losses"]) + 1), run_["losses"], label=label, alpha=0.8)
    ax.set(xlabel="step", ylabel="training loss", title=f"{title} on {device}: torch vs fused_rnn")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_checkpoint(path: Path, task: Task, state_dict: dict, summary: dict) -> None:
    """The state_dict uses torch.nn's parameter names (fused_rnn's modules keep them), so it loads
    into the plain torch model that ``config`` rebuilds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "task": task.name,
            "config": task.config,
            "vocabs": task.vocabs,
            "state_dict": state_dict,
            "summary": summary,
        },
        path,
    )


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def run(
    parse: Callable[[list[str] | None], argparse.Namespace],
    make_task: Callable[[argparse.Namespace, torch.device], Task],
    argv: list[str] | None,
) -> dict:
    """Entry point of every example: parse, set up threads/device, build the task, train or
    compare. Data errors end the program with their message instead of a traceback."""
    args = parse(argv)
    args.argv = argv
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    try:
        task = make_task(args, device)
    except DataError as e:
        raise SystemExit(f"error: {e}") from e
    return compare(task, args, device) if args.compare else fit(task, args, device)
