"""BiLSTM sequence tagger: UPOS on Universal Dependencies English EWT, or chunking on CoNLL-2000.

Each word is represented by a word embedding (lower-cased, digits mapped to 0), a character
BiLSTM over its spelling, a casing class and, for chunking, its POS tag (part of the CoNLL-2000
input). A 2-layer BiLSTM over the sentence predicts one tag per word.

    python examples/tagging.py --task upos                  # GPU defaults
    python examples/tagging.py --task chunk --backend torch
    python examples/tagging.py --task upos --compare --epochs 1 --max-steps 60
    python examples/tagging.py --task upos --smoke
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples import common  # noqa: E402
from examples.data import Vocab, bucket_batches, load_conll2000, load_conllu, pad_batch  # noqa: E402
from examples.metrics import chunk_f1, token_accuracy  # noqa: E402

MAX_WORD_CHARS = 20
CASINGS = ("<pad>", "lower", "upper", "title", "mixed", "numeric", "has_digit", "other")


def casing(word: str) -> int:
    """Index into CASINGS of the word's casing class."""
    if word.isdigit():
        return 5
    if any(c.isdigit() for c in word):
        return 6
    if word.islower():
        return 1
    if word.isupper():
        return 2
    if word[:1].isupper() and word[1:].islower():
        return 3
    if any(c.isalpha() for c in word):
        return 4
    return 7


def normalize(word: str) -> str:
    return re.sub(r"\d", "0", word.lower())


