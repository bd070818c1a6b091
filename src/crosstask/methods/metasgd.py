"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

MAML with a learned step size for every parameter entry: θ' = θ − α ⊙ ∇θ L_support(θ), where α has θ's
shapes, starts at ``inner_lr`` and is meta-learned with θ (one inner step in the paper). α is the method's
own parameter, optimized and checkpointed with the model.
"""

from __future__ import annotations

import torch
from torch import nn

from crosstask.engine.method import StreamSpec
from crosstask.methods.maml import MAML
from crosstask.methods.meta_learning import InnerLoopConfig, Params
from crosstask.models.model import MultiTaskModel
from crosstask.registry import METHODS


def _key(name: str) -> str:
    return name.replace(".", "__")  # parameter names hold dots, which a ParameterDict key may not


@METHODS.register("metasgd", config=InnerLoopConfig)
class MetaSGD(MAML):
    """Meta-SGD: MAML with a meta-learned step size per parameter entry."""

    def __init__(self, config: InnerLoopConfig, model: MultiTaskModel, streams: list[StreamSpec]):
        super().__init__(config, model, streams)
        self.modules["lr"] = nn.ParameterDict(
            {
                _key(n): nn.Parameter(torch.full_like(p, config.inner_lr))
                for n, p in model.named_parameters()
                if p.requires_grad
            }
        )

    def inner_lr(self) -> Params:
        rates = self.modules["lr"]
        return {n: rates[_key(n)] for n, p in self.model.named_parameters() if p.requires_grad}
