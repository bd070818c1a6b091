"""Fine-tuning regularizers toward the pretrained starting point: ``l2sp``, ``delta``, ``bss``, ``lwf``.

Each is one file here, registered in the ``regularizer`` family and used through the ``erm`` method::

    method: {name: erm, regularizers: [{name: l2sp, alpha: 0.1, beta: 0.01}]}

Every regularizer adds one named loss (its name) to the step; its config holds the paper's coefficients, so
the default ``static`` weighting (weight 1.0) reproduces the paper's objective. See
:mod:`crosstask.finetune.base`.
"""
