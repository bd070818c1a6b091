"""TENT: fully test-time adaptation by entropy minimization (Wang, Shelhamer, Liu, Olshausen & Darrell 2021,
"Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR).

A trained model adapts to unlabeled target data alone (no source data) by minimizing the Shannon entropy of
its predictions, ``H(ŷ) = −Σ_c p(ŷ_c) log p(ŷ_c)`` (eq. 1), averaged over each target batch: the loss
``entropy``. Only the normalization layers' affine parameters (the scale γ and shift β of eq. 2) are
updated; ``setup()`` freezes every other parameter. BatchNorm layers normalize with the statistics of the
current target batch (the Trainer keeps the model in train mode), and their running statistics follow the
target batches at the layer's momentum, so that evaluation, in eval mode, uses target statistics too (the
paper predicts with the test batch's own statistics instead). LayerNorm, GroupNorm and affine InstanceNorm
layers are adapted as well. The paper optimizes with Adam (lr 1e-3, batch 128) on CIFAR and SGD with momentum
0.9 (lr 0.00025, batch 64) on ImageNet. Start from a trained model: ``model.init_from: <run dir>``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crosstask.data.streams import Batch
from crosstask.engine.method import StepOutput
from crosstask.errors import ConfigError
from crosstask.methods.adabn import no_labeled_target
from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.registry import METHODS

NORMALIZATION = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)


def normalization_parameters(model: nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """The normalization layers of ``model`` and their affine parameters (scale and shift)."""
    layers = [m for m in model.modules() if isinstance(m, NORMALIZATION)]
    parameters = [p for m in layers for p in m.parameters(recurse=False)]
    return layers, parameters


def prediction_entropy(logits: Tensor) -> Tensor:
    """The mean Shannon entropy (nats) of the softmax predictions of a batch of logits (B, C)."""
    log_probabilities = torch.log_softmax(logits.float(), dim=1)
    return -(log_probabilities.exp() * log_probabilities).sum(dim=1).mean()


class TentConfig(AdaptationConfig):
    """TENT has no hyperparameters of its own: the optimizer (``optim``) and ``train.steps`` set the updates."""


@METHODS.register("tent", config=TentConfig)
class Tent(Adaptation):
    """Test-time entropy minimization of the normalization layers' affine parameters (Wang et al. 2021)."""

    config: TentConfig
    needs_source = False
    transfer_losses = ("entropy",)

    def __init__(self, config: TentConfig, model, streams):
        super().__init__(config, model, streams)
        no_labeled_target(self)
        layers, self.affine = normalization_parameters(model)
        if not layers:
            raise ConfigError(
                "method 'tent' updates the normalization layers, but the model has none. Use a backbone with "
                "batch normalization (mlp with batch_norm: true, resnet18/34/50) or a bottleneck "
                "(model.bottleneck: {dim: 256}), and train the source model with it"
            )
        if not self.affine:
            raise ConfigError(
                "method 'tent' updates the scale and shift of the normalization layers, but none of the "
                f"model's {len(layers)} normalization layers has them (affine=False)"
            )

    def setup(self) -> None:
        self.model.requires_grad_(False)
        for parameter in self.affine:
            parameter.requires_grad_(True)

    def transfer(self, views: Views) -> dict[str, Tensor]:
        return {"entropy": prediction_entropy(views.target.logits)}

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        # one plain forward pass: no shared representation needed, so any architecture works
        logits = self.model(batch[self.target.name].x)[self.task]
        return StepOutput({"entropy": prediction_entropy(logits)})
