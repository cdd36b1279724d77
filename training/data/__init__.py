"""The training client's side of the data contract: the streaming reader of a manifest's shards,
the fetcher and cache behind it, the deterministic sequence order, and manifest validation.

The formats themselves (manifest, shards, tokenizer, locations) are `contract/`, which the curation
side writes with. Light on purpose (numpy, pydantic, httpx): nothing here imports torch, except
`torch_adapter`, which callers import by name.
"""
