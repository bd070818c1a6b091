"""CDAN: conditional adversarial domain adaptation (Long, Cao, Wang & Jordan 2018, "Conditional Adversarial
Domain Adaptation", NeurIPS).

The domain discriminator ``D`` sees the features ``f`` conditioned on the classifier's prediction
``g = softmax(logits)`` through the multilinear map ``T(f, g) = f ⊗ g`` or, when ``dim(f) · C`` exceeds 4096,
the randomized multilinear map (output width 1024; see :mod:`crosstask.modules.multilinear`). The paper's
objective

    min_G  L_source − λ·E(D, G),    min_D  E(D, G),
    E(D, G) = −E_s log D(T(f, g)) − E_t log(1 − D(T(f, g)))

is the discriminator's cross-entropy ``E`` as ``transfer``, with a gradient-reversal layer between ``T`` and
``D`` (warm-up as in DANN). ``g`` enters ``T`` without gradient, as in the authors' code and TLlib.

CDAN+E (``entropy: true``, the default) weights each sample of ``E`` by ``w = 1 + exp(−H(g))``, ``H`` the
entropy of the prediction, normalized within each domain: confident, easy-to-transfer examples count more.
Losses: ``source`` and ``transfer``; ``λ`` is ``weighting: {name: static, weights: {transfer: λ}}`` (the paper
and TLlib use λ = 1).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.modules.discriminator import DomainDiscriminator, discriminate, domain_loss
from crosstask.modules.grl import ReversalConfig, reverse_gradient
from crosstask.modules.multilinear import MultilinearMap, RandomizedMultilinearMap
from crosstask.registry import METHODS


class CDANConfig(AdaptationConfig, ReversalConfig):
    hidden: int = Field(default=1024, ge=1, description="width of the discriminator's two hidden layers")
    batch_norm: bool = Field(
        default=True, description="batch normalization in the discriminator (TLlib); false: dropout 0.5"
    )
    entropy: bool = Field(
        default=True, description="CDAN+E: weight samples by 1 + exp(-entropy of the prediction)"
    )
    randomized: bool | None = Field(
        default=None,
        description="use the randomized multilinear map (default: when features x classes > randomize_above)",
    )
    randomized_dim: int = Field(default=1024, ge=1, description="output width of the randomized map")
    randomize_above: int = Field(
        default=4096,
        ge=1,
        description="features x classes above which the randomized map is used (paper: 4096)",
    )


def prediction_entropy(probabilities: Tensor) -> Tensor:
    """``H(p) = −Σ_c p_c log p_c`` per row."""
    return -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(1)


@METHODS.register("cdan", config=CDANConfig)
class CDAN(Adaptation):
    """Conditional adversarial adaptation: a discriminator on f ⊗ softmax(g), optionally entropy-weighted."""

    config: CDANConfig

    def __init__(self, config: CDANConfig, model, streams):
        super().__init__(config, model, streams)
        features = model.architecture.out_features(self.task)
        classes = self.tasks[self.task].num_classes
        randomized = config.randomized
        if randomized is None:
            randomized = features * classes > config.randomize_above
        self.modules["map"] = (
            RandomizedMultilinearMap(features, classes, config.randomized_dim)
            if randomized
            else MultilinearMap(features, classes)
        )
        self.modules["discriminator"] = DomainDiscriminator(
            self.modules["map"].out_features, config.hidden, config.batch_norm
        )

    def transfer(self, views: Views) -> dict[str, Tensor]:
        coefficient = self.config.coefficient(self.step, self.total_steps)
        conditioning = self.modules["map"]
        source_p = views.source.probabilities.detach()
        target_p = views.target.probabilities.detach()
        source_logits, target_logits = discriminate(
            self.modules["discriminator"],
            reverse_gradient(conditioning(views.source.features, source_p), coefficient),
            reverse_gradient(conditioning(views.target.features, target_p), coefficient),
        )
        if not self.config.entropy:
            return {"transfer": self.config.trade_off * domain_loss(source_logits, target_logits)}
        source_w = 1.0 + torch.exp(-prediction_entropy(source_p))
        target_w = 1.0 + torch.exp(-prediction_entropy(target_p))
        return {
            "transfer": self.config.trade_off * domain_loss(source_logits, target_logits, source_w, target_w)
        }
