"""MixStyle for domain generalization (Zhou, Yang, Qiao & Xiang 2021, "Domain Generalization with MixStyle",
ICLR).

Plain risk minimization over the source domains (loss ``risk``, the mean of the domain risks) with
:class:`~crosstask.modules.mixstyle.MixStyle` layers after chosen backbone stages: in training, with
probability ``p`` per layer and step, each sample's channel statistics (mean and standard deviation over
the spatial positions) are mixed with those of a partner sample, ``λ ~ Beta(α, α)`` (the paper's
equation 5). The layers are forward hooks on the model, active only inside this method's training steps;
evaluation and inference see the plain network.

``layers`` says where: backbone layer names (``layer1``, ``conv1``; ``crosstask list backbone`` shows them)
or indices into the trunk's ``stages()``. The default ``[layer1, layer2, layer3]`` is the paper's placement
in a ResNet (after the first three residual stages; not after the last, which carries the labels'
semantics). ``mix: crossdomain`` pairs samples of different source domains, ``random`` any two samples
(the paper's two variants; ``p = 0.5``, ``α = 0.1`` its defaults). MixStyle needs feature maps; a stage that
outputs feature vectors (an MLP) is a config error unless ``vectors: true`` (per-sample mean and standard
deviation over the features: a variant that is not in the paper).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.data.inputs import batch_size
from crosstask.data.streams import Batch
from crosstask.engine.method import StepOutput
from crosstask.errors import ConfigError
from crosstask.methods.generalization import DomainView, Generalization, GeneralizationConfig
from crosstask.models.trunk import Trunk
from crosstask.modules.mixstyle import MixStyle, MixStyleHooks
from crosstask.registry import METHODS


class MixStyleConfig(GeneralizationConfig):
    layers: list[int | str] = Field(
        default_factory=lambda: ["layer1", "layer2", "layer3"],
        min_length=1,
        description="backbone layer names or trunk stage indices after which styles are mixed",
    )
    p: float = Field(default=0.5, ge=0.0, le=1.0, description="probability that a layer mixes in a step")
    alpha: float = Field(default=0.1, gt=0.0, description="λ ~ Beta(α, α)")
    mix: Literal["random", "crossdomain"] = Field(
        default="random", description="partner: any sample, or a sample of another domain"
    )
    vectors: bool = Field(
        default=False,
        description="allow stages with (n, d) outputs: statistics over the features (not in the paper)",
    )


def hooked_modules(model: nn.Module, layers: list[int | str]) -> dict[str, nn.Module]:
    """The modules whose outputs get mixed, by a readable name; a layer that is not there is a config error."""
    trunks = [m for m in model.modules() if isinstance(m, Trunk)]
    if not trunks:
        raise ConfigError("mixstyle hooks the backbone stages of a crosstask model; this model has no trunk")
    found: dict[str, nn.Module] = {}
    for t, trunk in enumerate(trunks):
        prefix = f"trunk{t}." if len(trunks) > 1 else ""
        for layer in layers:
            module = _resolve(trunk, layer)
            if all(module is not m for m in found.values()):  # a layer named twice (name and index): one hook
                found[f"{prefix}{layer}"] = module
    return found


def _resolve(trunk: Trunk, layer: int | str) -> nn.Module:
    names = trunk.backbone.layer_names()
    stages = trunk.stages()
    choices = f"layer names: {', '.join(names)}; or stage indices 0..{len(stages) - 1}"
    if isinstance(layer, str):
        if layer not in names:
            raise ConfigError(f"method.layers: the backbone has no layer '{layer}'; {choices}")
        return trunk.backbone.layers_until(layer)[-1]
    if not -len(stages) <= layer < len(stages):
        raise ConfigError(f"method.layers: no stage {layer}; {choices}")
    stage = stages[layer]
    # stages() may wrap the backbone's own modules in a new Sequential that forward never calls: hook the
    # wrapped module that produces the stage's output instead.
    owned = {id(m) for m in trunk.modules()}
    if id(stage) in owned:
        return stage
    if isinstance(stage, nn.Sequential) and len(stage) and id(stage[-1]) in owned:
        return stage[-1]
    raise ConfigError(
        f"method.layers: stage {layer} cannot be hooked (it is not a module of the backbone); {choices}"
    )


@METHODS.register("mixstyle", config=MixStyleConfig)
class MixStyleMethod(Generalization):
    """MixStyle: mix instance-level feature statistics between samples in training (Zhou et al. 2021)."""

    config: MixStyleConfig
    min_domains = 1  # random mixing works within one domain too

    def __init__(self, config: MixStyleConfig, model, streams):
        super().__init__(config, model, streams)
        if config.mix == "crossdomain" and len(self.domains) < 2:
            raise ConfigError("method.mix: crossdomain needs at least two labeled source domains; use random")
        mixstyle = MixStyle(config.p, config.alpha, config.mix, vectors=config.vectors)
        self.hooks = MixStyleHooks(mixstyle, hooked_modules(model, config.layers))

    def setup(self) -> None:
        """Check with one dry forward pass that every hooked layer outputs something MixStyle can mix."""
        super().setup()
        shape = getattr(self.model, "input_shape", None)
        if shape is None:
            return
        seen: list[tuple[str, tuple[int, ...]]] = []
        handles = [
            m.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, tuple(out.shape))))
            for name, m in self.hooks.modules.items()
        ]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(torch.zeros(2, *shape, device=next(self.model.parameters()).device))
        finally:
            self.model.train(was_training)
            for handle in handles:
                handle.remove()
        for name, out_shape in seen:
            if len(out_shape) < 3 and not self.config.vectors:
                raise ConfigError(
                    f"mixstyle: layer '{name}' outputs feature vectors of shape (n, {out_shape[-1]}), not feature "
                    "maps (n, channels, height, width). Name convolutional layers in method.layers, or set "
                    "method.vectors: true for the per-sample variant over feature vectors (not in the paper)"
                )

    def on_fit_end(self, trainer, status: str) -> None:
        """The hooks go with the training: an exported or copied model carries none."""
        self.hooks.remove()

    def objective(self, views: list[DomainView]) -> dict[str, Tensor]:
        return {"risk": self.risks(views).mean()}

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        sizes = [batch_size(batch[d.name].x) for d in self.domains]
        device = next(self.model.parameters()).device
        domain_ids = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device)
        )
        self.hooks.attach()  # once: the hooks stay until the fit ends
        self.hooks.activate(domain_ids)
        try:
            return super().training_step(batch)
        finally:
            self.hooks.deactivate()
