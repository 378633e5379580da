"""Multi30k German -> English: a GRU encoder-decoder with additive (Bahdanau) attention.

The encoder is a bidirectional GRU over packed source sentences; the decoder a GRUCell fed the
previous target word and the attention context. Training uses teacher forcing with a ratio (the
chance, per sentence and step, of feeding the reference word instead of the model's own
prediction) and label smoothing. Decoding is greedy (dev, each epoch) and beam search (test);
BLEU is sacrebleu's corpus BLEU against the raw, cased references.

    python examples/seq2seq.py                               # GPU defaults
    python examples/seq2seq.py --backend torch --emb-dim 128 --hidden 256
    python examples/seq2seq.py --compare --epochs 1 --max-steps 30
    python examples/seq2seq.py --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import sacrebleu
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples import common  # noqa: E402
from examples.data import (  # noqa: E402
    BOS,
    EOS,
    Vocab,
    bucket_batches,
    load_multi30k,
    mt_detokenize,
    mt_tokenize,
    pad_batch,
)


@dataclass
class Memory:
    """The encoder's output that every decoder step reads.

    memory (B, S, 2H) encoder outputs, keys (B, S, A) their attention keys, mask (B, S) True at
    real source positions, state (B, D) the decoder's first state; src (B, S) the source ids
    (a copy mechanism scatters attention onto them) or None."""

    memory: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    state: torch.Tensor
    src: torch.Tensor | None = None

    def expand(self, n: int) -> Memory:
        """A batch of one sentence repeated n times (beam search's hypotheses)."""
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))
        return Memory(*(None if t is None else t.expand(n, *t.shape[1:]) for t in fields))


