"""Loss balancing for any named losses, one file per method, registered in ``crosstask.registry.WEIGHTINGS``."""

from crosstask.weighting.base import BalanceContext, Weighting

__all__ = ["BalanceContext", "Weighting"]
