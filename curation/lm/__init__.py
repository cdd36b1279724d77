"""N-gram language models for perplexity filtering (cc_net style).

- `tokens`: the one tokenisation used to train and to score (prose or code).
- `kneser_ney`: interpolated modified Kneser-Ney estimation, written as ARPA for KenLM.
- `train`: `train_lm`, a model per domain from a JSONL file of reference text.
- `perplexity`: cc_net's document perplexity with a loaded KenLM model.

Nothing here imports `kenlm` at import time.
"""

from curation.lm.train import train_lm

__all__ = ["train_lm"]