class Seq2Seq(nn.Module):
    """Dimension legend: B batch, S source length, T target length, E embedding size,
    H encoder hidden size (per direction), D decoder hidden size, A attention size, V target
    vocabulary size."""

    def __init__(
        self,
        n_src: int,
        n_tgt: int,
        emb_dim: int = 256,
        hidden: int = 512,
        dec_hidden: int = 512,
        attn_dim: int = 512,
        dropout: float = 0.3,
        bos_id: int = 2,
        eos_id: int = 3,
    ):
        super().__init__()
        self.bos_id, self.eos_id = bos_id, eos_id
        self.src_emb = nn.Embedding(n_src, emb_dim, padding_idx=0)
        self.encoder = nn.GRU(emb_dim, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, dec_hidden)
        self.tgt_emb = nn.Embedding(n_tgt, emb_dim, padding_idx=0)
        self.att_keys = nn.Linear(2 * hidden, attn_dim, bias=False)
        self.att_query = nn.Linear(dec_hidden, attn_dim)
        self.att_v = nn.Linear(attn_dim, 1, bias=False)
        self.decoder = nn.GRUCell(emb_dim + 2 * hidden, dec_hidden)
        self.pre_out = nn.Linear(dec_hidden + 2 * hidden + emb_dim, emb_dim)
        self.out = nn.Linear(emb_dim, n_tgt)
        self.drop = nn.Dropout(dropout)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> Memory:
        """src (B, S) ids, lengths (B,) -> what the decoder attends to and its first state."""
        x = self.drop(self.src_emb(src))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, h = self.encoder(packed)  # h (2, B, H)
        memory, _ = pad_packed_sequence(y, batch_first=True, total_length=src.shape[1])
        state = torch.tanh(self.bridge(torch.cat([h[0], h[1]], dim=-1)))
        return Memory(memory, self.att_keys(memory), src != 0, state)

    def attend(self, prev: torch.Tensor, state: torch.Tensor, mem: Memory):
        """One decoder step up to the output layer. prev (B,) ids, state (B, D) ->
        hidden (B, E), new state (B, D), attention weights (B, S), context (B, 2H),
        embedded input (B, E)."""
        e = self.drop(self.tgt_emb(prev))  # (B, E)
        scores = self.att_v(torch.tanh(mem.keys + self.att_query(state)[:, None])).squeeze(-1)
        weights = scores.masked_fill(~mem.mask, float("-inf")).softmax(-1)  # (B, S)
        context = torch.bmm(weights[:, None], mem.memory).squeeze(1)  # (B, 2H)
        state = self.decoder(torch.cat([e, context], dim=-1), state)
        hidden = torch.tanh(self.pre_out(torch.cat([state, context, e], dim=-1)))
        return hidden, state, weights, context, e

    def step(self, prev: torch.Tensor, state: torch.Tensor, mem: Memory):
        """One decoder step. prev (B,) ids, state (B, D) -> scores (B, V) (logits; a subclass
        may return log-probabilities, which greedy and beam search read alike), new state."""
        hidden, state, *_ = self.attend(prev, state, mem)
        return self.out(self.drop(hidden)), state

    def forward(self, src, src_len, tgt_in, teacher_forcing: float = 1.0) -> torch.Tensor:
        """src (B, S), src_len (B,), tgt_in (B, T) = <s> + reference -> logits (B, T, V).

        At each step after the first, each sentence is fed the reference word with probability
        ``teacher_forcing`` and its own previous prediction otherwise."""
        mem = self.encode(src, src_len)
        state, prev = mem.state, tgt_in[:, 0]
        logits = []
        for t in range(tgt_in.shape[1]):
            if t > 0:
                prev = tgt_in[:, t]
                if teacher_forcing < 1.0:
                    own = logits[-1].argmax(-1)
                    use_ref = torch.rand(prev.shape, device=prev.device) < teacher_forcing
                    prev = torch.where(use_ref, prev, own)
            step_logits, state = self.step(prev, state, mem)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy(self, src, src_len, max_len: int) -> list[list[int]]:
        """src (B, S), src_len (B,) -> B lists of target ids (without <s> and </s>)."""
        mem = self.encode(src, src_len)
        state = mem.state
        prev = torch.full((src.shape[0],), self.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros_like(prev, dtype=torch.bool)
        out = []
        for _ in range(max_len):
            logits, state = self.step(prev, state, mem)
            prev = logits.argmax(-1)
            out.append(prev)
            done |= prev == self.eos_id
            if done.all():
                break
        ids = torch.stack(out, dim=1).tolist()
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in ids]

    @torch.no_grad()
    def beam_search(self, src, src_len, beam: int, max_len: int, alpha: float) -> list[int]:
        """One sentence: src (1, S), src_len (1,) -> target ids (without <s> and </s>).

        Keeps ``beam`` live hypotheses; a hypothesis that emits </s> is finished and ranked by
        its log-probability divided by length**alpha. Stops when ``beam`` are finished."""
        mem = self.encode(src, src_len)
        state = mem.state
        seqs, scores = [[self.bos_id]], torch.zeros(1, device=src.device)
        finished = []
        for _ in range(max_len):
            n = len(seqs)
            prev = torch.tensor([s[-1] for s in seqs], device=src.device)
            logits, new_state = self.step(prev, state, mem.expand(n))
            logp = logits.log_softmax(-1)
            logp[:, : self.bos_id + 1] = float("-inf")  # never <pad>, <unk> or <s>
            cand = (scores[:, None] + logp).flatten()
            top = cand.topk(min(2 * beam, cand.numel()))
            keep, keep_seqs, keep_scores = [], [], []
            V = logp.shape[1]
            for s, idx in zip(top.values.tolist(), top.indices.tolist()):
                b, w = divmod(idx, V)
                if w == self.eos_id:
                    finished.append((s / len(seqs[b]) ** alpha, seqs[b][1:]))
                elif len(keep) < beam:
                    keep.append(b)
                    keep_seqs.append(seqs[b] + [w])
                    keep_scores.append(s)
            if len(finished) >= beam or not keep:
                break
            seqs, state = keep_seqs, new_state[keep]
            scores = torch.tensor(keep_scores, device=src.device)
        if not finished:
            finished = [(s / (len(q) - 1) ** alpha, q[1:]) for s, q in zip(scores.tolist(), seqs)]
        return max(finished, key=lambda f: f[0])[1]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--emb-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512, help="encoder GRU size per direction")
    p.add_argument("--dec-hidden", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument(
        "--teacher-forcing",
        type=float,
        default=1.0,
        help="probability of feeding the reference word at each training step",
    )
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--min-freq", type=int, default=2)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.7, help="beam length normalisation power")
    common.add_common_args(p, epochs=20, batch_size=128, lr=1e-3)
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.emb_dim, args.hidden, args.dec_hidden, args.beam = 1, 32, 32, 32, 2
    return args


def make_task(args, device) -> common.Task:
    splits = {"train": "train", "dev": "val", "test": "test_2016_flickr"}
    pairs = {k: load_multi30k(args.data, v, "de", "en") for k, v in splits.items()}
    if args.smoke:
        pairs = {
            "train": pairs["train"][:512],
            "dev": pairs["dev"][:48],
            "test": pairs["test"][:48],
        }
    # Source lower-cased (a smaller vocabulary); target cased, since BLEU is scored cased.
    tok = {
        k: [([w.lower() for w in mt_tokenize(s)], mt_tokenize(t)) for s, t in v]
        for k, v in pairs.items()
    }
    src_vocab = Vocab.build((s for s, _ in tok["train"]), min_freq=args.min_freq)
    tgt_vocab = Vocab.build(
        (t for _, t in tok["train"]), min_freq=args.min_freq, specials=(BOS, EOS)
    )
    bos, eos = tgt_vocab.stoi[BOS], tgt_vocab.stoi[EOS]
    data = {
        k: [(src_vocab.encode(s) or [1], [bos, *tgt_vocab.encode(t), eos]) for s, t in v]
        for k, v in tok.items()
    }
    refs = {k: [t for _, t in v] for k, v in pairs.items()}

    def batches(epoch):
        rng = random.Random(args.seed * 7919 + epoch)
        rows = data["train"]
        return [
            [rows[i] for i in b]
            for b in bucket_batches([len(s) for s, _ in rows], args.batch_size, rng)
        ]

    def loss(model, items):
        src, src_len = pad_batch([s for s, _ in items])
        tgt, _ = pad_batch([t for _, t in items])
        src, tgt = src.to(device), tgt.to(device)
        logits = model(src, src_len, tgt[:, :-1], args.teacher_forcing)
        return nn.functional.cross_entropy(
            logits.flatten(0, 1),
            tgt[:, 1:].flatten(),
            ignore_index=0,
            label_smoothing=args.label_smoothing,
        )

    def to_text(ids: list[int]) -> str:
        return mt_detokenize(w for w in tgt_vocab.decode(ids) if w != "<unk>")

    def evaluate(model, split):
        rows = data[split]
        hyps = [""] * len(rows)
        for b in bucket_batches([len(s) for s, _ in rows], 128, None):
            src, src_len = pad_batch([rows[i][0] for i in b])
            out = model.greedy(src.to(device), src_len, max_len=int(src_len.max()) * 2 + 10)
            for i, ids in zip(b, out):
                hyps[i] = to_text(ids)
        greedy = sacrebleu.corpus_bleu(hyps, [refs[split]]).score
        if split != "test":
            return {"bleu_greedy": greedy, "score": greedy}
        beam_hyps = []
        for s, _ in rows:
            src = torch.tensor([s], device=device)
            ids = model.beam_search(
                src, torch.tensor([len(s)]), args.beam, max_len=2 * len(s) + 10, alpha=args.alpha
            )
            beam_hyps.append(to_text(ids))
        beam = sacrebleu.corpus_bleu(beam_hyps, [refs[split]]).score
        return {"bleu_greedy": greedy, "bleu_beam": beam, "score": beam}

    config = dict(
        n_src=len(src_vocab),
        n_tgt=len(tgt_vocab),
        emb_dim=args.emb_dim,
        hidden=args.hidden,
        dec_hidden=args.dec_hidden,
        attn_dim=args.dec_hidden,
        dropout=args.dropout,
        bos_id=bos,
        eos_id=eos,
    )
    return common.Task(
        name="seq2seq",
        make_model=lambda: Seq2Seq(**config),
        make_optimizer=lambda m: common.make_optimizer(m, args),
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        dev_split="dev",
        test_split="test",
        config=config,
        vocabs={"src": src_vocab.itos, "tgt": tgt_vocab.itos},
    )


def main(argv=None) -> dict:
    return common.run(parse, make_task, argv)


if __name__ == "__main__":
    main()
