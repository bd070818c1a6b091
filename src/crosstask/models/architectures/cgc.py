"""Customized Gate Control (CGC): shared experts plus experts of each task, one gate per task.

Tang, Liu, Zhao & Gong (2020), "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys: CGC is PLE's single-level building block. There are
``shared_experts`` experts for all tasks and ``task_experts`` experts per task, each a copy of the trunk;
task ``k``'s gate, ``softmax(W_k x)`` on the flattened input, mixes task ``k``'s experts and the shared
ones.

The shared experts are the shared parameters; a task owns its experts and its gate. The shared
representation is the stacked shared-expert outputs ``(n, shared_experts, d)``: a task's own experts
hold no shared parameter, so every path from a task's output to a shared parameter passes through it.
"""

from __future__ import annotations

from crosstask.models.architectures.ple import PLE, ExpertsConfig
from crosstask.registry import ARCHITECTURES


class CGCConfig(ExpertsConfig):
    """Keys of CGC."""


@ARCHITECTURES.register("cgc", config=CGCConfig)
class CGC(PLE):
    """Shared experts plus each task's own experts, mixed by one softmax gate per task (PLE's single level)."""

    def level_count(self, n_stages: int) -> int:
        return 1
