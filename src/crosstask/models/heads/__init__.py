"""Per-task heads, built from Task specs, registered in ``crosstask.registry.HEADS``.

A head family is one file here::

    @HEADS.register("mlp", config=MLPHeadConfig)
    def build_mlp_head(config: MLPHeadConfig, task: Task, in_features: int) -> nn.Module: ...

It maps features ``(n, in_features)`` to ``(n, task.num_outputs)``; the model squeezes a single regression
output to ``(n,)``.
"""
