"""The report: one self-contained HTML file per run or comparison (``crosstask report``), with its figures
also written as PNG files. Needs matplotlib (the ``plot`` extra)."""
