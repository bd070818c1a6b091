"""MLDG: meta-learning for domain generalization (Li, Yang, Song & Hospedales 2018, "Learning to Generalize:
Meta-Learning for Domain Generalization", AAAI).

Every step splits the source domains at random into meta-train domains S̆ and meta-test domains S̄ (``meta_test
domains`` of them) and simulates a domain shift: a virtual gradient step on meta-train must also lower the
risk on meta-test. The paper's Algorithm 1 / equation 3::

    F(θ) = mean over S̆ of the domain risks,    θ' = θ − α ∇_θ F(θ),    G(θ') = mean over S̄ of the risks at θ'
    min_θ  F(θ) + β · G(θ − α ∇_θ F(θ))

Losses ``meta_train`` (``F(θ)``) and ``meta_test`` (``G(θ')``, evaluated with the adapted parameters through
``torch.func.functional_call``; its gradient flows back to θ through θ', including the second-order term
``−α ∇²F ∇G`` unless ``first_order: true``, which treats ``∇F`` as a constant, as DomainBed does). β is
``method.beta``, multiplied into ``meta_test`` (the paper's β = 1). Both objectives reach the parameters
through θ' as well as through the features, so a gradient weighting takes their Jacobian on the parameters.
The second-order term needs operations whose derivatives are differentiable (not, e.g., ``EmbeddingBag``);
the Trainer's error then says to set ``first_order: true``. ``inner_lr`` is α;
the default 5e-4 is the authors' PACS setting (equal to their learning rate). The split is drawn from a
generator seeded by ``seed`` and the step, so a resumed run makes the same splits.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from torch.func import functional_call

from crosstask.data.streams import Batch
from crosstask.engine.method import StepOutput
from crosstask.errors import ConfigError
from crosstask.methods.generalization import DomainView, Generalization, GeneralizationConfig
from crosstask.registry import METHODS


class MLDGConfig(GeneralizationConfig):
    inner_lr: float = Field(default=5e-4, gt=0.0, description="α: step size of the virtual meta-train update")
    meta_test_domains: int = Field(default=1, ge=1, description="domains held out as meta-test in each step")
    first_order: bool = Field(default=False, description="drop the second-order term (∇F taken as constant)")
    seed: int = Field(default=0, description="seed of the per-step meta-train / meta-test splits")
    beta: float = Field(
        default=1.0, ge=0.0, description="β: the weight of the meta-test objective (paper: 1)"
    )


@METHODS.register("mldg", config=MLDGConfig)
class MLDG(Generalization):
    """MLDG: a virtual step on meta-train domains must also help meta-test domains (Li et al. 2018)."""

    config: MLDGConfig
    objective_losses = ("meta_train", "meta_test")

    def __init__(self, config: MLDGConfig, model, streams):
        super().__init__(config, model, streams)
        if config.meta_test_domains >= len(self.domains):
            raise ConfigError(
                f"method.meta_test_domains is {config.meta_test_domains} but there are {len(self.domains)} "
                "source domains; at least one must stay for meta-train"
            )

    def split(self) -> tuple[list, list]:
        """This step's (meta-train, meta-test) domains: a permutation seeded by ``seed`` and the step."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        order = torch.randperm(len(self.domains), generator=generator).tolist()
        k = self.config.meta_test_domains
        return [self.domains[i] for i in order[k:]], [self.domains[i] for i in order[:k]]

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        meta_train_domains, meta_test_domains = self.split()
        meta_train = self.risks(self.views(batch, meta_train_domains)).mean()

        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = [self.model.get_parameter(n) for n in names]
        grads = torch.autograd.grad(
            meta_train,
            params,
            create_graph=not self.config.first_order,
            retain_graph=True,  # meta_train itself is back-propagated by the weighting afterwards
            allow_unused=True,
        )
        alpha = self.config.inner_lr
        adapted = {
            n: p if g is None else p - alpha * (g.detach() if self.config.first_order else g)
            for n, p, g in zip(names, params, grads, strict=True)
        }
        meta_test = self.risks(self.adapted_views(batch, meta_test_domains, adapted)).mean()
        return StepOutput({"meta_train": meta_train, "meta_test": self.config.beta * meta_test})

    def adapted_views(
        self, batch: dict[str, Batch], domains: list, adapted: dict[str, Tensor]
    ) -> list[DomainView]:
        """The task outputs of ``domains`` under the adapted parameters θ' (one call per domain)."""
        views = []
        for d in domains:
            data = batch[d.name]
            outputs = functional_call(self.model, adapted, (data.x,))
            views.append(
                DomainView(d.name, outputs[self.task], None, data.y[self.task], self.task in data.complete)
            )
        return views
