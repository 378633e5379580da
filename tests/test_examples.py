"""End-to-end examples: loaders on small files made here (official and shared formats, malformed
and missing data), the conlleval-style F1 on a hand-checked example, and the --smoke runs of
every example against ../shared/data with checkpoints reloaded into plain torch models."""

from __future__ import annotations

import gzip
import tarfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from examples import common, data, headlines, imdb_sentiment, seq2seq, tagging
from examples.metrics import chunk_f1, chunk_spans, rouge_f1, token_accuracy

SHARED = data.DEFAULT_DATA_ROOT
needs_shared = pytest.mark.skipif(
    not (SHARED / "README.md").exists(), reason=f"shared data not found at {SHARED}"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Loaders

IMDB_ROWS = {
    ("train", "neg", 0, 3): "Dull.<br /><br />Very\tdull.",  # a TAB inside the text
    ("train", "pos", 0, 9): "Great fun!",
    ("train", "pos", 1, 10): "Loved it.",
    ("test", "neg", 0, 1): "Awful.",
}


def make_imdb_official(root: Path) -> None:
    for (split, label, i, rating), text in IMDB_ROWS.items():
        write(root / "aclImdb" / split / label / f"{i}_{rating}.txt", text)
    for split in ("train", "test"):  # the official layout has both labels in both splits
        for label in ("neg", "pos"):
            (root / "aclImdb" / split / label).mkdir(parents=True, exist_ok=True)


def expected_imdb(split: str) -> list[tuple[str, int]]:
    return [
        (t, data.IMDB_LABELS.index(lab))
        for (s, lab, _, _), t in sorted(IMDB_ROWS.items())
        if s == split
    ]


def test_imdb_shared_tsv(tmp_path):
    lines = [
        f"{i}\t{lab}\t{r}\t{t}" for (s, lab, i, r), t in sorted(IMDB_ROWS.items()) if s == "train"
    ]
    write(tmp_path / "imdb" / "train.tsv.gz", "\n".join(lines) + "\n")
    assert data.load_imdb(tmp_path, "train") == expected_imdb("train")


def test_imdb_official_folder_and_tarball(tmp_path):
    make_imdb_official(tmp_path / "dir")
    assert data.load_imdb(tmp_path / "dir", "train") == expected_imdb("train")
    assert data.load_imdb(tmp_path / "dir" / "aclImdb", "test") == expected_imdb("test")
    tar_path = tmp_path / "tar" / "aclImdb_v1.tar.gz"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "dir" / "aclImdb", arcname="aclImdb")
    got = data.load_imdb(tmp_path / "tar", "train")
    assert sorted(got) == sorted(expected_imdb("train"))
    assert sorted(data.load_imdb(tar_path, "test")) == expected_imdb("test")


def test_imdb_malformed_and_missing(tmp_path):
    write(tmp_path / "imdb" / "test.tsv", "0\tpos\t9\tfine\n1\tmaybe\t5\tbad label\n")
    with pytest.raises(data.DataFormatError, match=r"test\.tsv:2: expected"):
        data.load_imdb(tmp_path, "test")
    with pytest.raises(data.DataNotFoundError, match="ai.stanford.edu"):
        data.load_imdb(tmp_path / "nowhere", "train")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.tsv.gz").write_bytes(b"not gzip data")
    with pytest.raises(data.DataFormatError, match="cannot be read"):
        data.load_imdb(tmp_path / "bad", "train")


CONLL2000 = "Confidence NN B-NP\nin IN B-PP\nthe DT B-NP\npound NN I-NP\n\nIt PRP B-NP\n.. . O\n\n"


def test_conll2000(tmp_path):
    write(tmp_path / "conll2000" / "train.txt.gz", CONLL2000)
    sents = data.load_conll2000(tmp_path, "train")
    assert sents == [
        (
            ["Confidence", "in", "the", "pound"],
            ["NN", "IN", "DT", "NN"],
            ["B-NP", "B-PP", "B-NP", "I-NP"],
        ),
        (["It", ".."], ["PRP", "."], ["B-NP", "O"]),
    ]
    write(tmp_path / "bad.txt", "Confidence NN\n")
    with pytest.raises(data.DataFormatError, match=r"bad\.txt:1: expected 'WORD POS CHUNK'"):
        data.load_conll2000(tmp_path / "bad.txt", "train")
    with pytest.raises(data.DataNotFoundError, match="conll2000"):
        data.load_conll2000(tmp_path / "nowhere", "test")


