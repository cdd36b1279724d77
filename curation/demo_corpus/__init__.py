"""An offline demo corpus: real text from this machine plus seeded, recorded injections.

`build_demo_corpus(out_dir, seed)` writes

    out_dir/corpus/<domain>-NNNNN.jsonl.gz   one JSON object a line: id, text, url, domain, metadata
    out_dir/truth.json                       every injection, so stages can be scored (P/R)

and returns a summary (documents, bytes, files per domain; injections per kind; seconds).
`build_reference_texts` then writes out_dir/reference/<domain>.jsonl (KenLM training text) and
`build_heldout_texts` out_dir/holdout/<domain>.jsonl (the ablation's held-out sources): sources
the corpus does not read, the two disjoint (see "Held-out text" below).

Sources (real text, read in sorted order: same machine image + seed = same bytes out)
- code:  the standard library's `.py` files (no test folders, none over 200 KB).
- books: `pydoc_data.topics` (the Python reference, one doc per topic) and the info manuals
         in /usr/share/info (coreutils, sed, grep, ...; one doc per node).
- web:   package READMEs (`*.dist-info/METADATA` on the interpreter's site-packages),
         Debian `copyright` files and `/usr/share/common-licenses`. Many packages ship the
         same licence text: those are *real* exact/near duplicates and are kept.
- math:  the docstrings of `mpmath` and `sympy` (one doc per module), when installed.
- wiki:  nothing on this machine is wiki text, so the corpus has no wiki domain.
Only when these give fewer than `min_bytes` of text, top-up sources are read in order until
the total is reached: Debian README/NEWS files (web), standard-library docstrings (books),
other site-packages `.py` files (code). Never random text.

Held-out text (web, code, books, math; up to 150 docs each, at most 6 from one folder)
- web, code: the reference sources (Debian READMEs, site-packages code) split by a seeded hash
  of the text, 1 in 2 held out (`is_heldout`), the rest reference: disjoint by construction.
- books: Debian packages' prose docs (/usr/share/doc/**/*.txt|md|rst, not READMEs, changelogs,
  licences); the books reference, stdlib docstrings, is inside the corpus's stdlib code.
- math: docstrings of scipy's and numpy's math subpackages (no source reads them: the code
  reference and top-up skip those packages). Math has no reference text.
A candidate whose text or any line of >= 40 characters (normalised) is also in the corpus is
dropped, and so is a repeat of a held-out text (whitespace and case aside); the summary counts those (`shared_with_corpus`) and says if the corpus read the same
source (`corpus_reads_source`, a small machine's top-up) or a held-out text is in the reference.

Ids are `<domain>-<source>-NNNNNN` (`code-stdlib-000123`); injected docs use the sources
`neardup`, `urlvariant` and `lang`. `metadata` holds source, path, license (a hint, may be
""), topic, and an `injection` object on every injected or planted doc.

Injections (`random.Random` seeded from `seed`; counts scale with the corpus, ~3-5% of docs)
- near_duplicates: copies of existing docs under new ids (and a mirror URL), at edit levels
  `exact` (same text), `light` (2-5% of words edited: substitutions, deletions, insertions,
  case and whitespace changes, scattered) and `heavy` (20-30% of words edited, in runs of
  2-8 words, as when a paragraph is rewritten). Each copy records its word-5-gram Jaccard.
- not_duplicates: pairs of different docs of the same domain and topic (same stdlib package,
  same manual, ...) with word-5-gram Jaccard < 0.1: hard negatives for dedup.
- repeated_sentences: boilerplate sentences (cookie banners, "All rights reserved.", share
  lines) planted as their own paragraph in many web/books docs, each occurrence's span kept.
- url_variants: exact copies of docs whose URL differs only by scheme (http), host case,
  an explicit default port, a trailing slash, a fragment, or tracking parameters (`utm_*`,
  `fbclid`, `gclid`); `canonical_url` is `curation.urls.canonicalize_url` of the original.
- pii: fake but well-formed emails, phone numbers (US and 8 other countries; all valid for the
  `phonenumbers` library), US SSNs, credit card numbers (Luhn-valid), IPv4 addresses, IBANs
  (mod-97-valid) and person names, planted in sentences in web/books docs. Types use
  Presidio's entity names.
- languages: 30 short paragraphs in de, fr, es, it, pt, nl, ru, zh, ja (domain web).

truth.json (keys sorted):
    near_duplicates   [{group, original, copies: [{id, level, edit_fraction, word_5gram_jaccard}]}]
    not_duplicates    [{a, b, domain, topic, word_5gram_jaccard}]
    repeated_sentences [{sentence, occurrences: [{doc_id, start, end}]}]
    url_variants      [{group, original_id, original_url, canonical_url, variants: [{id, url, kinds}]}]
    pii               [{doc_id, type, value, start, end, detail}]   detail: phone region, card brand,
                                                                    IBAN country, or ""
    languages         [{id, lang}]
    exact_duplicate_groups [[id, ...]]
    seed, spans
Spans are `[start, end)` offsets into the document's `text` as a Python str (code points).
Planted docs are never copied, so a planted sentence or PII item occurs only where recorded;
the real texts do contain their own e-mail addresses (package authors, Debian maintainers)
and their own repeated lines, which truth.json does not list. `exact_duplicate_groups` lists
every set of docs with identical text, natural or injected.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

from curation.dedup.similarity import normalise_line
from curation.demo_corpus.injections import inject
from curation.demo_corpus.sources import (
    DOMAINS,
    HELDOUT_SOURCES,
    MAX_FILE_TEXT_BYTES,
    PRIMARY_SOURCES,
    REFERENCE_SOURCES,
    TOPUP_SOURCES,
    Doc,
    is_heldout,
    read_source,
)

HELDOUT_DOCS = 150  # per domain: the demo ablation draws docs_per_domain x oversample of them
# Sources are read in sorted order: without a cap the first big folder (git's 140 release notes,
# scipy.optimize's 60 modules) would be a domain's whole held-out set.
HELDOUT_DOCS_PER_FOLDER = 6

# ----------------------------------------------------------------------------- writing

def _exact_groups(docs: list[Doc]) -> list[list[str]]:
    by_hash: dict[bytes, list[str]] = {}
    for d in docs:
        by_hash.setdefault(hashlib.sha256(d.text.encode()).digest(), []).append(d.id)
    return sorted(sorted(ids) for ids in by_hash.values() if len(ids) > 1)


def _write_gzip(path: Path, data: bytes) -> None:
    # mtime=0 and no file name in the header: equal content gives equal files.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write(data)


def _write_domain(corpus_dir: Path, domain: str, docs: list[Doc]) -> list[str]:
    files, lines, size = [], [], 0

    def flush() -> None:
        name = f"{domain}-{len(files):05d}.jsonl.gz"
        _write_gzip(corpus_dir / name, "".join(lines).encode())
        files.append(name)

    for d in docs:
        nbytes = len(d.text.encode())
        if lines and size + nbytes > MAX_FILE_TEXT_BYTES:
            flush()
            lines, size = [], 0
        lines.append(json.dumps(d.record(), ensure_ascii=False) + "\n")
        size += nbytes
    if lines:
        flush()
    return files


def build_demo_corpus(out_dir: str | Path, seed: int = 0, min_bytes: int = 20_000_000,
                      max_docs_per_source: int | None = None) -> dict[str, Any]:
    """Build the corpus and truth.json under `out_dir`; returns the summary.

    `max_docs_per_source` caps every source (primary and top-up) for small, fast builds.
    Earlier `*.jsonl.gz` files in `out_dir/corpus` are removed: the folder is this builder's.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    corpus_dir = out / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for old in corpus_dir.glob("*.jsonl.gz"):
        old.unlink()

    base: list[Doc] = []
    per_source: dict[str, dict[str, int]] = {}
    total = 0
    for src in PRIMARY_SOURCES + TOPUP_SOURCES:
        is_topup = src in TOPUP_SOURCES
        if is_topup and total >= min_bytes:
            break
        docs = read_source(src, max_docs_per_source, min_bytes - total if is_topup else None)
        nbytes = sum(len(d.text.encode()) for d in docs)
        total += nbytes
        base.extend(docs)
        per_source[src.name] = {"documents": len(docs), "bytes": nbytes, "topup": int(is_topup)}

    docs, truth = inject(base, seed)
    truth = {"seed": seed, "spans": "[start, end) offsets into text as a Python str (code points)",
             **truth, "exact_duplicate_groups": _exact_groups(docs)}

    order_rng = random.Random(f"{seed}:order")
    files: dict[str, list[str]] = {}
    documents: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for domain in DOMAINS:
        mine = [d for d in docs if d.domain == domain]
        if not mine:
            continue
        order_rng.shuffle(mine)  # copies land away from their originals, in other files
        files[domain] = _write_domain(corpus_dir, domain, mine)
        documents[domain] = len(mine)
        nbytes[domain] = sum(len(d.text.encode()) for d in mine)
    (out / "truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                    encoding="utf-8")

    injections = {
        "near_duplicate_copies": sum(len(g["copies"]) for g in truth["near_duplicates"]),
        "url_variant_copies": sum(len(g["variants"]) for g in truth["url_variants"]),
        "not_duplicate_pairs": len(truth["not_duplicates"]),
        "repeated_sentence_occurrences": sum(len(s["occurrences"]) for s in truth["repeated_sentences"]),
        "pii_items": len(truth["pii"]),
        "language_docs": len(truth["languages"]),
    }
    return {
        "seed": seed,
        "documents": documents,
        "bytes": nbytes,
        "files": files,
        "sources": per_source,
        "injections": injections,
        "total_documents": len(docs),
        "total_bytes": sum(nbytes.values()),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _shared_with_reference(src_name: str) -> bool:
    return any(src_name == r.name for r in REFERENCE_SOURCES)


def build_reference_texts(out_dir: str | Path, max_bytes_per_domain: int = 3_000_000, seed: int = 0) -> dict[str, Any]:
    """Write `out_dir/reference/<domain>.jsonl` (one `{"text": ...}` a line) for LM training.
    A source that also gives held-out text (`HELDOUT_SOURCES`) gives only its reference side of
    the seeded split: the perplexity filter is never trained on the test set."""
    ref_dir = Path(out_dir) / "reference"
    ref_dir.mkdir(parents=True, exist_ok=True)
    heldout_names = {h.name for h in HELDOUT_SOURCES}
    summary: dict[str, Any] = {}
    for src in REFERENCE_SOURCES:
        keep = (lambda text, _path: not is_heldout(seed, text)) if src.name in heldout_names else None
        docs = read_source(src, None, max_bytes_per_domain, keep)
        path = ref_dir / f"{src.domain}.jsonl"
        path.write_text("".join(json.dumps({"text": d.text}, ensure_ascii=False) + "\n" for d in docs),
                        encoding="utf-8")
        summary[src.domain] = {"source": src.name, "documents": len(docs), "path": str(path),
                               "bytes": sum(len(d.text.encode()) for d in docs)}
    return summary


# A held-out document sharing one line this long (normalised) with the corpus is dropped: shorter
# ones are idioms (`return result`, `Parameters`) rather than shared text.
SHARED_LINE_CHARS = 40


def _long_lines(text: str) -> set[str]:
    """Lines of at least SHARED_LINE_CHARS, whitespace runs as one space, casefolded."""
    return {norm for line in text.split("\n") if len(norm := normalise_line(line)) >= SHARED_LINE_CHARS}


def _corpus_texts(corpus_dir: Path) -> tuple[set[bytes], set[str], set[str]]:
    """(sha256 of every corpus text, its long lines, the sources it read) from the written corpus."""
    hashes, lines, sources = set(), set(), set()
    for path in sorted(corpus_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                hashes.add(hashlib.sha256(record["text"].encode()).digest())
                lines |= _long_lines(record["text"])
                sources.add(record["metadata"]["source"])
    return hashes, lines, sources


def build_heldout_texts(out_dir: str | Path, seed: int = 0, max_docs_per_domain: int = HELDOUT_DOCS) -> dict[str, Any]:
    """Write `out_dir/holdout/<domain>.jsonl` (corpus records) for the ablation's `holdout.sources`:
    text the corpus (already written under `out_dir/corpus`) does not read and the reference text
    does not contain. A document whose text or any long line is also in the corpus is dropped and
    counted (`shared_with_corpus`); `corpus_reads_source` says when the corpus read the same
    source (top-up sources on a small machine); `in_reference` counts held-out texts also in
    `out_dir/reference/<domain>.jsonl` when written (0 by construction: a check, not a filter)."""
    out = Path(out_dir)
    corpus_hashes, corpus_lines, corpus_sources = _corpus_texts(out / "corpus")
    held_dir = out / "holdout"
    held_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for src in HELDOUT_SOURCES:
        shared = {"count": 0}
        per_folder: dict[str, int] = {}
        seen: set[bytes] = set()  # normalised texts held out already (Debian ships one README per binary package)

        def keep(text: str, path: str, split: bool = _shared_with_reference(src.name)) -> bool:
            if split and not is_heldout(seed, text):
                return False  # the reference side
            folder = str(Path(path.split("::")[0]).parent)
            normalised = hashlib.sha256(normalise_line(text).encode()).digest()
            if per_folder.get(folder, 0) >= HELDOUT_DOCS_PER_FOLDER or normalised in seen:
                return False
            if hashlib.sha256(text.encode()).digest() in corpus_hashes or not _long_lines(text).isdisjoint(corpus_lines):
                shared["count"] += 1
                return False
            per_folder[folder] = per_folder.get(folder, 0) + 1
            seen.add(normalised)
            return True

        docs = read_source(src, max_docs_per_domain, None, keep)
        reference = out / "reference" / f"{src.domain}.jsonl"
        reference_hashes = {hashlib.sha256(json.loads(line)["text"].encode()).digest()
                            for line in reference.read_text(encoding="utf-8").splitlines()} if reference.is_file() else set()
        path = held_dir / f"{src.domain}.jsonl"
        path.write_text("".join(json.dumps(d.record(), ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        summary[src.domain] = {"source": src.name, "documents": len(docs), "path": str(path),
                               "bytes": sum(len(d.text.encode()) for d in docs), "shared_with_corpus": shared["count"],
                               "corpus_reads_source": src.name in corpus_sources,
                               "in_reference": sum(hashlib.sha256(d.text.encode()).digest() in reference_hashes
                                                   for d in docs)}
    return summary
