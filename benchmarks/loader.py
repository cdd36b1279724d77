"""Tokens per second that one `ManifestDataset` worker delivers, from local and HTTP manifests.

    .venv/bin/python benchmarks/loader.py [--tokens 8000000] [--shard-tokens 2000000] [--seconds 3]

Data is made here, seeded: synthetic shards (uniform random ids, vocab 32000, uint16, ~300-token
documents). HTTP is the stdlib `http.server` on loopback, so the numbers are the loader's cost
(hashing, copying, positions), not a network's. Rows:
- local:      shards memory-mapped in place (page cache warm after the first pass);
- http cold:  an empty cache: shards are downloaded and sha256-verified as batches touch them;
- http warm:  a new dataset over the same cache (each shard re-verified once per process);
- prefetch:   download + verify of the whole dataset into an empty cache, MB/s.
A row's "first batch" is the latency of the first `next_batch` after the dataset is opened.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data.dataset import ManifestDataset  # noqa: E402
from training.data.synthetic import write_synthetic_dataset  # noqa: E402


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(root: Path) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def measure(manifest: str, seq_len: int, batch: int, seconds: float, cache: Path | None) -> tuple[float, float]:
    """(first-batch latency in s, tokens/s over `seconds` of next_batch calls, first included)."""
    ds = ManifestDataset(manifest, seq_len=seq_len, seed=0, cache_dir=cache)
    start = time.perf_counter()
    ds.next_batch(batch)
    first = time.perf_counter() - start
    steps = 1
    while time.perf_counter() - start < seconds:
        ds.next_batch(batch)
        steps += 1
    elapsed = time.perf_counter() - start
    ds.close()
    return first, steps * batch * seq_len / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8_000_000)
    parser.add_argument("--shard-tokens", type=int, default=2_000_000)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        manifest = write_synthetic_dataset(
            root / "ds", total_tokens=args.tokens, target_tokens=args.shard_tokens, seed=0
        )
        made = time.perf_counter() - t0
        dataset_mb = sum(p.stat().st_size for p in (root / "ds" / "shards").iterdir()) / 2**20
        print(f"dataset: {args.tokens / 1e6:.1f}M tokens, {dataset_mb:.1f} MiB in "
              f"{len(list((root / 'ds' / 'shards').glob('*.bin')))} shards, written in {made:.1f} s")
        httpd, base = serve(root)
        url = f"{base}/ds/manifest.json"
        try:
            print(f"\n{'source':<11} {'seq_len':>7} {'batch':>5} {'first batch':>12} {'tokens/s':>12}")
            for seq_len in args.seq_lens:
                cache = root / f"cache-{seq_len}"
                rows = [
                    ("local", str(manifest), None),
                    ("http cold", url, cache),
                    ("http warm", url, cache),
                ]
                for name, target, cache_dir in rows:
                    first, rate = measure(target, seq_len, args.batch, args.seconds, cache_dir)
                    print(f"{name:<11} {seq_len:>7} {args.batch:>5} {first * 1e3:>9.1f} ms {rate / 1e6:>9.2f} M")
            ds = ManifestDataset(url, seq_len=args.seq_lens[0], seed=0, cache_dir=root / "cache-prefetch")
            t0 = time.perf_counter()
            ds.prefetch()
            took = time.perf_counter() - t0
            print(f"\nprefetch over http (download + sha256, 4 threads): {dataset_mb / took:.0f} MiB/s "
                  f"({dataset_mb:.1f} MiB in {took:.2f} s)")
        finally:
            httpd.shutdown()


if __name__ == "__main__":
    main()