CONLLU = (
    "# sent_id = 1\n# text = Don't go.\n"
    "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_\n"
    "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_\n"
    "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n"
    "3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t3:conj\t_\n"
    "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_\n\n"
)


def test_conllu(tmp_path):
    write(tmp_path / "UD_English-EWT" / "en_ewt-ud-dev.conllu", CONLLU)
    assert data.load_conllu(tmp_path, "dev") == [
        (["Do", "n't", "go", "."], ["AUX", "PART", "VERB", "PUNCT"])
    ]
    write(tmp_path / "x" / "en_ewt-ud-dev.conllu", "1\tDo\tdo\tAUX\n")
    with pytest.raises(data.DataFormatError, match=r"conllu:1: expected 10 TAB-separated"):
        data.load_conllu(tmp_path / "x", "dev")


def test_multi30k(tmp_path):
    write(tmp_path / "multi30k" / "val.de.gz", "Ein Hund.\nZwei Katzen\n")
    write(tmp_path / "multi30k" / "val.en", "A dog.\nTwo cats\n")
    assert data.load_multi30k(tmp_path, "val") == [
        ("Ein Hund.", "A dog."),
        ("Zwei Katzen", "Two cats"),
    ]
    write(tmp_path / "multi30k" / "test_2016_flickr.de", "Ein Hund.\nZwei Katzen\n")
    write(tmp_path / "multi30k" / "test_2016_flickr.en", "A dog.\n")
    with pytest.raises(data.DataFormatError, match="not parallel"):
        data.load_multi30k(tmp_path, "test_2016_flickr")
    write(tmp_path / "multi30k" / "train.de", "Ein Hund.\n\n")
    write(tmp_path / "multi30k" / "train.en", "A dog.\nx\n")
    with pytest.raises(data.DataFormatError, match=r"train\.de:2: empty line"):
        data.load_multi30k(tmp_path, "train")
    with pytest.raises(data.DataNotFoundError, match="github.com/multi30k"):
        data.load_multi30k(tmp_path / "nowhere", "train")


def reuters_story(newid: int, lewis: str, title: str | None, body: str | None) -> str:
    """One <REUTERS> element as the distribution writes it (control-character entities too)."""
    text = f"<TITLE>{title}</TITLE>" if title is not None else ""
    if body is not None:
        text += f"\n<DATELINE>    NEW YORK, March 2 - </DATELINE><BODY>{body}\n Reuter\n&#3;</BODY>"
    return (
        f'<REUTERS TOPICS="NO" LEWISSPLIT="{lewis}" CGISPLIT="TRAINING-SET" OLDID="1" '
        f'NEWID="{newid}">\n<DATE>2-MAR-1987</DATE>\n<TEXT>&#2;\n{text}</TEXT>\n</REUTERS>\n'
    )


def make_reuters(folder: Path, extra: str = "") -> Path:
    """The 22 reut2-NNN.sgm files: two TRAIN and one TEST story with TITLE and BODY, one TRAIN
    story without BODY, a NOT-USED one in each file; the 0xFC byte of the real reut2-017.sgm."""
    folder.mkdir(parents=True, exist_ok=True)
    head = '<!DOCTYPE lewis SYSTEM "lewis.dtd">\n'
    files = {
        n: head + reuters_story(100 + i, "NOT-USED", "UNUSED", "Unused.")
        for i, n in enumerate(data.REUTERS_FILES)
    }
    files["reut2-000.sgm"] += reuters_story(
        2, "TRAIN", "AT&amp;T &lt;T> SETS 1ST QTR DIVIDEND", "AT and T said it set.\n  More."
    )
    files["reut2-000.sgm"] += reuters_story(1, "TRAIN", "No body here", None)
    files["reut2-017.sgm"] += reuters_story(
        7, "TRAIN", "MUNICH RE UP", "M\xfcnchener Re profit rose."
    )
    files["reut2-021.sgm"] += reuters_story(9, "TEST", "Mixed Case Headline", "Story. Two.")
    files["reut2-021.sgm"] += extra
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("latin-1"))
    return folder


