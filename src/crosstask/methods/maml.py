"""MAML: model-agnostic meta-learning (Finn, Abbeel & Levine 2017, ICML).

Per episode, ``inner_steps`` gradient steps of size ``inner_lr`` on the support loss adapt every trainable
parameter, θ'ᵢ = θ − α ∇θ L_support(θ); the objective is the query loss at θ'ᵢ, differentiated through
the inner steps (second order; ``first_order: true`` is FOMAML). Omniglot in the paper: 5-way 1-shot, conv-4, 1 inner step of 0.4, meta-batch
32, Adam 0.001 outer, 3 steps at test time (Finn et al., appendix A.1).
"""

from __future__ import annotations

from torch import Tensor

from crosstask.data.inputs import Inputs
from crosstask.methods.meta_learning import (
    InnerLoopConfig,
    MetaLearner,
    Params,
    cross_entropy,
    detached,
    sgd_steps,
)
from crosstask.registry import METHODS


@METHODS.register("maml", config=InnerLoopConfig)
class MAML(MetaLearner):
    """MAML: every parameter adapted by gradient steps on the support set; second-order meta-gradient."""

    def inner_names(self) -> list[str] | None:
        """The parameters the inner loop adapts (``None``: every trainable one)."""
        return None

    def inner_lr(self) -> float | Params:
        return self.config.inner_lr

    def adapt(
        self,
        support: Inputs,
        support_y: Tensor,
        params: Params,
        steps: int,
        lr: float | Params,
        create_graph: bool,
    ) -> Params:
        inner = params if self.inner_names() is None else {n: params[n] for n in self.inner_names()}
        rest = {n: p for n, p in params.items() if n not in inner}

        def support_loss(fast: Params) -> Tensor:
            return cross_entropy(self.logits({**rest, **fast}, support), support_y)

        return {**rest, **sgd_steps(support_loss, inner, steps, lr, create_graph=create_graph)}

    def episode_loss(
        self, support: Inputs, support_y: Tensor, query: Inputs, query_y: Tensor, ways: int
    ) -> tuple[Tensor, Tensor]:
        fast = self.adapt(
            support,
            support_y,
            self.parameters_of(),
            self.config.inner_steps,
            self.inner_lr(),
            not self.config.first_order,
        )
        logits = self.logits(fast, query)
        return cross_entropy(logits, query_y), logits

    def adapt_and_predict(self, support: Inputs, support_y: Tensor, query: Inputs, ways: int) -> Tensor:
        import torch

        steps = self.config.inner_steps if self.config.test_steps is None else self.config.test_steps
        lr = self.inner_lr() if self.config.test_lr is None else self.config.test_lr
        if isinstance(lr, dict):
            lr = {n: v.detach() for n, v in lr.items()}
        with torch.enable_grad():
            fast = self.adapt(
                support, support_y, detached(self.parameters_of()), steps, lr, create_graph=False
            )
        with torch.no_grad():
            return self.logits(fast, query)
