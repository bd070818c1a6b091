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

Test time, as in the paper: with ``test_time_steps: N`` (> 0) the evaluator adapts on each evaluation batch
itself (:meth:`~crosstask.engine.method.Method.predictor`): BatchNorm layers normalize with the batch's own
statistics, ``N`` SGD steps (``test_time_lr``) of entropy minimization update the affine parameters, the
batch is predicted, and the model is put back as it was (episodic: the evaluation never changes the
model, and every batch starts from the trained one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.data.inputs import Inputs
from crosstask.data.streams import Batch
from crosstask.engine.method import StepOutput
from crosstask.errors import ConfigError
from crosstask.methods.adabn import check_source_free
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
    """In training, the optimizer (``optim``) and ``train.steps`` set the updates; at test time, these keys."""

    test_time_steps: int = Field(
        default=0, ge=0, description="entropy steps on each evaluation batch before predicting it (0: off)"
    )
    test_time_lr: float = Field(default=1e-3, gt=0.0, description="SGD step size of the test-time updates")


@METHODS.register("tent", config=TentConfig)
class Tent(Adaptation):
    """Test-time entropy minimization of the normalization layers' affine parameters (Wang et al. 2021)."""

    config: TentConfig
    aligns_features = False
    needs_source = False
    transfer_losses = ("entropy",)

    def __init__(self, config: TentConfig, model, streams):
        super().__init__(config, model, streams)
        check_source_free(self)
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
        super().setup()
        self.model.requires_grad_(False)
        for parameter in self.affine:
            parameter.requires_grad_(True)

    def transfer(self, views: Views) -> dict[str, Tensor]:
        return {"entropy": prediction_entropy(views.target.logits)}

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        # one plain forward pass: any architecture works (the representation, when there is one, is handed on)
        output = self.model.forward_all(batch[self.target.name].x)
        return StepOutput(
            {"entropy": prediction_entropy(output.outputs[self.task])}, representation=output.shared
        )

    def predictor(self) -> Callable[[Inputs], dict[str, Tensor]] | None:
        if not self.config.test_time_steps:
            return None
        return self.adapt_and_predict

    def adapt_and_predict(self, x: Inputs) -> dict[str, Tensor]:
        """Episodic test-time adaptation on one batch: adapt, predict, restore (see the module docstring)."""
        model, steps = self.model, self.config.test_time_steps
        params = [p for p in self.affine]
        saved_params = [p.detach().clone() for p in params]
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved_buffers = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in layers]
        modes = [(m, m.training) for m in model.modules()]
        was_required = [p.requires_grad for p in params]
        try:
            model.eval()
            for layer in layers:
                layer.train()  # the batch's own statistics
            for p in params:
                p.requires_grad_(True)
            with torch.enable_grad():
                for _ in range(steps):
                    loss = prediction_entropy(model(x)[self.task])
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    with torch.no_grad():
                        for p, g in zip(params, grads, strict=True):
                            if g is not None:
                                p.sub_(self.config.test_time_lr * g)
            with torch.no_grad():
                return model(x)
        finally:
            with torch.no_grad():
                for p, value, required in zip(params, saved_params, was_required, strict=True):
                    p.copy_(value)
                    p.requires_grad_(required)
                for layer, buffers in zip(layers, saved_buffers, strict=True):
                    for name, value in buffers.items():
                        getattr(layer, name).copy_(value)
            for module, training in modes:
                module.training = training
