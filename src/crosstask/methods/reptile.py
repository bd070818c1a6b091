"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Per episode, ``inner_steps`` plain gradient steps of size ``inner_lr`` from θ on the episode's samples give
φᵢ; the meta-update moves θ toward them, θ ← θ + ε · mean(φᵢ − θ). Here that update is the gradient of the
objective ½‖θ − φᵢ‖² (φᵢ held constant), so the outer optimizer's ``lr`` is Reptile's ε: use ``sgd`` with
``momentum: 0`` (the optimizer's default momentum 0.9 would overshoot the interpolation tenfold and collapse
the network), ``lr`` 1.0 and a linear decay to 0 for the paper's schedule (Adam on the same "gradient", as some
implementations do, also works). The inner loop trains on the support and the query samples of an episode
(``use_queries``): Nichol et al. train with more shots than they test with; at test time it sees the
support set only.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from crosstask.data.inputs import Inputs, concat
from crosstask.methods.maml import MAML
from crosstask.methods.meta_learning import InnerLoopConfig, detached
from crosstask.registry import METHODS


class ReptileConfig(InnerLoopConfig):
    inner_steps: int = Field(default=5, ge=1, description="gradient steps on the episode in training")
    inner_lr: float = Field(default=0.1, gt=0, description="step size of the inner loop")
    use_queries: bool = Field(default=True, description="train the inner loop on the query samples too")
    first_order: Literal[True] = Field(default=True, description="Reptile is first order by construction")


@METHODS.register("reptile", config=ReptileConfig)
class Reptile(MAML):
    """Reptile: move the weights toward the weights adapted to each episode (first order, no query loss)."""

    def episode_loss(
        self, support: Inputs, support_y: Tensor, query: Inputs, query_y: Tensor, ways: int
    ) -> tuple[Tensor, Tensor]:
        x, y = (
            (concat([support, query]), torch.cat([support_y, query_y]))
            if self.config.use_queries
            else (support, support_y)
        )
        params = self.parameters_of()
        with torch.enable_grad():
            adapted = self.adapt(
                x, y, detached(params), self.config.inner_steps, self.config.inner_lr, create_graph=False
            )
        loss = sum(0.5 * (params[n] - adapted[n].detach()).pow(2).sum() for n in params)
        with torch.no_grad():
            logits = self.logits(adapted, query)
        return loss, logits
