"""Multi-task sharing architectures, one file each, registered in ``crosstask.registry.ARCHITECTURES``."""

from crosstask.models.architectures.base import Architecture

__all__ = ["Architecture"]
