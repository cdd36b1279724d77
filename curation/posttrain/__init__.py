"""Curation of post-training data: chat, preference and prompt records (contract.posttrain).

    read + validate -> exact_dedup -> near_dedup -> decontaminate -> pii
        |                |              |              |              |
        +----------------+--------------+--------------+--------------+--> rejects/<step>-*.parquet
    -> data/<kind>-<split>.jsonl, stats.json, posttrain_manifest.json (last)

    config.py        the run as validated data (`flywheel curate-posttrain CONFIG`)
    rows.py          one record in flight, and the read step (malformed / invalid / duplicate id)
    exact.py         one record per normalised conversation text (exact_dedup's key)
    near.py          MinHash + LSH near duplicates (minhash_dedup's per-block steps; signs kept)
    decontaminate.py word n-gram overlap with evaluation sets
    pii.py           Presidio redaction of every message / field (the pii stage's engine)
    run.py           the runner: accounting, rejects, curated files, manifest

Runs in one process, not on Ray: post-training sets are small (InstructGPT's SFT set had ~13k
prompts, its reward-model set ~33k), and Ray's start (~5-10 s here) and its per-shuffle costs
(~1 s each, curation/stages/minhash_dedup.py) would dominate. The steps call the same functions
the Ray stages call per block (key normalisation, signatures, banding, verification, components,
keeper choice, the PII engine), so a verdict means the same thing in both pipelines, and
stats.json and rejects/ have the pretraining run's format (`flywheel stats`, `flywheel inspect`).
"""
