"""IMDB sentiment: a 2-layer bidirectional LSTM over word embeddings trained from scratch.

Variable-length batches go through the LSTM as PackedSequence. The review representation is the
final forward and backward states of the top layer next to a max-pool of its outputs over the
real (unpadded) steps. Reviews longer than --max-len tokens keep their head and their tail.

    python examples/imdb_sentiment.py                        # GPU defaults
    python examples/imdb_sentiment.py --backend torch --emb-dim 128 --hidden 128 --max-len 256
    python examples/imdb_sentiment.py --compare --epochs 1 --max-steps 40
    python examples/imdb_sentiment.py --smoke
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


class SentimentLSTM(nn.Module):
    """ids (B, T) + lengths (B,) -> one logit per review (B,), positive = 'pos'."""

    def __init__(
        self,
        n_words: int,
        emb_dim: int = 256,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.emb = nn.Embedding(n_words, emb_dim, padding_idx=0)
        self.rnn = nn.LSTM(
            emb_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(4 * hidden, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.emb(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, (h, _) = self.rnn(packed)  # h (layers*2, B, hidden)
        y, _ = pad_packed_sequence(y, batch_first=True, padding_value=float("-inf"))
        pooled = y.max(dim=1).values  # (B, 2*hidden); padding is -inf so never the max
        feats = torch.cat([h[-2], h[-1], pooled], dim=-1)
        return self.out(self.drop(feats)).squeeze(-1)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--emb-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
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
    )
    return common.Task(
        name="imdb",
        make_model=lambda: SentimentLSTM(**config),
        make_optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=args.lr),
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
