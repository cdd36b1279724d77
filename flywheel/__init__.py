"""The product on top of every layer: the `flywheel` command and the end-to-end demo."""
