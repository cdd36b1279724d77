"""`ManifestDataset` as a torch `IterableDataset` of whole per-rank batches (imports torch).

    loader = DataLoader(TorchBatches(ds, batch_size=8), batch_size=None, num_workers=2)
    for step, batch in enumerate(loader):   # {"tokens", "positions"}: (8, seq_len + 1) tensors
        ...
        ds.advance(8)                         # the main process's cursor, for state_dict()

DataLoader worker w of K produces steps w, w + K, ...; with `batch_size=None` the DataLoader
returns workers' items round-robin, so steps arrive in order and equal `ds.next_batch(8)`'s.
The adapter starts at `ds.consumed` as it is when the adapter is made.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from training.data.dataset import ManifestDataset


class TorchBatches(IterableDataset):
    def __init__(self, dataset: ManifestDataset, batch_size: int, steps: int | None = None) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.steps = steps  # None: endless
        self.start = dataset.consumed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stride = self.dataset.world_size * self.batch_size
        step = worker
        while self.steps is None or step < self.steps:
            batch = self.dataset.read_batch(self.start + step * stride, self.batch_size)
            yield {"tokens": torch.from_numpy(batch.tokens), "positions": torch.from_numpy(batch.positions)}
            step += workers