class Tagger(nn.Module):
    """Word + char-BiLSTM + casing (+ POS) features -> BiLSTM -> per-word tag logits."""

    def __init__(
        self,
        n_words: int,
        n_chars: int,
        n_tags: int,
        n_pos: int = 0,
        word_dim: int = 100,
        char_dim: int = 32,
        char_hidden: int = 32,
        case_dim: int = 8,
        pos_dim: int = 32,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.word_emb = nn.Embedding(n_words, word_dim, padding_idx=0)
        self.char_emb = nn.Embedding(n_chars, char_dim, padding_idx=0)
        self.char_rnn = nn.LSTM(char_dim, char_hidden, batch_first=True, bidirectional=True)
        self.case_emb = nn.Embedding(len(CASINGS), case_dim, padding_idx=0)
        self.pos_emb = nn.Embedding(n_pos, pos_dim, padding_idx=0) if n_pos else None
        in_dim = word_dim + 2 * char_hidden + case_dim + (pos_dim if n_pos else 0)
        self.rnn = nn.LSTM(
            in_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, n_tags)

    def char_features(self, chars: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """chars (B, T, C) char ids, mask (B, T) real words -> (B, T, 2*char_hidden)."""
        flat = chars[mask]  # (N, C): the N real words of the batch
        lengths = (flat != 0).sum(1).clamp(min=1)
        packed = pack_padded_sequence(
            self.char_emb(flat), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.char_rnn(packed)  # h (2, N, char_hidden)
        feats = chars.new_zeros(*mask.shape, 2 * h.shape[-1], dtype=h.dtype)
        feats[mask] = torch.cat([h[0], h[1]], dim=-1)
        return feats

    def forward(self, words, chars, case, pos, lengths):
        """words, case, pos (B, T) ids (pos may be None), chars (B, T, C), lengths (B,)
        -> logits (B, T, n_tags)."""
        mask = words != 0
        parts = [self.word_emb(words), self.char_features(chars, mask), self.case_emb(case)]
        if self.pos_emb is not None:
            parts.append(self.pos_emb(pos))
        x = self.drop(torch.cat(parts, dim=-1))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=words.shape[1])
        return self.out(self.drop(y))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=("upos", "chunk"), default="upos")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--word-dim", type=int, default=100)
    p.add_argument("--char-hidden", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument(
        "--word-dropout",
        type=float,
        default=0.05,
        help="replace this fraction of training words by <unk> (learns an OOV vector)",
    )
    p.add_argument("--no-pos", action="store_true", help="chunking without the POS-tag feature")
    common.add_common_args(p, epochs=30, batch_size=32, lr=2e-3)
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.hidden, args.word_dim, args.char_hidden = 1, 32, 32, 16
    return args


def load_splits(args) -> tuple[list, list, list]:
    """(train, dev, test) sentences, each ``(words, tags, pos_or_None)``."""
    if args.task == "upos":
        train, dev, test = (
            [(w, t, None) for w, t in load_conllu(args.data, s)] for s in ("train", "dev", "test")
        )
    else:
        use_pos = not args.no_pos
        train, test = (
            [(w, c, p if use_pos else None) for w, p, c in load_conll2000(args.data, s)]
            for s in ("train", "test")
        )
        # CoNLL-2000 has no dev split: hold out 5% of train, always the same sentences.
        order = list(range(len(train)))
        random.Random(1234).shuffle(order)
        n_dev = len(train) // 20
        dev = [train[i] for i in order[:n_dev]]
        train = [train[i] for i in order[n_dev:]]
    if args.smoke:
        train, dev, test = train[:256], dev[:64], test[:64]
    return train, dev, test


def make_task(args, device) -> common.Task:
    train, dev, test = load_splits(args)
    words = Vocab.build(([normalize(w) for w in s[0]] for s in train), min_freq=1)
    chars = Vocab.build((c for w in s[0] for c in w) for s in train)
    tags = Vocab.build(s[1] for s in train)
    pos = Vocab.build(s[2] for s in train) if train[0][2] is not None else None

    def encode(sent):
        w, t, p = sent
        return {
            "words": words.encode(normalize(x) for x in w),
            "chars": [chars.encode(x[:MAX_WORD_CHARS]) for x in w],
            "case": [casing(x) for x in w],
            "pos": pos.encode(p) if pos is not None else None,
            "tags": tags.encode(t),
            "gold": t,
        }

    data = {
        "train": [encode(s) for s in train],
        "dev": [encode(s) for s in dev],
        "test": [encode(s) for s in test],
    }

    def collate(items, train_mode: bool):
        w, lengths = pad_batch([it["words"] for it in items])
        if train_mode and args.word_dropout > 0:
            drop = (torch.rand(w.shape) < args.word_dropout) & (w != 0)
            w = w.masked_fill(drop, words.unk_id)
        B, T = w.shape
        C = max(len(c) for it in items for c in it["chars"])
        ch = torch.zeros(B, T, C, dtype=torch.long)
        for b, it in enumerate(items):
            for t, c in enumerate(it["chars"]):
                ch[b, t, : len(c)] = torch.as_tensor(c)
        case, _ = pad_batch([it["case"] for it in items])
        p = pad_batch([it["pos"] for it in items])[0] if pos is not None else None
        y, _ = pad_batch([it["tags"] for it in items], pad_id=-100)
        return [x.to(device) if x is not None else None for x in (w, ch, case, p, y)] + [lengths]

    config = dict(
        n_words=len(words),
        n_chars=len(chars),
        n_tags=len(tags),
        n_pos=len(pos) if pos is not None else 0,
        word_dim=args.word_dim,
        char_hidden=args.char_hidden,
        hidden=args.hidden,
        layers=args.layers,
        dropout=args.dropout,
    )

    def batches(epoch):
        rng = random.Random(args.seed * 7919 + epoch)
        lens = [len(it["words"]) for it in data["train"]]
        return [[data["train"][i] for i in b] for b in bucket_batches(lens, args.batch_size, rng)]

    def loss(model, items):
        w, ch, case, p, y, lengths = collate(items, train_mode=True)
        logits = model(w, ch, case, p, lengths)
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)

    def evaluate(model, split):
        items = data[split]
        gold, pred = [], []
        for b in bucket_batches([len(it["words"]) for it in items], 256, None):
            batch = [items[i] for i in b]
            w, ch, case, p, _, lengths = collate(batch, train_mode=False)
            # Ids 0 and 1 are <pad> and <unk>, never a tag to predict.
            best = model(w, ch, case, p, lengths)[..., 2:].argmax(-1).cpu() + 2
            for k, it in enumerate(batch):
                gold.append(it["gold"])
                pred.append(tags.decode(best[k, : len(it["gold"])].tolist()))
        acc = token_accuracy(gold, pred)
        if args.task == "upos":
            return {"acc": acc, "score": acc}
        f1 = chunk_f1(gold, pred)
        return {"acc": acc, **f1, "score": f1["f1"]}

    return common.Task(
        name=f"tagging-{args.task}",
        make_model=lambda: Tagger(**config),
        make_optimizer=lambda m: common.make_optimizer(m, args),
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        dev_split="dev",
        test_split="test",
        config=config,
        vocabs={
            "words": words.itos,
            "chars": chars.itos,
            "tags": tags.itos,
            "pos": pos.itos if pos is not None else None,
        },
    )


def main(argv=None) -> dict:
    return common.run(parse, make_task, argv)


if __name__ == "__main__":
    main()
