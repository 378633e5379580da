"""IMDB sentiment: a 2-layer bidirectional LSTM over word embeddings trained from scratch, or
(--cell rnn) the one-layer nn.RNN classifier of most tutorials.

Variable-length batches go through the RNN as PackedSequence. The review representation is the
final forward and backward states of the top layer next to a max-pool of its outputs over the
real (unpadded) steps (--head pool), or the last output alone (--head last, the default of
--cell rnn: one layer, one direction, tanh). Reviews longer than --max-len tokens keep their
head and their tail.

--cell rnn goes through fused_rnn.convert like the others; a fused_rnn without an RNN module
leaves nn.RNN as it is and says so.

    python examples/imdb_sentiment.py                        # GPU defaults
    python examples/imdb_sentiment.py --backend torch --emb-dim 128 --hidden 128 --max-len 256
    python examples/imdb_sentiment.py --compare --epochs 1 --max-steps 40
    python examples/imdb_sentiment.py --smoke
    python examples/imdb_sentiment.py --cell rnn --backend cpp   # vs --cell lstm --directions 1
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples import common  # noqa: E402
from examples.data import Vocab, bucket_batches, imdb_tokenize, load_imdb, pad_batch  # noqa: E402

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class SentimentRNN(nn.Module):
    """ids (B, T) + lengths (B,) -> one logit per review (B,), positive = 'pos'.

    ``head="pool"``: the top layer's final states (both directions) next to a max-pool of its
    outputs over the real steps. ``head="last"``: the top layer's final state only, i.e. its
    output at each review's last real step (unidirectional) -- the tutorial classifier.
    ``cell="rnn"`` is nn.RNN(nonlinearity="tanh")."""

    def __init__(
        self,
        n_words: int,
        emb_dim: int = 256,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.5,
        cell: str = "lstm",
        bidirectional: bool = True,
        head: str = "pool",
    ):
        super().__init__()
        if head not in ("pool", "last"):
            raise ValueError(f"head must be 'pool' or 'last', got {head!r}")
        self.head, dirs = head, 2 if bidirectional else 1
        self.emb = nn.Embedding(n_words, emb_dim, padding_idx=0)
        self.rnn = CELLS[cell](
            emb_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear((2 if head == "pool" else 1) * dirs * hidden, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.emb(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, h = self.rnn(packed)
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h, c); h (layers*dirs, B, hidden)
        dirs = 2 if self.rnn.bidirectional else 1
        feats = torch.cat(list(h[-dirs:]), dim=-1)  # the top layer's final states
        if self.head == "pool":
            y, _ = pad_packed_sequence(y, batch_first=True, padding_value=float("-inf"))
            pooled = y.max(dim=1).values  # (B, dirs*hidden); padding is -inf so never the max
            feats = torch.cat([feats, pooled], dim=-1)
        return self.out(self.drop(feats)).squeeze(-1)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--cell",
        choices=tuple(CELLS),
        default="lstm",
        help="nn.LSTM, nn.GRU or nn.RNN (tanh); --cell rnn defaults to the tutorial model: "
        "one layer, one direction, a Linear on the last output",
    )
    p.add_argument(
        "--directions",
        type=int,
        choices=(1, 2),
        default=None,
        help="1 = left to right, 2 = bidirectional (default: 1 for --cell rnn, else 2)",
    )
    p.add_argument(
        "--head",
        choices=("pool", "last"),
        default=None,
        help="pool: final states + max-pool of the outputs; last: the last output only "
        "(default: last for --cell rnn, else pool)",
    )
    p.add_argument("--emb-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=None, help="default 1 for --cell rnn, else 2")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--vocab-size", type=int, default=30000)
    p.add_argument(
        "--max-len",
        type=int,
        default=400,
        help="longer reviews keep their first and last max-len/2 tokens",
    )
    p.add_argument("--dev-size", type=int, default=1000, help="train reviews held out for dev")
    common.add_common_args(p, epochs=8, batch_size=64, lr=1e-3)
    args = p.parse_args(argv)
    tutorial = args.cell == "rnn"  # the first model of most tutorials, unless asked otherwise
    args.directions = args.directions or (1 if tutorial else 2)
    args.layers = args.layers if args.layers is not None else (1 if tutorial else 2)
    args.head = args.head or ("last" if tutorial else "pool")
    if args.smoke:
        args.epochs, args.emb_dim, args.hidden, args.max_len = 1, 32, 32, 100
        args.vocab_size, args.dev_size = 5000, 100
    return args


def clip(tokens: list[str], max_len: int) -> list[str]:
    if len(tokens) <= max_len:
        return tokens
    head = max_len // 2
    return tokens[:head] + tokens[len(tokens) - (max_len - head) :]


def make_task(args, device) -> common.Task:
    train = load_imdb(args.data, "train")
    test = load_imdb(args.data, "test")
    # A fixed split (not tied to --seed) so that dev scores of different runs compare.
    split_rng = random.Random(1234)
    split_rng.shuffle(train)
    split_rng.shuffle(test)
    dev, train = train[: args.dev_size], train[args.dev_size :]
    if args.smoke:
        train, test = train[:512], test[:200]
    tok = {
        name: [(clip(imdb_tokenize(t), args.max_len), y) for t, y in rows]
        for name, rows in (("train", train), ("dev", dev), ("test", test))
    }
    # Empty after tokenisation is impossible for real reviews but keep batching safe.
    tok = {k: [(t or ["<unk>"], y) for t, y in v] for k, v in tok.items()}
    vocab = Vocab.build((t for t, _ in tok["train"]), min_freq=2, max_size=args.vocab_size)
    data = {k: [(vocab.encode(t), y) for t, y in v] for k, v in tok.items()}

    def collate(items):
        ids, lengths = pad_batch([x for x, _ in items])
        y = torch.tensor([y for _, y in items], dtype=torch.float32)
        return ids.to(device), lengths, y.to(device)

    def batches(epoch):
        rng = random.Random(args.seed * 7919 + epoch)
        rows = data["train"]
        return [
            [rows[i] for i in b]
            for b in bucket_batches([len(x) for x, _ in rows], args.batch_size, rng)
        ]

    def loss(model, items):
        ids, lengths, y = collate(items)
        return nn.functional.binary_cross_entropy_with_logits(model(ids, lengths), y)

    def evaluate(model, split):
        rows = data[split]
        correct = 0
        for b in bucket_batches([len(x) for x, _ in rows], 256, None):
            ids, lengths, y = collate([rows[i] for i in b])
            correct += ((model(ids, lengths) > 0).float() == y).sum().item()
        acc = 100.0 * correct / len(rows)
        return {"acc": acc, "score": acc}

    config = dict(
        n_words=len(vocab),
        emb_dim=args.emb_dim,
        hidden=args.hidden,
        layers=args.layers,
        dropout=args.dropout,
        cell=args.cell,
        bidirectional=args.directions == 2,
        head=args.head,
    )
    return common.Task(
        name="imdb",
        make_model=lambda: SentimentRNN(**config),
        make_optimizer=lambda m: common.make_optimizer(m, args),
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        dev_split="dev",
        test_split="test",
        config=config,
        vocabs={"words": vocab.itos},
    )


def main(argv=None) -> dict:
    return common.run(parse, make_task, argv)


if __name__ == "__main__":
    main()