def test_reuters_folder_and_tarball(tmp_path):
    folder = make_reuters(tmp_path / "dir")
    got = data.load_reuters(folder, dev_size=1)
    assert got == {
        "train": [(2, "at&t <t> sets 1st qtr dividend", "AT and T said it set.\n  More.")],
        "dev": [(7, "munich re up", "M\xfcnchener Re profit rose.")],
        "test": [(9, "Mixed Case Headline", "Story. Two.")],  # not all capitals: kept
    }
    tar_path = tmp_path / "reuters21578.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)  # no folder inside, as distributed
    assert data.load_reuters(tar_path, dev_size=1) == got
    assert data.load_reuters(tmp_path, dev_size=1) == got  # finds the tarball in a folder


def test_reuters_malformed_and_missing(tmp_path):
    bad = reuters_story(10, "TEST", "T", "B").replace("</REUTERS>", "")
    make_reuters(tmp_path / "a", extra=bad)
    line = 1 + (tmp_path / "a" / "reut2-021.sgm").read_text("latin-1").count("\n", 0, -len(bad))
    with pytest.raises(data.DataFormatError, match=rf"reut2-021\.sgm:{line}: expected this "):
        data.load_reuters(tmp_path / "a", dev_size=1)
    make_reuters(tmp_path / "b", extra=reuters_story(11, "MAYBE", "T", "B"))
    with pytest.raises(data.DataFormatError, match=r"reut2-021\.sgm:\d+: expected <REUTERS> with"):
        data.load_reuters(tmp_path / "b", dev_size=1)
    make_reuters(tmp_path / "c", extra='<REUTERS LEWISSPLIT="TEST" NEWID="12"><TITLE>x')
    with pytest.raises(data.DataFormatError, match=r"reut2-021\.sgm:\d+: expected this <REUTERS>"):
        data.load_reuters(tmp_path / "c", dev_size=1)
    make_reuters(tmp_path / "d")
    (tmp_path / "d" / "reut2-013.sgm").unlink()
    with pytest.raises(data.DataNotFoundError, match=r"missing reut2-013\.sgm"):
        data.load_reuters(tmp_path / "d", dev_size=1)
    with pytest.raises(data.DataNotFoundError, match="reuters21578.tar.gz"):
        data.load_reuters(tmp_path / "nowhere")


def test_news_lead_and_tokens():
    body = "Acme Corp. said on Feb. 26 its U.S. unit will pay 1,750 dlrs. Not this.\n    Nor this."
    assert data.news_lead(body) == "Acme Corp. said on Feb. 26 its U.S. unit will pay 1,750 dlrs."
    assert data.news_lead("Shr 12 cts vs 10 cts\n    Net 1.2 mln") == "Shr 12 cts vs 10 cts"
    assert data.news_tokenize("U.S. <ACME> paid 5.93 mln, said.") == [
        "u.s.", "<", "acme", ">", "paid", "5.93", "mln", ",", "said", ".",
    ]  # fmt: skip


