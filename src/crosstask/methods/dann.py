"""DANN: domain-adversarial training (Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by
Backpropagation", ICML; Ganin et al. 2016, "Domain-Adversarial Training of Neural Networks", JMLR).

A domain discriminator learns to tell source features from target features; a gradient-reversal layer
between it and the feature extractor makes the features indistinguishable. Losses: ``source`` (the task
loss on source) and ``transfer`` (the discriminator's binary cross-entropy, through the reversal layer).
The paper's objective ``L_source + λ·L_transfer`` is ``weighting: {name: static, weights: {transfer: λ}}``;
the reversal coefficient warms up from 0 (``reversal``, ``warmup_alpha``, ``warmup_steps``).

Source and target features go through the discriminator in one pass, so its batch normalization sees both
domains (as in TLlib; ``batch_norm: false`` gives a plain MLP discriminator with dropout instead). With a
labeled target stream (semi-supervised), its task loss is ``target``; the alignment is between the source
and the unlabeled target stream. Any task kind works (the discriminator only reads features).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.modules.discriminator import DomainDiscriminator, discriminate, domain_loss
from crosstask.modules.grl import ReversalConfig, reverse_gradient
from crosstask.registry import METHODS


class DANNConfig(AdaptationConfig, ReversalConfig):
    hidden: int = Field(default=1024, ge=1, description="width of the discriminator's two hidden layers")
    batch_norm: bool = Field(
        default=True,
        description="batch normalization in the discriminator (TLlib); false: dropout 0.5 (paper)",
    )


@METHODS.register("dann", config=DANNConfig)
class DANN(Adaptation):
    """Domain-adversarial training: a discriminator through gradient reversal (Ganin & Lempitsky 2015)."""

    config: DANNConfig
    classification_only = False

    def __init__(self, config: DANNConfig, model, streams):
        super().__init__(config, model, streams)
        features = model.architecture.out_features(self.task)
        self.modules["discriminator"] = DomainDiscriminator(features, config.hidden, config.batch_norm)

    def transfer(self, views: Views) -> dict[str, Tensor]:
        coefficient = self.config.coefficient(self.step, self.total_steps)
        source, target = discriminate(
            self.modules["discriminator"],
            reverse_gradient(views.source.features, coefficient),
            reverse_gradient(views.target.features, coefficient),
        )
        return {"transfer": self.config.trade_off * domain_loss(source, target)}
