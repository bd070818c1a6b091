"""ANIL: almost no inner loop (Raghu, Raghu, Bengio & Vinyals 2020, ICLR).

Raghu et al. found that MAML's inner loop barely changes the body: ANIL adapts only the task's head in the
inner loop (second order through the head unless ``first_order``; the body still learns from the query
loss), so the features of an episode are computed once per episode instead of once per inner step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from crosstask.data.inputs import Inputs
from crosstask.methods.meta_learning import (
    InnerLoopConfig,
    MetaLearner,
    Params,
    detached,
    sgd_steps,
)
from crosstask.registry import METHODS


@METHODS.register("anil", config=InnerLoopConfig)
class ANIL(MetaLearner):
    """ANIL: the inner loop adapts the head only, on features computed once per episode."""

    def features(self, x: Inputs) -> Tensor:
        features, _ = self.model.architecture(x)
        return features[self.task.name]

    def head_logits(self, head: Params, z: Tensor) -> Tensor:
        return functional_call(self.model.heads[self.task.name], head, (z,))

    def head_params(self) -> Params:
        return dict(self.model.heads[self.task.name].named_parameters())

    def adapt(self, z: Tensor, y: Tensor, head: Params, steps: int, lr: float, create_graph: bool) -> Params:
        return sgd_steps(
            lambda p: self.loss(self.head_logits(p, z), y), head, steps, lr, create_graph=create_graph
        )

    def episode_loss(
        self, support: Inputs, support_y: Tensor, query: Inputs, query_y: Tensor, ways: int
    ) -> tuple[Tensor, Tensor]:
        head = self.adapt(
            self.features(support),
            support_y,
            self.head_params(),
            self.config.inner_steps,
            self.config.inner_lr,
            not self.config.first_order,
        )
        logits = self.head_logits(head, self.features(query))
        return self.loss(logits, query_y), logits

    def adapt_and_predict(self, support: Inputs, support_y: Tensor, query: Inputs, ways: int) -> Tensor:
        steps = self.config.inner_steps if self.config.test_steps is None else self.config.test_steps
        lr = self.config.inner_lr if self.config.test_lr is None else self.config.test_lr
        with torch.no_grad():
            z_support, z_query = self.features(support), self.features(query)
        with torch.enable_grad():
            head = self.adapt(z_support, support_y, detached(self.head_params()), steps, lr, False)
        with torch.no_grad():
            return self.head_logits(head, z_query)
