"""CORAL: correlation alignment of deep features, for domain adaptation and for domain generalization.

One registered method, two modes, picked from the training streams:

- **Domain adaptation** (an unlabeled target stream is present, or ``method.target`` is set): Deep CORAL
  (Sun & Saenko 2016, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016 Workshops).
  The source and target features' covariances are aligned with the loss of equation 1,
  ``‖C_S − C_T‖²_F / (4d²)`` (:func:`crosstask.modules.coral.coral_loss`); objective (equation 6)
  ``ℓ_source + λ ℓ_CORAL``. Losses ``source`` (and ``target`` with a ``labeled_target`` stream) and
  ``transfer``. Stream keys as every adaptation method (``source``, ``target``, ``labeled_target``).
- **Domain generalization** (every training stream labeled): multi-domain CORAL as in DomainBed (Gulrajani &
  Lopez-Paz 2021, "In Search of Lost Domain Generalization", ICLR): the mean over all pairs of source
  domains of a mean-matching term ``‖μ_i − μ_j‖²/d`` plus the CORAL loss. Losses ``risk`` (the mean of the
  domain risks) and ``transfer``. Keys ``task`` and ``domains`` as every generalization method. Unlike
  DomainBed, whose covariance term is the mean of squared entries (``/d²``), the CORAL term keeps the
  paper's ``/(4d²)``.

In both modes λ is ``method.trade_off``, multiplied into the objective ``transfer`` (DomainBed's default
γ = 1; Sun & Saenko pick λ so that the two losses are of the same size at the end of training). ``match_mean`` adds the mean term (default: on in generalization, as
DomainBed; off in adaptation, as the paper).
"""

from __future__ import annotations

from itertools import combinations

import torch
from pydantic import Field
from torch import Tensor

from crosstask.engine.method import Method, StreamSpec
from crosstask.errors import ConfigError
from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.methods.generalization import DomainView, Generalization, GeneralizationConfig
from crosstask.modules.coral import coral_loss, mean_distance
from crosstask.registry import METHODS


class CORALConfig(AdaptationConfig, GeneralizationConfig):
    match_mean: bool | None = Field(
        default=None,
        description="also match feature means (default: true for generalization, false for adaptation)",
    )


def adapts(config: CORALConfig, streams: list[StreamSpec]) -> bool:
    """Adaptation when there is an unlabeled target (or one is named); generalization otherwise."""
    return config.target is not None or any(not s.labeled for s in streams)


@METHODS.register("coral", config=CORALConfig)
class CORAL(Method):
    """CORAL: align feature covariances, source vs target (Sun & Saenko 2016) or across source domains."""

    config: CORALConfig

    def __new__(cls, config: CORALConfig, model=None, streams=None):
        # Building ``CORAL`` builds one of its two modes; Python then runs that class's ``__init__``.
        if cls is CORAL:
            cls = DeepCORAL if adapts(config, streams or []) else CORALGeneralization
        return super().__new__(cls)


class DeepCORAL(CORAL, Adaptation):
    """Deep CORAL domain adaptation: source vs unlabeled target features (Sun & Saenko 2016)."""

    def __init__(self, config: CORALConfig, model, streams):
        if config.domains is not None:
            raise ConfigError(
                "method.domains applies to coral without target data (domain generalization); with an "
                "unlabeled target stream coral adapts from method.source to method.target"
            )
        super().__init__(config, model, streams)

    def transfer(self, views: Views) -> dict[str, Tensor]:
        source, target = views.source.features, views.target.features
        loss = coral_loss(source, target)
        if self.config.match_mean:
            loss = loss + mean_distance(source, target)
        return {"transfer": self.config.trade_off * loss}


class CORALGeneralization(CORAL, Generalization):
    """Multi-domain CORAL: risks plus the mean pairwise mean and covariance distance (DomainBed)."""

    objective_losses = ("risk", "transfer")

    def __init__(self, config: CORALConfig, model, streams):
        given = [k for k in ("source", "labeled_target") if getattr(config, k) is not None]
        if given:
            raise ConfigError(
                f"method.{given[0]} applies to coral with an unlabeled target stream (domain adaptation); "
                "every training stream here is labeled, so coral aligns them all (pick some with method.domains)"
            )
        super().__init__(config, model, streams)

    def objective(self, views: list[DomainView]) -> dict[str, Tensor]:
        features = [self.features(v) for v in views]
        match_mean = self.config.match_mean is not False
        pairs = []
        for a, b in combinations(features, 2):
            distance = coral_loss(a, b)
            pairs.append(distance + mean_distance(a, b) if match_mean else distance)
        return {
            "risk": self.risks(views).mean(),
            "transfer": self.config.trade_off * torch.stack(pairs).mean(),
        }