def test_rouge_f1_hand_example():
    # ref 'police kill the gunman' vs hyp 'police killed the gunman' (stemmed: kill = killed):
    # all 4 unigrams match; bigrams: 'police kill', 'kill the', 'the gunman' all match.
    got = rouge_f1(["police kill the gunman", "a b c d"], ["police killed the gunman", "a c"])
    # second pair: R1 P=2/2 R=2/4 F=2/3; R2 no common bigram; RL LCS 'a c' = R1.
    assert got["rouge1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert got["rouge2"] == pytest.approx(100 * (1 + 0) / 2)
    assert got["rougeL"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_cosine_schedule_warms_up_and_decays_to_zero():
    model = nn.Linear(2, 1)
    args = common.argparse.Namespace(
        optimizer="adamw", weight_decay=0.1, lr=1.0, schedule="cosine", warmup=2, epochs=2,
        max_steps=3,
    )  # fmt: skip
    opt = common.make_optimizer(model, args)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # weight, bias
    task = common.Task("t", None, None, lambda epoch: [0] * 10, None, None, "d", "t")
    sched = common.make_schedule(opt, task, args)
    lrs = []
    for _ in range(6):  # 2 epochs of --max-steps 3
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0]) and lrs[3] < lrs[2]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_rnn_converts_or_says_it_runs_torch(capsys):
    import fused_rnn

    model = common.apply_backend(nn.Sequential(nn.RNN(3, 4), nn.LSTM(4, 4)), "reference")
    assert type(model[1]) is not nn.LSTM  # swapped
    out = capsys.readouterr().out
    if hasattr(fused_rnn, "RNN") and type(model[0]) is not nn.RNN:
        assert isinstance(model[0], fused_rnn.RNN) and "nn.RNN" not in out
    else:
        assert type(model[0]) is nn.RNN and "no drop-in for nn.RNN: it runs as torch's" in out


def test_mt_tokenize_roundtrip():
    text = "A man's dog, in a t-shirt (red), runs."
    toks = data.mt_tokenize(text)
    assert toks == [
        "A",
        "man's",
        "dog",
        ",",
        "in",
        "a",
        "t",
        "-",
        "shirt",
        "(",
        "red",
        ")",
        ",",
        "runs",
        ".",
    ]
    assert data.mt_detokenize(toks) == "A man's dog, in a t - shirt (red), runs."


