"""Model selection without target labels, one file per criterion, registered in
``crosstask.registry.VALIDATORS``: each scores a model from source validation data and unlabeled target
inputs, and the Trainer reports the checkpoint each one picks (``train.validation``)."""
