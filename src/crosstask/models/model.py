"""The two models our users bring: a transfer model and a multi-task model.

Both are a sharing architecture over a backbone plus one head per task; they differ in intent (a pretrained
body with new heads, vs. several tasks trained together). A model knows how to rebuild itself: its
``spec()`` is saved in every checkpoint, so ``MultiTaskModel.from_checkpoint`` needs no config file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from crosstask.data.inputs import item_shape
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError, RunError
from crosstask.models.architectures.base import Architecture
from crosstask.models.backbones.base import Backbone, ModuleBackbone, build_backbone
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, BACKBONES, HEADS, ComponentConfig

log = logging.getLogger(__name__)


@dataclass
class ModelOutput:
    """Per-task outputs and the shared representation (``None`` when the architecture has none)."""

    outputs: dict[str, Tensor]
    shared: Tensor | None


def _component(value: Any, registry: Any, where: str) -> ComponentConfig:
    from crosstask.components import component, validate_component

    return validate_component(component(registry), value, where)


def _tasks(tasks: Sequence[Task | Mapping[str, Any]]) -> list[Task]:
    out = [t if isinstance(t, Task) else Task.model_validate(dict(t)) for t in tasks]
    if not out:
        raise ConfigError("a model needs at least one task")
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"task names must be unique, got {names}")
    return out


class MultiTaskModel(nn.Module):
    """A shared network with one head per task: ``model(x) -> {task: output}``.

    Args:
        backbone: a registered backbone name (``"resnet18"``), its config (``{"name": "mlp", "hidden": [64]}``),
            or your own ``nn.Module`` with an int ``num_features`` (and optionally ``forward_features``).
        tasks: the tasks, as :class:`Task` objects or mappings.
        architecture: a registered sharing architecture, by name or config (``crosstask list architecture``).
        weights: pretrained backbone weights: a local file or, for torchvision backbones, a weights name.
        bottleneck: width of a shared Linear-BatchNorm-ReLU layer after the backbone, or its config mapping.
        head: the per-task head, by name or config (``"linear"``, ``{"name": "mlp", "hidden": [128]}``).
        input_shape: the shape of one sample, needed by backbones such as ``mlp`` and ``lenet``.
    """

    def __init__(
        self,
        backbone: str | Mapping[str, Any] | ComponentConfig | nn.Module,
        tasks: Sequence[Task | Mapping[str, Any]],
        *,
        architecture: str | Mapping[str, Any] | ComponentConfig = "hard_sharing",
        weights: str | os.PathLike | None = None,
        bottleneck: int | Mapping[str, Any] | None = None,
        head: str | Mapping[str, Any] | ComponentConfig = "linear",
        input_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        from crosstask.config import BottleneckConfig

        self.tasks = _tasks(tasks)
        self.input_shape = _shape(input_shape)
        self.architecture_config = _component(architecture, ARCHITECTURES, "architecture")
        if isinstance(bottleneck, int):
            bottleneck = {"dim": bottleneck}
        self.bottleneck_config = BottleneckConfig.model_validate(dict(bottleneck)) if bottleneck else None
        self.head_config = _component(head, HEADS, "head")

        if isinstance(backbone, nn.Module):
            if weights is not None:
                raise ConfigError(
                    "weights= applies to registered backbones; load your module's weights yourself"
                )
            self.backbone_config = None
            custom = backbone if isinstance(backbone, Backbone) else ModuleBackbone(backbone)
            built = [False]

            def make_backbone() -> Backbone:
                if built[0]:
                    raise ConfigError(
                        "this architecture needs several backbones; pass a backbone name, not a module"
                    )
                built[0] = True
                return custom
        else:
            config = _component(backbone, BACKBONES, "backbone")
            if weights is not None:
                config = config.model_copy(update={"weights": str(weights)})
            self.backbone_config = config

            def make_backbone() -> Backbone:
                return build_backbone(config, self.input_shape)

        def make_trunk() -> Trunk:
            b = self.bottleneck_config
            return Trunk(make_backbone(), b.dim, b.batch_norm, b.dropout) if b else Trunk(make_backbone())

        entry = ARCHITECTURES.get(self.architecture_config.name)
        self.architecture: Architecture = entry.obj(self.architecture_config, make_trunk, self.tasks)
        build_head = HEADS.get(self.head_config.name).obj
        self.heads = nn.ModuleDict(
            {
                t.name: build_head(self.head_config, t, self.architecture.out_features(t.name))
                for t in self.tasks
            }
        )
        self._squeeze = {t.name for t in self.tasks if t.kind == "regression" and t.num_outputs == 1}
        self._frozen: list[nn.Module] = []
        self._materialize()

    def _materialize(self) -> None:
        """Size lazily built layers (gates reading the input) with one dry forward pass, when the input shape
        is known, so that the model has all its parameters before optimizers and checkpoints see it."""
        lazy = any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.parameters())
        if lazy and isinstance(self.input_shape, tuple):
            was_training = self.training
            self.eval()
            with torch.no_grad():
                self.forward_all(torch.zeros(2, *self.input_shape))
            self.train(was_training)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_all(x).outputs

    def forward_all(self, x: Tensor) -> ModelOutput:
        """Outputs by task and the shared representation (for methods and weightings that need it)."""
        features, shared = self.architecture(x)
        outputs = {name: head(features[name]) for name, head in self.heads.items()}
        for name in self._squeeze:
            outputs[name] = outputs[name].squeeze(-1)
        return ModelOutput(outputs, shared)

    # ------------------------------------------------------------------ parameters

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def backbones(self) -> list[Backbone]:
        return self.architecture.backbones()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        for backbone in self.backbones():
            yield from backbone.parameters()

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.architecture.shared_parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.architecture.task_parameters(task)
        yield from self.heads[task].parameters()

    def gates(self) -> dict[str, Tensor]:
        return self.architecture.gates()

    def regularization(self) -> Tensor | None:
        return self.architecture.regularization()

    # ------------------------------------------------------------------ fine-tuning

    def freeze_backbone(self, until: str | None = None) -> list[str]:
        """Freeze the backbone(s) from the input up to layer ``until`` (inclusive), or entirely.

        Frozen layers also keep their normalization statistics (they stay in eval mode). Returns the frozen
        layer names.
        """
        frozen: list[str] = []
        for backbone in self.backbones():
            names = backbone.layer_names()
            layers = backbone.layers_until(until) if until else [backbone]
            for layer in layers:
                layer.requires_grad_(False)
                self._frozen.append(layer)
            frozen = names[: names.index(until) + 1] if until else names
        self.train(self.training)
        return frozen

    def train(self, mode: bool = True) -> MultiTaskModel:
        super().train(mode)
        for layer in self._frozen:
            layer.eval()
        return self

    # ------------------------------------------------------------------ saving and loading

    def spec(self) -> dict[str, Any]:
        """What rebuilds this model (without weights): backbone, architecture, tasks, heads, input shape."""
        return {
            "backbone": self.backbone_config.model_dump(mode="json") if self.backbone_config else None,
            "architecture": self.architecture_config.model_dump(mode="json"),
            "bottleneck": self.bottleneck_config.model_dump(mode="json") if self.bottleneck_config else None,
            "head": self.head_config.model_dump(mode="json"),
            "tasks": [t.model_dump(mode="json", exclude_none=True) for t in self.tasks],
            "input_shape": (
                {k: list(v) for k, v in self.input_shape.items()}
                if isinstance(self.input_shape, dict)
                else list(self.input_shape)
                if self.input_shape
                else None
            ),
            "lora": getattr(self, "lora_settings", None),
        }

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], tasks: Sequence[Task | Mapping[str, Any]] | None = None
    ) -> MultiTaskModel:
        if spec.get("backbone") is None:
            raise RunError(
                "this model was built around a custom backbone module; rebuild it in Python and load_state_dict"
            )
        backbone = {
            k: v for k, v in spec["backbone"].items() if k != "weights"
        }  # weights come from the checkpoint
        model = cls(
            backbone,
            tasks if tasks is not None else spec["tasks"],
            architecture=spec["architecture"],
            bottleneck=spec.get("bottleneck"),
            head=spec.get("head") or "linear",
            input_shape=spec.get("input_shape"),
        )
        if spec.get("lora"):
            from crosstask.models.lora import apply_lora

            apply_lora(model, **spec["lora"])
        return model

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, tasks: Sequence[Task | Mapping[str, Any]] | None = None
    ) -> MultiTaskModel:
        """Rebuild a model from a crosstask checkpoint or run directory.

        With ``tasks``, heads of tasks with the same name and shape keep their weights and the others start
        fresh: the usual way to transfer a trained body to new tasks.
        """
        from crosstask.checkpoint import read_model_checkpoint

        spec, state = read_model_checkpoint(path)
        model = cls.from_spec(spec, tasks)
        model.load_matching(state, source=str(path))
        return model

    from_run = from_checkpoint

    def load_matching(self, state: Mapping[str, Tensor], source: str = "checkpoint") -> list[str]:
        """Load the tensors whose name and shape match; returns the names loaded. None matching is an error."""
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.parameters()):
            raise RunError(
                f"{source}: this model has layers sized by the first input; pass input_shape= to build it"
            )
        own = self.state_dict()
        matched = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if not matched:
            raise RunError(f"{source}: no tensor matches this model; was it saved from the same backbone?")
        skipped = sorted(set(own) - set(matched))
        if skipped:
            log.info("%s: %d tensors start fresh (e.g. %s)", source, len(skipped), ", ".join(skipped[:3]))
        self.load_state_dict(matched, strict=False)
        return sorted(matched)


class TransferModel(MultiTaskModel):
    """A pretrained backbone with new heads for the target task(s), hard sharing.

    ``TransferModel("resnet18", tasks, weights="resnet18.pth")`` starts from pretrained weights;
    ``TransferModel.from_run("runs/source", tasks)`` starts from a crosstask run. Arguments as for
    :class:`MultiTaskModel`, without ``architecture``.
    """

    def __init__(
        self,
        backbone: str | Mapping[str, Any] | ComponentConfig | nn.Module,
        tasks: Sequence[Task | Mapping[str, Any]],
        **options: Any,
    ):
        if "architecture" in options and options["architecture"] not in (
            "hard_sharing",
            {"name": "hard_sharing"},
        ):
            raise ConfigError("TransferModel uses hard sharing; use MultiTaskModel for other architectures")
        options.pop("architecture", None)
        super().__init__(backbone, tasks, **options)


def infer_input_shape(dataset: torch.utils.data.Dataset) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """The shape of one input sample of ``dataset`` (a dict of shapes for dict inputs)."""
    sample = dataset[0]
    x = sample[0] if isinstance(sample, tuple | list) else sample
    return item_shape(x)


def _shape(shape: Any) -> tuple[int, ...] | dict[str, tuple[int, ...]] | None:
    """An input shape as a tuple, or a dict of tuples for dict inputs (as saved in a spec: lists)."""
    if shape is None:
        return None
    if isinstance(shape, Mapping):
        return {str(k): tuple(int(d) for d in v) for k, v in shape.items()}
    return tuple(int(d) for d in shape)