def test_vocab_and_batching():
    v = data.Vocab.build([["b", "a", "b"], ["c", "b", "a"]], min_freq=2, specials=(data.BOS,))
    assert v.itos == ["<pad>", "<unk>", "<s>", "b", "a"]
    assert v.encode(["a", "zzz"]) == [4, 1] and v.decode([3, 4]) == ["b", "a"]
    ids, lengths = data.pad_batch([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    import random

    lens = [random.Random(0).randint(1, 50) for _ in range(1000)]
    batches = data.bucket_batches(lens, 32, random.Random(1), pool=4)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    ordered = data.bucket_batches(lens, 32, None)
    flat = [lens[i] for b in ordered for i in b]
    assert flat == sorted(flat)


# ---------------------------------------------------------------------------------------------
# conlleval-style F1 on a hand-checked example


def test_chunk_spans_follow_conlleval():
    # I- after O opens a chunk; I- of another type closes the open one and opens its own.
    tags = ["B-NP", "I-NP", "O", "I-VP", "I-VP", "I-NP", "B-NP", "B-NP"]
    assert chunk_spans(tags) == [
        ("NP", 0, 2),
        ("VP", 3, 5),
        ("NP", 5, 6),
        ("NP", 6, 7),
        ("NP", 7, 8),
    ]


def test_chunk_f1_hand_example():
    gold = [["B-NP", "I-NP", "B-VP", "B-NP", "I-NP", "O"], ["B-PP", "B-NP"]]
    pred = [["B-NP", "I-NP", "B-VP", "B-NP", "B-NP", "O"], ["B-PP", "I-PP"]]
    # gold chunks: NP(0,2) VP(2,3) NP(3,5) | PP(0,1) NP(1,2)               -> 5
    # pred chunks: NP(0,2) VP(2,3) NP(3,4) NP(4,5) | PP(0,2)               -> 5
    # correct: NP(0,2), VP(2,3)                                             -> 2
    got = chunk_f1(gold, pred)
    assert got["precision"] == pytest.approx(40.0)
    assert got["recall"] == pytest.approx(40.0)
    assert got["f1"] == pytest.approx(40.0)
    assert token_accuracy(gold, pred) == pytest.approx(100 * 6 / 8)
    assert chunk_f1(gold, gold)["f1"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="not an IOB"):
        chunk_spans(["X-NP"])


# ---------------------------------------------------------------------------------------------
# Smoke runs on ../shared/data

SMOKES = {
    "imdb": (imdb_sentiment, []),
    "imdb_rnn": (imdb_sentiment, ["--cell", "rnn"]),
    "headlines": (headlines, []),
    "upos": (tagging, ["--task", "upos"]),
    "chunk": (tagging, ["--task", "chunk"]),
    "seq2seq": (seq2seq, []),
}
RNN_TYPES = (nn.RNN, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)


@needs_shared
@pytest.mark.parametrize("name", list(SMOKES))
def test_smoke_fused_backend_and_checkpoint(name, tmp_path):
    """--smoke with the fused modules (reference backend) trains, scores, takes under a minute
    of CPU time, and its checkpoint loads strictly into a plain torch model."""
    module, extra = SMOKES[name]
    ckpt = tmp_path / "model.pt"
    # CPU seconds, not wall time: the bound is on the work done, which other load on the
    # machine does not change (wall time on a shared 2-core box varies several-fold).
    t0 = time.process_time()
    summary = module.main(
        [
            *extra,
            "--smoke",
            "--backend",
            "reference",
            "--no-progress",
            "--device",
            "cpu",
            "--checkpoint",
            str(ckpt),
        ]
    )
    elapsed = time.process_time() - t0
    assert elapsed < 60, f"{name} --smoke took {elapsed:.1f} CPU seconds"
    assert summary["backend"] == "reference" and len(summary["sec_per_epoch"]) == 1
    test = summary["test"]
    assert 0.0 <= test["score"] <= 100.0 and all(v == v for v in test.values())  # no NaN

    saved = common.load_checkpoint(ckpt)
    model_cls = {
        "imdb": imdb_sentiment.SentimentRNN,
        "imdb_rnn": imdb_sentiment.SentimentRNN,
        "headlines": headlines.PointerSeq2Seq,
        "upos": tagging.Tagger,
        "chunk": tagging.Tagger,
        "seq2seq": seq2seq.Seq2Seq,
    }[name]
    model = model_cls(**saved["config"])
    model.load_state_dict(saved["state_dict"], strict=True)
    rnns = [m for m in model.modules() if isinstance(m, RNN_TYPES)]
    assert rnns and all(type(m) in RNN_TYPES for m in rnns)  # exactly torch's classes
    # The weights are the trained ones, not the fresh initialisation.
    fresh = model_cls(**saved["config"])
    key = next(k for k in saved["state_dict"] if "weight_hh" in k)
    assert not torch.equal(fresh.state_dict()[key], model.state_dict()[key])


@needs_shared
@pytest.mark.parametrize(
    "name,extra",
    [
        ("upos", ["--task", "upos", "--dropout", "0", "--word-dropout", "0"]),
        ("seq2seq", []),  # single-layer GRU + GRUCell: no dropout inside the recurrent modules
    ],
)
def test_compare_tracks_torch(name, extra):
    """--compare: same seed, same batches; without dropout inside the recurrent modules the
    fused (reference backend) run follows torch's loss curve to fp32 rounding."""
    module = SMOKES[name][0]
    out = module.main(
        [
            *extra,
            "--smoke",
            "--compare",
            "--backend",
            "reference",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    a, b = out["runs"]["torch"]["losses"], out["runs"]["reference"]["losses"]
    assert len(a) == len(b) >= 4
    assert a[-1] < a[0]  # it is training
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_missing_data_message(tmp_path, capsys):
    with pytest.raises(SystemExit, match="ai.stanford.edu"):
        imdb_sentiment.main(["--smoke", "--backend", "torch", "--data", str(tmp_path)])
    write(tmp_path / "tagging" / "ud_english_ewt" / "en_ewt-ud-train.conllu", "1\tbroken\n")
    with pytest.raises(SystemExit, match=r"en_ewt-ud-train\.conllu:1: expected 10"):
        tagging.main(["--smoke", "--backend", "torch", "--data", str(tmp_path)])


def test_unknown_backend_is_a_clear_error():
    import fused_rnn

    model = common.apply_backend(nn.Sequential(nn.LSTM(3, 4)), "no-such-backend")
    with pytest.raises(fused_rnn.BackendUnavailableError, match="unknown fused_rnn backend"):
        model(torch.zeros(2, 1, 3))
