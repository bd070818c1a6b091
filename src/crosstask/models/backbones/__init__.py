"""Backbone families, one file each, registered in ``crosstask.registry.BACKBONES``."""

from crosstask.models.backbones.base import Backbone, BackboneConfig, build_backbone

__all__ = ["Backbone", "BackboneConfig", "build_backbone"]
