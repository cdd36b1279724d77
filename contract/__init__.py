"""The contract between curation and training: what a curation run publishes and a training
run reads (layouts of run folders, today; the manifest and shard formats move here next)."""
