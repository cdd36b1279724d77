"""MinHash kernel speed per core: signatures + LSH band keys, this tree against an earlier commit.

    .venv/bin/python benchmarks/minhash_kernel.py [--docs 30000] [--batch 1024] [--baseline bf0417d] [--markdown OUT]

The same texts (`benchmarks/realtext.py`'s real-text corpus, first --docs documents) go through
`MinHasher(num_perm=128, ngram=5).signatures`, in batches of --batch texts as the stage calls it
(`SIGNATURE_BATCH`), and `band_keys` (9 bands x 13 rows, the stage's choice at threshold 0.8)
of each code tree, in one process per tree, one core; CPU seconds
(`time.process_time`), best of --repeat. The earlier commit is checked out with `git worktree`
(default: main when issue 13 was filed, datasketch's affine32 scheme in numpy); this tree runs
both its schemes (rensa, the default, and datasketch). Signatures of one scheme are compared
with the baseline's: identical for datasketch, another scheme (and a versioned index) for rensa.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realtext import write_corpus  # noqa: E402
from curation.stages.minhash_dedup import SIGNATURE_BATCH  # noqa: E402

KERNEL = r'''
import glob, hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import pyarrow as pa
from curation.dedup.minhash import MinHasher, band_keys
texts = []
for path in sorted(glob.glob(sys.argv[2] + "/*.jsonl")):
    with open(path, encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
texts = pa.array(texts[: int(sys.argv[3])])
kw = {} if sys.argv[4] == "-" else {"scheme": sys.argv[4]}
hasher = MinHasher(num_perm=128, ngram=5, seed=1, **kw)
best = {"signatures": 1e9, "bands": 1e9}
for _ in range(int(sys.argv[5])):
    t0 = time.process_time()
    step = int(sys.argv[6]) or len(texts)
    sig = np.concatenate([hasher.signatures(texts.slice(i, step))[0] for i in range(0, len(texts), step)])
    t1 = time.process_time()
    band_keys(sig, 9, 13, 1)
    t2 = time.process_time()
    best = {"signatures": min(best["signatures"], t1 - t0), "bands": min(best["bands"], t2 - t1)}
mb = sum(len(t.as_py().encode()) for t in texts) / 1e6
print(json.dumps({**best, "docs": len(texts), "mb": mb, "sha": hashlib.sha256(sig.tobytes()).hexdigest()[:16]}))
'''


def run(tree: Path, corpus: Path, docs: int, scheme: str, repeat: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", KERNEL, str(tree), str(corpus), str(docs), scheme, str(repeat), str(batch)],
                         check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--baseline", default="bf0417d")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=SIGNATURE_BATCH,
                    help="texts per signatures() call, the stage's batch (0: all at once)")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    corpus = ROOT / "build" / "bench" / f"realtext-{args.docs}"
    if not corpus.exists():
        write_corpus(corpus, args.docs, seed=0)
    with tempfile.TemporaryDirectory(prefix="minhash-baseline-") as wt:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", wt, args.baseline],
                       check=True, capture_output=True)  # fmt: skip
        try:
            rows = [(f"{args.baseline} (datasketch affine32, numpy)", run(Path(wt), corpus, args.docs, "-", args.repeat, args.batch))]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", wt], check=False)
    for scheme in ("datasketch", "rensa"):
        rows.append((f"this tree, scheme {scheme}", run(ROOT, corpus, args.docs, scheme, args.repeat, args.batch)))
    base = rows[0][1]
    base_total = base["signatures"] + base["bands"]
    lines = [f"# MinHash kernel (`benchmarks/minhash_kernel.py --docs {args.docs}`)", "",
             f"{base['docs']:,} real-text documents ({base['mb']:.0f} MB), 128 permutations, word 5-grams, 9 x 13 "
             "bands; " + (f"signatures in batches of {args.batch:,} texts (the stage's batch), " if args.batch else "all texts in one call, ")
             + "band keys over all; CPU seconds of one process (one core), best of " + str(args.repeat) + ".", "",
             "| kernel | signatures s | band keys s | docs/s per core | MB/s per core | vs baseline | signatures |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in rows:
        total = r["signatures"] + r["bands"]
        same = "baseline" if r is base else ("identical" if r["sha"] == base["sha"] else "another scheme")
        lines.append(f"| {name} | {r['signatures']:.2f} | {r['bands']:.2f} | {r['docs'] / total:,.0f} | "
                     f"{r['mb'] / total:.1f} | {base_total / total:.2f}x | {same} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
