"""Sequence lengths drawn from the real IMDB review-length distribution.

A review's length is its number of whitespace-separated tokens in the ``train.tsv.gz`` file of
the shared IMDB data (columns: id, label, rating, text; a few texts contain tabs). The data
directory defaults to ``../shared/data`` next to the repository root and can be changed with
``--data-dir`` or the ``FUSED_RNN_DATA`` environment variable.

Machines without the data (the GPU machine only receives the repository) fall back to
``imdb_length_quantiles.json``: 1001 quantiles of the same distribution, written from the TSV by
``python -m benchmarks.lengths --write-quantiles``, sampled by inverse CDF. Every result row
records which of the two sources its lengths came from.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
QUANTILES_FILE = Path(__file__).resolve().parent / "imdb_length_quantiles.json"
N_QUANTILES = 1001


def default_data_dir() -> Path:
    """``$FUSED_RNN_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("FUSED_RNN_DATA", "").strip()
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _train_file(data_dir: Path | str | None) -> Path:
    return (Path(data_dir or default_data_dir()) / "imdb" / "train.tsv.gz").resolve()


def review_lengths(data_dir: Path | str | None = None) -> torch.Tensor:
    """Token counts (int64, shape (N,)) of every training review, in file order.

    Raises FileNotFoundError naming the path when the TSV is absent.
    """
    # Resolve before caching, so that a changed $FUSED_RNN_DATA is honoured.
    return _read_lengths(_train_file(data_dir))


@lru_cache(maxsize=4)
def _read_lengths(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"IMDB training file not found: {path} (set --data-dir)")
    counts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 4:
                raise ValueError(f"{path}: expected id, label, rating, text; got {line[:80]!r}")
            # The text may itself contain tabs: everything after the third field is text.
            counts.append(len("\t".join(fields[3:]).split()))
    return torch.tensor(counts, dtype=torch.int64)


def quantiles_from(lengths: torch.Tensor) -> list[int]:
    """N_QUANTILES evenly spaced quantiles (0 to 1) of ``lengths`` (N,), rounded to ints."""
    q = torch.linspace(0, 1, N_QUANTILES, dtype=torch.float64)
    return [int(round(v)) for v in torch.quantile(lengths.double(), q).tolist()]


def sample_lengths(
    batch: int, max_len: int, seed: int, data_dir: Path | str | None = None
) -> tuple[torch.Tensor, str]:
    """``batch`` review lengths clipped to [1, max_len], reproducible from ``seed``.

    Returns (lengths int64 (batch,), source) where source is "imdb-train" when drawn from the
    TSV itself or "imdb-quantiles" when drawn from the committed quantile table.
    """
    if batch < 1 or max_len < 1:
        raise ValueError(f"batch and max_len must be >= 1, got {batch}, {max_len}")
    gen = torch.Generator().manual_seed(seed)
    try:
        pool = review_lengths(data_dir)
        picked = pool[torch.randint(len(pool), (batch,), generator=gen)]
        source = "imdb-train"
    except FileNotFoundError:
        quantiles = json.loads(QUANTILES_FILE.read_text())["quantiles"]
        table = torch.tensor(quantiles, dtype=torch.float64)
        # Inverse CDF: a uniform draw u picks the point between the two nearest quantiles.
        u = torch.rand(batch, generator=gen, dtype=torch.float64) * (len(table) - 1)
        lo = u.floor().long().clamp(max=len(table) - 2)
        picked = (table[lo] + (u - lo) * (table[lo + 1] - table[lo])).round().long()
        source = "imdb-quantiles"
    return picked.clamp(1, max_len), source


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="IMDB review-length statistics")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--write-quantiles", action="store_true", help=f"rewrite {QUANTILES_FILE.name}")
    args = ap.parse_args(argv)
    lengths = review_lengths(args.data_dir)
    q = quantiles_from(lengths)
    print(
        f"{len(lengths)} reviews: min {q[0]}, median {q[500]}, p90 {q[900]}, p99 {q[990]}, "
        f"max {q[-1]}, mean {lengths.double().mean():.1f} tokens"
    )
    if args.write_quantiles:
        payload = {
            "source": "imdb/train.tsv.gz, whitespace tokens per review",
            "n_reviews": len(lengths),
            "quantiles": q,
        }
        QUANTILES_FILE.write_text(json.dumps(payload) + "\n")
        print(f"wrote {QUANTILES_FILE}")


if __name__ == "__main__":
    main()
