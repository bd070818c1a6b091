"""The few-shot baseline of Chen, Liu, Kira, Wang & Huang 2019 ("A Closer Look at Few-shot Classification",
ICLR), which every meta-learner is compared with, and the pretrained baseline of Finn et al. 2017.

Training is plain supervised learning of one model on all meta-training data (``erm`` on a normal,
non-episodic stream: for classification the task's ``num_classes`` is the number of training classes).
At test time, per episode (``episode_adaptation``):

- ``new_head`` (classification, Chen et al.): the body is frozen and a new linear head with ``ways``
  outputs is fitted on the support set's features: ``episode_steps`` SGD steps (momentum 0.9, weight decay
  0.001) of size ``episode_lr`` on random batches of ``episode_batch`` support samples, as in the paper (100
  steps, batch 4, lr 0.01);
- ``finetune`` (regression, Finn et al.'s "pretrained" baseline on the sinusoids): every weight is
  fine-tuned from the trained model by ``episode_steps`` plain gradient steps of ``episode_lr`` on the whole
  support set (the model is left as it is).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from crosstask.data.episodes import Episodes
from crosstask.errors import ConfigError
from crosstask.evaluation.episodes import flat_features
from crosstask.methods.erm import ERM, ERMConfig
from crosstask.registry import METHODS


class BaselineConfig(ERMConfig):
    episode_adaptation: Literal["new_head", "finetune"] = Field(
        default="new_head", description="per episode: a new linear head on frozen features, or fine-tune all"
    )
    episode_steps: int = Field(default=100, ge=1, description="steps adapting to a support set")
    episode_lr: float = Field(default=0.01, gt=0, description="step size of those steps")
    episode_batch: int = Field(default=4, ge=1, description="support samples per step (new_head)")


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

    def __init__(self, config: BaselineConfig, model, streams):
        super().__init__(config, model, streams)
        classified = [t.name for t in model.tasks if t.kind == "classification"]
        if config.episode_adaptation == "finetune" and classified:
            raise ConfigError(
                f"method 'baseline': episode_adaptation: finetune keeps the pretraining head, whose classes "
                f"(task '{classified[0]}') are not an episode's ways; classification episodes take "
                "episode_adaptation: new_head (finetune is for regression episodes)"
            )

    def episode_predictor(self) -> Callable[[Episodes], Tensor]:
        config = self.config
        task = self.model.tasks[0]
        if config.episode_adaptation == "finetune":
            return self.finetuned_predictor()

        def predict(episodes: Episodes) -> Tensor:
            if episodes.support_y.is_floating_point():
                raise ConfigError(
                    f"method 'baseline' fits a new classification head per episode; task '{task.name}' is a "
                    "regression: set method.episode_adaptation: finetune"
                )
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

    def finetuned_predictor(self) -> Callable[[Episodes], Tensor]:
        """Every weight fine-tuned on each support set (functional: the model is left as it is)."""
        from torch.func import functional_call

        from crosstask.evaluation.losses import task_loss
        from crosstask.methods.meta_learning import detached, sgd_steps

        task = self.model.tasks[0]

        def forward(params: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.model, params, (x,), strict=False)[task.name]

        def predict(episodes: Episodes) -> Tensor:
            outputs = []
            params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
            for i in range(len(episodes)):
                support, support_y, query, _ = episodes.episode(i)
                with torch.enable_grad():
                    fast = sgd_steps(
                        lambda p, x=support, y=support_y: task_loss(task, forward(p, x), y),
                        detached(params),
                        self.config.episode_steps,
                        self.config.episode_lr,
                        create_graph=False,
                    )
                with torch.no_grad():
                    outputs.append(forward(fast, query))
            return torch.stack(outputs)

        return predict
