"""Multi-Task Attention Network (MTAN).

Liu, Johns & Davison (2019), "End-to-End Multi-Task Learning with Attention", CVPR. One shared trunk (the
global feature pool) and, per task, a soft attention module at every stage of it. At stage ``j`` with shared
output ``p_j``, task ``k``'s mask is

    a_j = g_j([p_j, f_j(â_{j-1})])        (g_j: 1×1 conv, BN, ReLU, 1×1 conv, BN, sigmoid)
    â_j = a_j ⊙ p_j

where ``â_{j-1}`` are the task's attended features of the previous stage and ``f_j`` (3×3 conv, BN, ReLU,
then pooling to ``p_j``'s resolution) brings them to ``p_j``'s shape; the first stage's mask reads ``p_1``
alone. The task's features are its attended features of the last stage. Our stages expose only their
outputs, so the masks read ``p_j`` where the paper reads a feature inside block ``j``.

Built for convolutional backbones (feature maps ``(n, C, H, W)``), it works on vector stages too (an
``mlp`` backbone, a bottleneck, the final pooled features): there the convolutions are linear layers, and
a feature map followed by a vector stage is reduced by its channel means. The attention layers are lazy,
sized by the first forward pass.

The trunk is shared; each task owns its attention modules. There is no single shared representation: the
output of every stage reaches the tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.errors import ConfigError
from crosstask.models.architectures._blocks import LazyAnyRankBatchNorm, LazyProjection, checked_stages
from crosstask.models.architectures.base import Architecture
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


def _check_rank(h: Tensor) -> None:
    if h.dim() not in (2, 4):
        raise ConfigError(
            f"architecture 'mtan' attends to feature maps (n, C, H, W) or vectors (n, C), but a stage of this "
            f"backbone gives shape {tuple(h.shape)}; use a convolutional backbone (lenet, resnet18/34/50) or mlp"
        )


class AttentionModule(nn.Module):
    """One task's attention at one stage: ``mask = g([p, f(previous)])``, returns ``mask ⊙ p``."""

    def __init__(self, first: bool):
        super().__init__()
        # f: brings the previous attended features to this stage's width (absent at the first stage)
        self.f_conv = None if first else LazyProjection(kernel_size=3)
        self.f_norm = None if first else LazyAnyRankBatchNorm()
        self.g_conv1, self.g_norm1 = LazyProjection(), LazyAnyRankBatchNorm()
        self.g_conv2, self.g_norm2 = LazyProjection(), LazyAnyRankBatchNorm()

    def forward(self, p: Tensor, previous: Tensor | None) -> Tensor:
        _check_rank(p)
        channels = p.shape[1]
        z = p
        if previous is not None and self.f_conv is not None and self.f_norm is not None:
            if previous.dim() == 4 and p.dim() == 2:
                previous = previous.flatten(2).mean(-1)  # a feature map before a vector stage
            elif previous.dim() == 2 and p.dim() == 4:
                raise ConfigError(
                    f"architecture 'mtan' cannot attend to a feature map {tuple(p.shape)} after a vector stage"
                )
            u = F.relu(self.f_norm(self.f_conv(previous, channels)))
            if u.dim() == 4 and u.shape[-2:] != p.shape[-2:]:
                u = F.adaptive_avg_pool2d(u, p.shape[-2:])
            z = torch.cat([p, u.to(p.dtype)], dim=1)
        hidden = F.relu(self.g_norm1(self.g_conv1(z, channels)))
        mask = torch.sigmoid(self.g_norm2(self.g_conv2(hidden, channels)))
        return mask.to(p.dtype) * p


@ARCHITECTURES.register("mtan", config=ComponentConfig)
class MTAN(Architecture):
    """A shared trunk with a soft attention module per task at every stage (for conv and vector stages)."""

    def __init__(self, config: ComponentConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks)
        self.trunk = make_trunk()
        self._stages = checked_stages(self.trunk, "mtan")  # views of the trunk's modules: a plain list
        self.attention = nn.ModuleList(
            nn.ModuleList(AttentionModule(first=j == 0) for j in range(len(self._stages)))
            for _ in self.task_names
        )

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], None]:
        attended: list[Tensor | None] = [None] * len(self.task_names)
        p = x
        for j, stage in enumerate(self._stages):
            p = stage(p)
            attended = [
                modules[j](p, previous) for modules, previous in zip(self.attention, attended, strict=True)
            ]
        return dict(zip(self.task_names, attended, strict=True)), None  # type: ignore[arg-type]

    def out_features(self, task: str) -> int:
        return self.trunk.num_features

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.attention[self.task_names.index(task)].parameters()
