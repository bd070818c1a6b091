"""The few-shot baseline of Chen, Liu, Kira, Wang & Huang 2019 ("A Closer Look at Few-shot Classification",
ICLR), which every meta-learner is compared with.

Training is plain supervised learning of one classifier over all meta-training classes (``erm`` on a
normal, non-episodic stream: the task's ``num_classes`` is the number of training classes). At test time
the body is frozen and, per episode, a new linear head with ``ways`` outputs is fitted on the support
set's features: ``episode_steps`` SGD steps (momentum 0.9, weight decay 0.001) of size ``episode_lr`` on
random batches of ``episode_batch`` support samples, as in the paper (100 steps, batch 4, lr 0.01).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from crosstask.data.episodes import Episodes
from crosstask.evaluation.episodes import flat_features
from crosstask.methods.erm import ERM, ERMConfig
from crosstask.registry import METHODS


class BaselineConfig(ERMConfig):
    episode_steps: int = Field(
        default=100, ge=1, description="SGD steps fitting the new head on a support set"
    )
    episode_lr: float = Field(default=0.01, gt=0, description="step size of those steps")
    episode_batch: int = Field(default=4, ge=1, description="support samples per step")


def fit_linear_head(
    support: Tensor, support_y: Tensor, ways: int, steps: int, lr: float, batch: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A linear classifier (weight, bias) fitted on fixed features by SGD with momentum 0.9 and weight decay
    0.001 on random batches (deterministic by ``seed``); initialized as ``nn.Linear``."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / support.shape[1] ** 0.5
    weight = ((torch.rand(ways, support.shape[1], generator=generator) * 2 - 1) * bound).to(support)
    bias = ((torch.rand(ways, generator=generator) * 2 - 1) * bound).to(support)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.SGD([weight, bias], lr=lr, momentum=0.9, weight_decay=0.001)
    n = len(support)
    with torch.enable_grad():
        for _ in range(steps):
            index = torch.randperm(n, generator=generator)[: min(batch, n)].to(support.device)
            loss = F.cross_entropy(support[index] @ weight.T + bias, support_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weight.detach(), bias.detach()


@METHODS.register("baseline", config=BaselineConfig)
class Baseline(ERM):
    """Chen et al.'s baseline: a classifier trained on all training classes; per episode, a new linear head
    fitted on the frozen features of the support set."""

    def episode_predictor(self) -> Callable[[Episodes], Tensor]:
        config = self.config

        def predict(episodes: Episodes) -> Tensor:
            logits = []
            for i in range(len(episodes)):
                support, support_y, query, _ = episodes.episode(i)
                with torch.no_grad():
                    z_support, z_query = flat_features(self.model, support), flat_features(self.model, query)
                weight, bias = fit_linear_head(
                    z_support,
                    support_y,
                    episodes.ways,
                    config.episode_steps,
                    config.episode_lr,
                    config.episode_batch,
                )
                logits.append(z_query @ weight.T + bias)
            return torch.stack(logits)

        return predict
