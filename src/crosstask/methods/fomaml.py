"""First-order MAML (Finn et al. 2017, section 5.2): MAML without the second-order term.

The inner loop's gradients are treated as constants, so the meta-gradient is the query loss's gradient at
the adapted parameters, ∇θ' L_query(θ'), applied to θ: one backward pass through the network instead of
through the inner steps. Finn et al. report nearly MAML's accuracy on MiniImagenet.
"""

from __future__ import annotations

from pydantic import Field

from crosstask.methods.maml import MAML
from crosstask.methods.meta_learning import InnerLoopConfig
from crosstask.registry import METHODS


class FOMAMLConfig(InnerLoopConfig):
    first_order: bool = Field(default=True, description="first order (false: second-order MAML)")


@METHODS.register("fomaml", config=FOMAMLConfig)
class FOMAML(MAML):
    """First-order MAML: the meta-gradient is the query gradient at the adapted parameters."""
