"""Compositions that need both halves: curation runs feeding training runs (the data ablation)."""
