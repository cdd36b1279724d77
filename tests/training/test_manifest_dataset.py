"""ManifestDataset: windows and positions, the global order and its resumption at another world
size, and remote reading over a real loopback HTTP server (download, resume, refetch)."""

from __future__ import annotations

import pickle
import re
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from contract.manifest import build_manifest, parse_manifest, write_manifest
from contract.shards import ShardWriter, sha256_file
from training.data.dataset import ManifestDataset, ShardError
from training.data.fetch import CorruptFileError, Fetcher, FetchError, ShardCache
from training.data.synthetic import write_synthetic_dataset
from training.data.validate import validate_manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("ds"), total_tokens=30_000, target_tokens=7_000, seed=5)


def stream_of(manifest_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole token stream and each token's position in its document, computed naively."""
    manifest = parse_manifest(manifest_path.read_bytes())
    tokens, positions = [], []
    position = 0
    for shard in manifest.shards:
        t = np.fromfile(manifest_path.parent / shard.path, dtype="<u2")
        starts = set(np.fromfile(manifest_path.parent / shard.index_path, dtype="<u8")[:-1].tolist())
        if shard.continues_previous:
            starts.discard(0)
        for k in range(len(t)):
            position = 0 if k in starts else position + 1
            positions.append(position)
        tokens.append(t)
    return np.concatenate(tokens).astype(np.int64), np.array(positions)


# -- windows and positions ------------------------------------------------------------------------


def test_windows_are_the_stream_cut_every_seq_len(dataset):
    tokens, positions = stream_of(dataset)
    ds = ManifestDataset(dataset, seq_len=1000, seed=0)  # windows span shard boundaries
    assert ds.sequences_per_epoch == (len(tokens) - 1) // 1000
    for i in range(ds.sequences_per_epoch):
        window_tokens, window_positions = ds.window(i)
        assert np.array_equal(window_tokens, tokens[i * 1000 : i * 1000 + 1001])
        assert np.array_equal(window_positions, positions[i * 1000 : i * 1000 + 1001])


def test_positions_continue_across_a_document_cut_between_shards(tmp_path):
    docs = [np.arange(1, 31), np.arange(1, 251), np.arange(1, 21)]  # the middle one spans 3 shards
    with ShardWriter(tmp_path / "shards", "uint16", target_tokens=100) as writer:
        for doc in docs:
            writer.add(doc, "web")
    (tmp_path / "tok").write_text("t")
    manifest = build_manifest(
        manifest_path=tmp_path / "manifest.json", dataset_id="cut", dtype="uint16",
        tokenizer={"path": "tok", "sha256": sha256_file(tmp_path / "tok"), "vocab_size": 300,
                   "special_ids": {"bos": None, "eos": None, "pad": None}},
        records=writer.records, mixture={}, provenance={
            "inputs": [], "config": {}, "config_sha256": "0" * 64, "stages": [],
            "created_at": "2026-01-01T00:00:00Z", "flywheel_version": "test"})
    write_manifest(tmp_path / "manifest.json", manifest)
    assert manifest.totals.documents == 3
    ds = ManifestDataset(tmp_path / "manifest.json", seq_len=299, seed=0)
    tokens, positions = ds.window(0)
    assert np.array_equal(tokens, np.concatenate(docs))
    assert np.array_equal(positions, np.concatenate([np.arange(30), np.arange(250), np.arange(20)]))
    batch = ds.next_batch(1)
    assert batch.segment_ids().tolist() == [[1] * 30 + [2] * 250 + [3] * 20]
    assert np.array_equal(batch.inputs, tokens[None, :-1]) and np.array_equal(batch.targets, tokens[None, 1:])


# -- order, ranks and resumption -----------------------------------------------------------------


def test_epoch_order_is_the_seeded_permutation(dataset):
    ds = ManifestDataset(dataset, seq_len=100, seed=7)
    s = ds.sequences_per_epoch
    first = ds.next_batch(s)
    assert first.epochs.tolist() == [0] * s
    assert np.array_equal(first.sequences, np.random.default_rng([7, 0]).permutation(s))
    second = ds.next_batch(s)
    assert second.epochs.tolist() == [1] * s and sorted(second.sequences.tolist()) == list(range(s))
    assert not np.array_equal(first.sequences, second.sequences)
    assert ds.state_dict()["consumed"] == 2 * s and ds.state_dict()["epoch"] == 2
    other_seed = ManifestDataset(dataset, seq_len=100, seed=8).next_batch(s)
    assert not np.array_equal(first.sequences, other_seed.sequences)


def test_ranks_split_each_global_batch(dataset):
    single = ManifestDataset(dataset, seq_len=64, seed=1).next_batch(12)
    shares = [ManifestDataset(dataset, seq_len=64, seed=1, rank=r, world_size=3).next_batch(4) for r in range(3)]
    for r, share in enumerate(shares):
        assert np.array_equal(share.sequences, single.sequences[r::3])
        assert np.array_equal(share.tokens, single.tokens[r::3])


def run(dataset: Path, world: int, steps: int, batch: int, state: dict | None = None) -> tuple[list[tuple], dict]:
    """`steps` lockstep training steps on `world` ranks; the sequences consumed, and the state after."""
    ranks = [ManifestDataset(dataset, seq_len=128, seed=11, rank=r, world_size=world) for r in range(world)]
    if state is not None:
        for ds in ranks:
            ds.load_state_dict(state)
    seen = []
    for _ in range(steps):
        for ds in ranks:
            b = ds.next_batch(batch)
            seen += [tuple(row) for row in b.tokens.tolist()]
    states = [ds.state_dict() for ds in ranks]
    assert all(s == states[0] for s in states)  # every rank holds the same global cursor
    return seen, states[0]


def test_resume_on_another_world_size_sees_every_sequence_exactly_once(dataset):
    # 2 ranks x 3 steps x batch 10 = 60, then 3 ranks x 8 steps x 10 = 240: 300 sequences,
    # more than one epoch (~234), as for 15 uninterrupted 2-rank steps.
    first, state = run(dataset, world=2, steps=3, batch=10)
    assert state["consumed"] == 60
    rest, final = run(dataset, world=3, steps=8, batch=10, state=state)
    uninterrupted, final_ref = run(dataset, world=2, steps=15, batch=10)
    assert final["consumed"] == final_ref["consumed"] == 300 and final["epoch"] == 1
    assert Counter(first + rest) == Counter(uninterrupted)
    assert len(first + rest) == 300


def test_state_from_another_dataset_or_length_is_refused(dataset, tmp_path):
    state = ManifestDataset(dataset, seq_len=128, seed=11).state_dict()
    with pytest.raises(ValueError, match="seq_len=128"):
        ManifestDataset(dataset, seq_len=64, seed=11).load_state_dict(state)
    other = write_synthetic_dataset(tmp_path, total_tokens=5_000, seed=6)
    with pytest.raises(ValueError, match="manifest_fingerprint"):
        ManifestDataset(other, seq_len=128, seed=11).load_state_dict(state)


def test_local_shard_with_wrong_size_is_named(dataset, tmp_path):
    shutil.copytree(dataset.parent, tmp_path / "copy")
    shard = tmp_path / "copy" / "shards" / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    ds = ManifestDataset(tmp_path / "copy" / "manifest.json", seq_len=100, seed=0)
    with pytest.raises(ShardError, match="shards/shard-00001.bin: 100 bytes on disk"):
        ds.prefetch()


def test_pickled_dataset_carries_no_mapped_data(dataset):
    ds = ManifestDataset(dataset, seq_len=100, seed=0)
    ds.prefetch()
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 20_000
    assert np.array_equal(clone.read_batch(5, 3).tokens, ds.read_batch(5, 3).tokens)


def test_torch_adapter_with_workers_matches_next_batch(dataset):
    torch = pytest.importorskip("torch")
    from training.data.torch_adapter import TorchBatches

    ds = ManifestDataset(dataset, seq_len=64, seed=2, rank=1, world_size=2, consumed=40)
    loader = torch.utils.data.DataLoader(TorchBatches(ds, batch_size=4, steps=5), batch_size=None, num_workers=2)
    got = [b["tokens"].numpy() for b in loader]
    expected = [ds.next_batch(4).tokens for _ in range(5)]
    assert len(got) == 5 and all(np.array_equal(g, e) for g, e in zip(got, expected))


# -- remote: a real HTTP server on loopback -----------------------------------------------------


class RangeServer:
    """Serves a folder over HTTP/1.1 with `Range: bytes=N-`, logging requests; `faults[path]` is
    a queue of "truncate" (close the connection half-way through the body), "corrupt" (flip a
    byte) or "ignore-range" (answer 200 with the whole file) for the next responses to that path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log: list[tuple[str, str | None]] = []
        self.faults: dict[str, list[str]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = unquote(self.path.split("?")[0])
                server.log.append((path, self.headers.get("Range")))
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                fault = server.faults[path].pop(0) if server.faults.get(path) else None
                start = 0
                header = None if fault == "ignore-range" else self.headers.get("Range")
                if header is not None:
                    start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = bytearray(data[start:])
                if fault == "corrupt":
                    body[len(body) // 2] ^= 0xFF
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if fault == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(dataset):
    srv = RangeServer(dataset.parent.parent)
    yield srv
    srv.close()


def remote_url(server: RangeServer, dataset: Path) -> str:
    return f"{server.url}/{dataset.parent.name}/manifest.json"


def test_http_manifest_reads_like_the_local_one(server, dataset, tmp_path):
    remote = ManifestDataset(remote_url(server, dataset), seq_len=256, seed=3, cache_dir=tmp_path / "cache")
    local = ManifestDataset(dataset, seq_len=256, seed=3)
    for _ in range(3):
        a, b = remote.next_batch(8), local.next_batch(8)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.positions, b.positions)
    remote.prefetch()
    manifest = local.manifest
    cached = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert cached == {s.sha256 for s in manifest.shards} | {s.index_sha256 for s in manifest.shards}
    # Each file was downloaded once, whole.
    shard0 = f"/{dataset.parent.name}/{manifest.shards[0].path}"
    assert server.gets(shard0) == [None]


def shard_path(server: RangeServer, dataset: Path, i: int) -> tuple[str, str, int, str]:
    """(url, server path, size, sha256) of shard i's .bin."""
    entry = parse_manifest(dataset.read_bytes()).shards[i]
    path = f"/{dataset.parent.name}/{entry.path}"
    return server.url + path, path, entry.bytes, entry.sha256


def test_partial_download_resumes_with_range(server, dataset, tmp_path):
    url, path, size, sha = shard_path(server, dataset, 1)
    cache = ShardCache(tmp_path, Fetcher())
    part = cache.path_for(sha).with_name(sha + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes((dataset.parent / "shards" / "shard-00001.bin").read_bytes()[:5000])
    got = cache.get(url, sha, size, "shard-00001.bin")
    assert sha256_file(got) == sha and not part.exists()
    assert server.gets(path) == ["bytes=5000-"]


def test_server_ignoring_range_gets_the_whole_file_rewritten(server, dataset, tmp_path):
    url, path, size, sha = shard_path(server, dataset, 1)
    cache = ShardCache(tmp_path, Fetcher())
    part = cache.path_for(sha).with_name(sha + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)  # whatever the prefix is, a 200 answer replaces it
    server.faults[path] = ["ignore-range"]
    assert sha256_file(cache.get(url, sha, size, "shard-00001.bin")) == sha
    assert server.gets(path) == ["bytes=5000-"]


def test_connection_dropped_mid_body_is_resumed(server, dataset, tmp_path):
    url, path, size, sha = shard_path(server, dataset, 2)
    server.faults[path] = ["truncate"]
    got = ShardCache(tmp_path, Fetcher()).get(url, sha, size, "shard-00002.bin")
    assert sha256_file(got) == sha
    gets = server.gets(path)
    assert gets[0] is None and len(gets) == 2 and gets[1] == f"bytes={size // 2}-"


def test_corrupted_download_is_refetched_once_then_named(server, dataset, tmp_path):
    url, path, size, sha = shard_path(server, dataset, 0)
    server.faults[path] = ["corrupt"]
    got = ShardCache(tmp_path, Fetcher()).get(url, sha, size, "shards/shard-00000.bin")
    assert sha256_file(got) == sha and server.gets(path) == [None, None]

    server.log.clear()
    server.faults[path] = ["corrupt", "corrupt"]
    with pytest.raises(CorruptFileError, match="shards/shard-00000.bin: downloaded content does not match"):
        ShardCache(tmp_path / "other", Fetcher()).get(url, sha, size, "shards/shard-00000.bin")
    assert server.gets(path) == [None, None]
    left = [p.name for p in (tmp_path / "other").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == []  # nothing bad is left in the cache


def test_corrupted_cached_file_is_detected_and_refetched(server, dataset, tmp_path):
    url, path, size, sha = shard_path(server, dataset, 3)
    cache = ShardCache(tmp_path, Fetcher())
    cache.get(url, sha, size, "shard-00003.bin")
    target = cache.path_for(sha)
    raw = bytearray(target.read_bytes())
    raw[10] ^= 1
    target.write_bytes(bytes(raw))
    fresh = ShardCache(tmp_path, Fetcher())  # another process: verifies before trusting the cache
    assert sha256_file(fresh.get(url, sha, size, "shard-00003.bin")) == sha
    assert server.gets(path) == [None, None]


def test_dataset_names_a_shard_the_server_keeps_corrupting(server, dataset, tmp_path):
    _, path, _, _ = shard_path(server, dataset, 1)
    server.faults[path] = ["corrupt"] * 2
    ds = ManifestDataset(remote_url(server, dataset), seq_len=64, seed=0, cache_dir=tmp_path)
    with pytest.raises(CorruptFileError, match="shards/shard-00001.bin"):
        ds.prefetch()


def test_missing_remote_file_is_an_error_not_a_retry_loop(server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        ShardCache(tmp_path, Fetcher()).get(f"{server.url}/nope.bin", "0" * 64, 10, "nope.bin")
    assert server.gets("/nope.bin") == [None]


def test_validate_manifest_over_http(server, dataset):
    url = remote_url(server, dataset)
    assert validate_manifest(url) == []
    _, path, _, _ = shard_path(server, dataset, 2)
    server.faults[path] = ["corrupt"]
    problems = validate_manifest(url)
    assert len(problems) == 1 and problems[0].startswith("shards[2] shards/shard-00002.bin: sha256")


def test_object_store_path_resumes_through_pyarrow_fs(dataset, tmp_path):
    """The s3:// code path (pyarrow.fs), exercised on pyarrow's in-memory `mock://` filesystem."""
    fetcher = Fetcher()
    entry = parse_manifest(dataset.read_bytes()).shards[0]
    data = (dataset.parent / entry.path).read_bytes()
    location = "mock://bucket/ds/shards/shard-00000.bin"
    filesystem, path = fetcher._arrow(location)  # the fetcher's own (cached) filesystem, to fill it
    filesystem.create_dir("ds/shards")
    with filesystem.open_output_stream(path) as out:
        out.write(data)
    cache = ShardCache(tmp_path, fetcher)
    part = cache.path_for(entry.sha256).with_name(entry.sha256 + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:777])
    assert cache.get(location, entry.sha256, entry.bytes, entry.path).read_bytes() == data
