"""Prototypical networks (Snell, Swersky & Zemel 2017, NeurIPS).

An episode's classes are represented by the mean of their support samples' features (the shared
representation, flattened); a query is classified by the softmax over negative squared Euclidean distances
to the prototypes, and the objective is the query cross-entropy. No inner loop and no head: the task's head
is left untrained. Support and query go through the network in one forward pass, as in the paper's code.
Omniglot in the paper: conv-4, 60-way 5-query training episodes for 1-shot testing ("higher way").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crosstask.data.inputs import Inputs, batch_size, concat
from crosstask.evaluation.episodes import flat_features, prototype_logits
from crosstask.methods.meta_learning import MetaLearner
from crosstask.registry import METHODS, ComponentConfig


@METHODS.register("protonet", config=ComponentConfig)
class ProtoNet(MetaLearner):
    """Prototypical networks: queries classified by the nearest support class mean of the features."""

    uses_head = False
    supports_regression = False

    def query_logits(self, support: Inputs, support_y: Tensor, query: Inputs, ways: int) -> Tensor:
        z = flat_features(self.model, concat([support, query]))
        n = batch_size(support)
        return prototype_logits(z[:n], support_y, z[n:], ways)

    def episode_loss(
        self, support: Inputs, support_y: Tensor, query: Inputs, query_y: Tensor, ways: int
    ) -> tuple[Tensor, Tensor]:
        logits = self.query_logits(support, support_y, query, ways)
        return F.cross_entropy(logits, query_y), logits

    def adapt_and_predict(self, support: Inputs, support_y: Tensor, query: Inputs, ways: int) -> Tensor:
        with torch.no_grad():
            return self.query_logits(support, support_y, query, ways)
