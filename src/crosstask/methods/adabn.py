"""AdaBN: adaptive batch normalization (Li, Wang, Shi, Liu & Hou 2016, "Revisiting Batch Normalization For
Practical Domain Adaptation", arXiv:1603.04779; Li et al. 2018, "Adaptive Batch Normalization for practical
domain adaptation", Pattern Recognition 80).

A network trained on the source keeps all its weights; only the statistics of every BatchNorm layer are
replaced by the target domain's (Algorithm 1): for each neuron j, ``μ_j ← E[x_j^t]`` and ``σ_j² ←
Var[x_j^t]`` over the target data, so that each layer receives target inputs normalized as the source ones
were. No gradient training at all.

In the one-Trainer world: ``setup()`` resets the running statistics and sets every BatchNorm's momentum to
``None`` (PyTorch's cumulative average); each training step forwards one target batch under
``torch.no_grad()`` with only the BatchNorm layers in train mode (dropout stays off, as at test time), so
after ``train.steps`` steps the running statistics are the mean of the per-batch statistics of that many
target batches (``train.steps × train.accumulate`` with accumulation) (with one batch holding the whole target set, exactly its mean and unbiased variance).
The step returns no objective and no penalty, so the Trainer takes no backward pass and no optimizer step:
the weights stay exactly as trained (weight decay and momentum included), whatever weighting the config
names. The method is source-free (``needs_source = False``)
and works for any task kind. Start from a trained model: ``model.init_from: <run dir>``. The BatchNorm layers
keep ``momentum = None`` after the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from crosstask.data.streams import Batch
from crosstask.engine.method import StepOutput
from crosstask.errors import ConfigError
from crosstask.methods.adaptation import Adaptation, AdaptationConfig
from crosstask.registry import METHODS


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (1d, 2d, 3d, sync) of ``model`` that keep running statistics."""
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@contextmanager
def batch_norm_only_training(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode except the BatchNorm layers; the previous modes after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for layer in batch_norm_layers(model):
        layer.train()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_source_free(method: Adaptation) -> None:
    """Source-free methods read unlabeled target data only, and choose themselves what trains."""
    if method.labeled_target is not None:
        raise ConfigError(
            f"method '{method.name}' adapts to unlabeled target data only; remove method.labeled_target "
            f"('{method.labeled_target.name}'), or use a method that trains on target labels (erm, fixmatch, ...)"
        )
    if method.config.finetune.name != "full":
        raise ConfigError(
            f"method '{method.name}' chooses what adapts itself (normalization statistics or affine parameters); "
            f"remove method.finetune ({method.config.finetune.name})"
        )


class AdaBNConfig(AdaptationConfig):
    """AdaBN has no hyperparameters: ``train.steps`` target batches are averaged."""


@METHODS.register("adabn", config=AdaBNConfig)
class AdaBN(Adaptation):
    """Re-estimate every BatchNorm's statistics on the target data, no training (Li et al. 2016)."""

    config: AdaBNConfig
    aligns_features = False
    needs_source = False
    classification_only = False
    transfer_losses = ()

    def __init__(self, config: AdaBNConfig, model, streams):
        super().__init__(config, model, streams)
        check_source_free(self)
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ConfigError(
                "method 'adabn' re-estimates BatchNorm statistics, but the model has no BatchNorm layer with "
                "running statistics. Use a backbone with batch normalization (mlp with batch_norm: true, "
                "resnet18/34/50) or a bottleneck (model.bottleneck: {dim: 256}, batch_norm is on by default)"
            )

    def setup(self) -> None:
        super().setup()
        for layer in self.layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the target batches

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        x = batch[self.target.name].x
        with torch.no_grad(), batch_norm_only_training(self.model):
            self.model(x)
        return StepOutput({})
