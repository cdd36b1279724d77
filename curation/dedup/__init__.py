"""Near-duplicate detection for the curation stages `minhash_dedup` and `simhash_sentence_dedup`.

    shingles.py       normalised words and word n-gram hashes, vectorised over Arrow batches
    minhash.py        datasketch-compatible MinHash signatures, LSH band/row choice, band keys
    minhash_blocks.py MinHash dedup's per-block steps (signatures ... verdicts), shared with post-training
    sentences.py      the sentence splitter (character spans)
    simhash_index.py  sentence SimHash, permuted-block buckets, near repeats inside a bucket
    components.py     connected components on Ray Data (large-star / small-star)
    shuffle.py        hash-partitioned map, cogroup (join), broadcast lookup on Ray Data
    report.py         summaries for stats.json (cluster histograms, rates, peak memory)
    evaluate.py       labelled near-duplicate sets and precision/recall of both stages
"""
