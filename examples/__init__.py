"""End-to-end examples of fused_rnn on real data (IMDB, UD EWT / CoNLL-2000, Multi30k,
Reuters-21578 headlines).

Run them as scripts (``python examples/tagging.py --help``) or as modules
(``python -m examples.tagging``); tests import their ``main(argv)``.
"""
