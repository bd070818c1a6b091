"""Training methods, one file each, registered in ``crosstask.registry.METHODS``."""
