"""Reuters-21578 news headline generation: a GRU encoder-decoder with attention and a copy
(pointer-generator) mechanism, from the first words of a story to its headline.

The model is seq2seq.py's (bidirectional GRU encoder over packed input, GRUCell decoder with
additive attention, teacher forcing with a ratio, greedy and beam decoding) with one vocabulary
for both sides and a copy gate (See et al., 2017): each step mixes the vocabulary distribution
with the attention weights scattered onto the source words, so names and numbers that recur from
the story in its headline can be copied, also when they are outside the vocabulary.

Metric: ROUGE-1/2/L F1 (rouge-score, stemmed) on the LEWISSPLIT TEST stories, printed beside two
baselines on the same stories: the lead's first 8 words, and the lead (first sentence) truncated
to the median headline length of the training stories.

    python examples/headlines.py                             # GPU defaults
    python examples/headlines.py --backend cpp --threads 2 --time-budget 20
    python examples/headlines.py --compare --epochs 1 --max-steps 30
    python examples/headlines.py --smoke

Data: Reuters-21578, Distribution 1.0 (research use only; see ../shared/data/README.md).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples import common  # noqa: E402
from examples.data import (  # noqa: E402
    BOS,
    EOS,
    Vocab,
    bucket_batches,
    load_reuters,
    news_lead,
    news_tokenize,
    pad_batch,
)
from examples.metrics import rouge_f1  # noqa: E402
from examples.seq2seq import Memory, Seq2Seq  # noqa: E402


class PointerSeq2Seq(Seq2Seq):
    """Seq2Seq over one vocabulary of V words for source and target, plus copying.

    Ids >= V are "extended" ids: per story, its k-th source word outside the vocabulary gets
    V + k, in the source and in the reference headline alike. The encoder and decoder read such
    ids as <unk>; each step returns log-probabilities over V + X ids (X = the batch's largest
    number of such words): p = g * softmax(logits) + (1 - g) * attention scattered onto the
    source ids, with the gate g = sigmoid(w . [state, context, input])."""

    def __init__(self, n_words: int, unk_id: int = 1, **kw):
        super().__init__(n_src=n_words, n_tgt=n_words, **kw)
        self.n_words, self.unk_id = n_words, unk_id
        # One vocabulary: one embedding table for source, target and output layer (tied
        # weights: a third of the parameters, and rare words learn from both sides).
        self.src_emb = self.tgt_emb
        self.out.weight = self.tgt_emb.weight
        dec_hidden, two_h = self.decoder.hidden_size, self.att_keys.in_features
        self.copy_gate = nn.Linear(dec_hidden + two_h + self.tgt_emb.embedding_dim, 1)

    def _in_vocab(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.masked_fill(ids >= self.n_words, self.unk_id)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> Memory:
        """src (B, S) extended ids -> Memory that keeps them for the copy scatter."""
        mem = super().encode(self._in_vocab(src), lengths)
        mem.src = src
        return mem

    def step(self, prev: torch.Tensor, state: torch.Tensor, mem: Memory):
        """prev (B,) extended ids -> log-probabilities (B, V + X), new state (B, D)."""
        hidden, state, weights, context, e = self.attend(self._in_vocab(prev), state, mem)
        p_vocab = self.out(self.drop(hidden)).softmax(-1)  # (B, V)
        gate = torch.sigmoid(self.copy_gate(torch.cat([state, context, e], dim=-1)))  # (B, 1)
        n_ext = max(self.n_words, int(mem.src.max()) + 1)
        p = torch.zeros(p_vocab.shape[0], n_ext, dtype=p_vocab.dtype, device=p_vocab.device)
        p[:, : self.n_words] = gate * p_vocab
        p = p.scatter_add(1, mem.src, (1 - gate) * weights)
        return p.clamp_min(1e-12).log(), state


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--emb-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="encoder GRU size per direction")
    p.add_argument("--dec-hidden", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument(
        "--teacher-forcing",
        type=float,
        default=1.0,
        help="probability of feeding the reference word at each training step",
    )
    p.add_argument(
        "--src-len", type=int, default=40, help="the model reads the story's first N tokens"
    )
    p.add_argument("--vocab-size", type=int, default=8000, help="shared source/target vocabulary")
    p.add_argument("--min-freq", type=int, default=2)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.7, help="beam length normalisation power")
    p.add_argument("--max-out", type=int, default=20, help="longest headline decoded, in tokens")
    p.add_argument("--show", type=int, default=8, help="print this many test headlines")
    common.add_common_args(p, epochs=20, batch_size=64, lr=1e-3)
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.emb_dim, args.hidden, args.dec_hidden, args.beam = 1, 32, 32, 32, 2
        args.vocab_size, args.show = 3000, 3
    return args


def baselines(stories, median_len: int) -> dict[str, list[str]]:
    """The two extractive baselines' headlines: the lead's first 8 words, and the lead (first
    sentence) cut to the median headline length (in words)."""
    leads = [news_lead(s.body).split() for s in stories]
    return {
        "lead8": [" ".join(w[:8]) for w in leads],
        f"lead{median_len}": [" ".join(w[:median_len]) for w in leads],
    }


def make_task(args, device) -> common.Task:
    stories = load_reuters(args.data)
    if args.smoke:
        stories = {
            "train": stories["train"][:512],
            "dev": stories["dev"][:48],
            "test": stories["test"][:48],
        }
    median_len = int(statistics.median(len(s.title.split()) for s in stories["train"]))
    tok = {
        k: [(news_tokenize(s.body)[: args.src_len] or ["<unk>"], news_tokenize(s.title)) for s in v]
        for k, v in stories.items()
    }
    vocab = Vocab.build(
        (seq for s, t in tok["train"] for seq in (s, t)),
        min_freq=args.min_freq,
        max_size=args.vocab_size,
        specials=(BOS, EOS),
    )
    V, bos, eos = len(vocab), vocab.stoi[BOS], vocab.stoi[EOS]

    def encode(src: list[str], tgt: list[str]):
        """Source and <s> + headline + </s> in extended ids, and the story's own OOV words."""
        oov = list(dict.fromkeys(w for w in src if w not in vocab.stoi))
        ext = {w: V + k for k, w in enumerate(oov)}
        src_ids = [vocab.stoi.get(w, ext.get(w)) for w in src]
        tgt_ids = [vocab.stoi.get(w, ext.get(w, vocab.unk_id)) for w in tgt]
        return src_ids, [bos, *tgt_ids, eos], oov

    data = {k: [encode(s, t) for s, t in v] for k, v in tok.items()}
    refs = {k: [s.title for s in v] for k, v in stories.items()}
    base = {k: baselines(v, median_len) for k, v in stories.items()}

    def batches(epoch):
        rng = random.Random(args.seed * 7919 + epoch)
        rows = data["train"]
        return [
            [rows[i] for i in b]
            for b in bucket_batches([len(s) for s, _, _ in rows], args.batch_size, rng)
        ]

    def loss(model, items):
        src, src_len = pad_batch([s for s, _, _ in items])
        tgt, _ = pad_batch([t for _, t, _ in items])
        src, tgt = src.to(device), tgt.to(device)
        logp = model(src, src_len, tgt[:, :-1], args.teacher_forcing)  # (B, T, V + X)
        return nn.functional.nll_loss(logp.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=0)

    def to_text(ids: list[int], oov: list[str]) -> str:
        words = [vocab.itos[i] if i < V else oov[i - V] for i in ids]
        return " ".join(w for w in words if w != "<unk>")

    def evaluate(model, split):
        rows = data[split]
        greedy = [""] * len(rows)
        for b in bucket_batches([len(s) for s, _, _ in rows], 128, None):
            src, src_len = pad_batch([rows[i][0] for i in b])
            for i, ids in zip(b, model.greedy(src.to(device), src_len, args.max_out)):
                greedy[i] = to_text(ids, rows[i][2])
        scores = {f"{k}_greedy": v for k, v in rouge_f1(refs[split], greedy).items()}
        for name, hyps in base[split].items():
            scores[f"{name}_rougeL"] = rouge_f1(refs[split], hyps)["rougeL"]
        if split != "test":
            return {**scores, "score": scores["rougeL_greedy"]}
        beam = []
        for s, _, oov in rows:
            ids = model.beam_search(
                torch.tensor([s], device=device),
                torch.tensor([len(s)]),
                args.beam,
                max_len=args.max_out,
                alpha=args.alpha,
            )
            beam.append(to_text(ids, oov))
        scores.update({f"{k}_beam": v for k, v in rouge_f1(refs[split], beam).items()})
        for name, hyps in base[split].items():
            scores.update({f"{name}_{k}": v for k, v in rouge_f1(refs[split], hyps).items()})
        show(stories[split], beam, args.show)
        return {**scores, "score": scores["rougeL_beam"]}

    config = dict(
        n_words=V,
        unk_id=vocab.unk_id,
        emb_dim=args.emb_dim,
        hidden=args.hidden,
        dec_hidden=args.dec_hidden,
        attn_dim=args.dec_hidden,
        dropout=args.dropout,
        bos_id=bos,
        eos_id=eos,
    )
    return common.Task(
        name="headlines",
        make_model=lambda: PointerSeq2Seq(**config),
        make_optimizer=lambda m: common.make_optimizer(m, args),
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        dev_split="dev",
        test_split="test",
        config=config,
        vocabs={"words": vocab.itos},
    )


def show(stories, hyps: list[str], n: int) -> None:
    """Print n generated headlines (spread over the split) under the real ones."""
    for i in range(0, len(stories), max(1, len(stories) // max(1, n)))[:n]:
        print(f"  lead : {news_lead(stories[i].body)[:110]}")
        print(f"  real : {stories[i].title}")
        print(f"  model: {hyps[i]}", flush=True)


def main(argv=None) -> dict:
    return common.run(parse, make_task, argv)


if __name__ == "__main__":
    main()
