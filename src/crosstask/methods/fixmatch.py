"""FixMatch: pseudo-labels from a weak view, consistency on a strong view (Sohn et al. 2020, "FixMatch:
Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS), as a domain-adaptation method
(the unlabeled data is the target domain).

Each target batch is augmented twice on the fly (:mod:`crosstask.modules.augment`): a weak view α(u) (flip
and shift) and a strong view A(u) (RandAugment-like operations and Cutout; noise and feature dropout for
non-image inputs). The weak view's prediction q = p(y | α(u)) becomes a hard label where it is confident, and
the strong view is trained to predict it (eq. 4):

    L_consistency = (1/μB) Σ_b 1[max q_b ≥ τ] · H(argmax q_b, p(y | A(u_b)))

with τ = 0.95 (``threshold``) and λ_u = 1 (the static weight of ``consistency``). The source batch is weakly
augmented too, as the paper's labeled batch (``augment_source``). The source, weak and strong batches go
through the model in one forward pass, as in the paper's implementation, so batch normalization sees all of
them. The paper's ratio μ of unlabeled to labeled batch size (7) is the target stream's ``batch_size``.
Losses: ``source`` and ``consistency``; logged: ``confident``, the fraction of target samples above τ.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from crosstask.data.streams import Batch
from crosstask.engine.method import StepOutput
from crosstask.errors import ConfigError
from crosstask.methods.adaptation import Adaptation, AdaptationConfig, View, Views
from crosstask.methods.pseudo_label import confident_cross_entropy
from crosstask.modules.augment import Augment, AugmentConfig
from crosstask.registry import METHODS


class FixMatchConfig(AdaptationConfig, AugmentConfig):
    threshold: float = Field(
        default=0.95, ge=0.0, le=1.0, description="least weak-view probability of a pseudo-label (τ)"
    )
    augment_source: bool = Field(
        default=True, description="weakly augment the labeled batches too, as the paper does"
    )


@METHODS.register("fixmatch", config=FixMatchConfig)
class FixMatch(Adaptation):
    """Consistency of strongly augmented target samples with confident weak-view pseudo-labels (Sohn et al. 2020)."""

    config: FixMatchConfig
    aligns_features = False  # it adapts the outputs, so frozen features are fine
    transfer_losses = ("consistency",)

    def __init__(self, config: FixMatchConfig, model, streams):
        super().__init__(config, model, streams)
        # the run's seed (seed_everything) picks the augmentations; the generator's state is checkpointed
        self.augment = Augment(config, seed=torch.initial_seed() + 1)

    def _labeled(self, batch: dict[str, Batch], name: str) -> Tensor:
        x = batch[name].x
        return self.augment.weak(x) if self.config.augment_source else x

    def setup(self) -> None:
        if isinstance(self.model.input_shape, dict):
            raise self._no_dict_inputs()
        super().setup()

    def _no_dict_inputs(self) -> ConfigError:
        return ConfigError(
            "method 'fixmatch' makes weak and strong augmentations of image or vector tensors; this data gives "
            "dict inputs (token ids, several modalities), which it cannot augment. Use a method without "
            "augmentations (pseudo_label, mcc, dann, ...)"
        )

    def training_step(self, batch: dict[str, Batch]) -> StepOutput:
        target = batch[self.target.name].x
        if not isinstance(target, Tensor):
            raise self._no_dict_inputs()
        labeled = [s for s in (self.source, self.labeled_target) if s is not None]
        inputs = [self._labeled(batch, s.name) for s in labeled]
        inputs += [self.augment.weak(target), self.augment.strong(target)]
        pairs, joint = self.forward_views(inputs)
        found: dict[str, View] = {}
        for spec, (logits, features) in zip(labeled, pairs, strict=False):
            data = batch[spec.name]
            found[spec.name] = View(logits, features, data.y.get(self.task), self.task in data.complete)
        (weak_logits, weak_features), (strong_logits, _) = pairs[-2:]
        views = Views(
            found.get(self.source.name) if self.source else None,
            View(weak_logits, weak_features),
            found.get(self.labeled_target.name) if self.labeled_target else None,
            joint,
        )
        consistency, mask = confident_cross_entropy(strong_logits, weak_logits, self.config.threshold)
        return self.step_output(
            views, {"consistency": self.config.trade_off * consistency}, {"confident": mask.mean()}
        )

    def transfer(self, views: Views) -> dict[str, Tensor]:  # training_step computes it from two views
        raise NotImplementedError("FixMatch computes its loss in training_step, from two augmented views")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "augment": self.augment.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "augment" in state:
            self.augment.load_state_dict(state["augment"])
