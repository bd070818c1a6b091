"""One module per suite, each with ``DESCRIPTION`` and ``run(options) -> list[Record]``."""
