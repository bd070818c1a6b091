"""Transferability scores, one file per score, registered in ``crosstask.registry.TRANSFERABILITY``: how
well a pretrained model should transfer to a labeled target task, computed from its features on the target
samples (LogME, H-score) or from its own softmax over its source classes on them (LEEP, NCE), before any
fine-tuning. Higher is better for every score. :func:`transferability` computes one or several by name."""

from crosstask.analysis.transferability.base import TransferabilityScore, TransferData, transferability

__all__ = ["TransferData", "TransferabilityScore", "transferability"]
