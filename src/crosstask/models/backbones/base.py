"""The backbone contract (``forward_features(x)`` + ``num_features``), building by name, loading weights.

A backbone family is one file in this folder::

    @BACKBONES.register("mlp", config=MLPConfig)
    def build_mlp(config: MLPConfig, input_shape: tuple[int, ...] | None) -> Backbone: ...

``input_shape`` is the shape of one sample (``(1, 28, 28)``, ``(40,)``); backbones that need it raise a
clear error when it is unknown. ``Backbone.validate_input(shape)`` says, before training, whether a built
backbone takes samples of another shape (an evaluation set, a second stream).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.errors import ConfigError, DataError, suggest
from crosstask.registry import BACKBONES, ComponentConfig

log = logging.getLogger(__name__)

SampleShape = Union[tuple[int, ...], Mapping[str, tuple[int, ...]]]  # noqa: UP007 (a runtime alias)


class BackboneConfig(ComponentConfig):
    """Keys every backbone accepts."""

    weights: str | None = Field(
        default=None,
        description="pretrained weights: a local file, or a torchvision weights name (e.g. DEFAULT)",
    )


class Backbone(nn.Module):
    """A feature extractor: ``forward_features(x) -> (n, num_features)``."""

    num_features: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def validate_input(self, shape: SampleShape) -> None:
        """Raise :class:`DataError` when this backbone cannot take samples of ``shape``.

        ``shape`` is one sample's shape without the batch dimension: a tuple, or a mapping of tuples for
        dict inputs. Called for every training stream and evaluation set before the first step. The default
        accepts every shape (a custom module: the caller checks it with a dry forward pass).
        """

    def validate_data(self, info: Mapping[str, Any]) -> None:
        """Raise :class:`DataError` when a dataset's ``info`` says its samples were made for another model
        (text tokenized by another tokenizer, say). Called beside :meth:`validate_input`; the default accepts
        every dataset."""

    def same_input(self, shape: SampleShape, expected: SampleShape) -> bool:
        """Whether samples of ``shape`` fit a model built for ``expected`` (the first training domain's
        shape). The default wants them equal; backbones that take any length (token ids) relax it."""
        return shape == expected

    def summarize_input(self, x: Any) -> Tensor:
        """One vector per sample describing the raw input, for layers that read the input itself (the gates of
        MMoE, DSelect-k, CGC and PLE): the input when it is a tensor. Dict inputs (token ids) need a backbone
        that knows what they mean; the default refuses them with one clear error."""
        if isinstance(x, Tensor):
            return x
        raise DataError(
            f"this architecture's gates read the input, but backbone {type(self).__name__} gives no vector summary "
            f"of dict inputs ({', '.join(x)}); give the backbone a summarize_input(x) method, or use an "
            "architecture without input gates (hard_sharing, cross_stitch, mtan, soft_sharing)"
        )

    def stages(self) -> list[nn.Module]:
        """Modules that, applied in turn, compute ``forward_features``: the points where architectures such
        as cross-stitch, MTAN and PLE mix or attend between tasks.

        They are views of the backbone's own modules: keep the backbone registered and hold the stages in a
        plain list. The default is one stage, the whole backbone.
        """
        return [Lambda(self.forward_features)]

    def layer_names(self) -> list[str]:
        """Names of the layers, input to output, that ``freeze_until`` may name."""
        return [
            name
            for name, child in self._container().named_children()
            if any(True for _ in child.parameters())
        ]

    def layers_until(self, name: str) -> list[nn.Module]:
        """The layers from the input up to and including ``name``."""
        names = self.layer_names()
        if name not in names:
            raise ConfigError(
                f"backbone has no layer '{name}'.{suggest(name, names)} Layers, input to output: {', '.join(names)}"
            )
        return [self._container().get_submodule(n) for n in names[: names.index(name) + 1]]

    def _container(self) -> nn.Module:
        """The module whose children are the layers."""
        return self

    def load_pretrained(self, weights: str) -> None:
        """Load weights from a local file (a state dict, possibly nested under 'state_dict' or 'model')."""
        load_state_file(self, weights)


class Lambda(nn.Module):
    """A module calling a function (a stage made of a bound method; holds no parameters of its own)."""

    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


class ModuleBackbone(Backbone):
    """Wraps a user's ``nn.Module`` that has a ``num_features`` attribute (and maybe ``forward_features``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(getattr(module, "num_features", None), int):
            raise ConfigError(
                f"a custom backbone ({type(module).__name__}) needs an int attribute num_features, the width of "
                "the features it returns; set module.num_features = ... before passing it"
            )
        self.module = module
        self.num_features = module.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        fn = getattr(self.module, "forward_features", self.module)
        return fn(x).flatten(1)

    def layer_names(self) -> list[str]:
        return [n for n, c in self.module.named_children() if any(True for _ in c.parameters())]

    def _container(self) -> nn.Module:
        return self.module


def build_backbone(
    config: BackboneConfig | Mapping[str, Any] | str,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
) -> Backbone:
    """Build a registered backbone and load its pretrained weights if the config names any."""
    if not isinstance(config, ComponentConfig):
        from crosstask.config import component, validate_component

        config = validate_component(component(BACKBONES), config, "backbone")
    entry = BACKBONES.get(config.name)
    if isinstance(input_shape, Mapping):
        shape: Any = {str(k): tuple(int(d) for d in v) for k, v in input_shape.items()}
    else:
        shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    backbone = entry.obj(config, shape)
    if config.weights:
        backbone.load_pretrained(config.weights)
    return backbone


def require_shape(input_shape: tuple[int, ...] | None, name: str, rank: int | None = None) -> tuple[int, ...]:
    """The sample shape a backbone needs; a clear error when it is unknown or of the wrong rank."""
    if input_shape is None:
        raise ConfigError(
            f"backbone '{name}' needs the shape of one input sample: pass input_shape=(...) to the model, "
            "e.g. input_shape=dataset[0][0].shape (crosstask run infers it from the data)"
        )
    if isinstance(input_shape, Mapping):
        raise ConfigError(
            f"backbone '{name}' takes one tensor per sample, but the inputs are a dict "
            f"{describe_shape(input_shape)}; use your own nn.Module whose forward takes the dict as the backbone"
        )
    if rank is not None and len(input_shape) != rank:
        raise ConfigError(f"backbone '{name}' expects samples of rank {rank}, got shape {tuple(input_shape)}")
    return input_shape


def describe_shape(shape: SampleShape) -> str:
    """A sample shape for messages: ``(1, 28, 28)`` or ``{input_ids: (64,), attention_mask: (64,)}``."""
    if isinstance(shape, Mapping):
        return "{" + ", ".join(f"{k}: {tuple(v)}" for k, v in shape.items()) + "}"
    return str(tuple(shape))


def tensor_shape(shape: SampleShape, name: str) -> tuple[int, ...]:
    """``shape`` as a tuple; a :class:`DataError` for dict inputs, which backbone ``name`` cannot take."""
    if isinstance(shape, Mapping):
        raise DataError(
            f"backbone '{name}' takes one tensor per sample, but the data gives a dict of inputs "
            f"{describe_shape(shape)}; use a backbone (your own nn.Module) whose forward takes the dict"
        )
    return tuple(int(d) for d in shape)


def require_built_shape(shape: SampleShape, built: tuple[int, int, int], name: str, reason: str) -> None:
    """A :class:`DataError` unless ``shape`` is the image shape a backbone was built for (its layers are sized by
    it: ``reason`` says how)."""
    given = tensor_shape(shape, name)
    if given != built:
        c, h, w = built
        raise DataError(
            f"backbone '{name}' was built for images of shape {built} ({c} channel(s), {h}x{w}) but got samples "
            f"of shape {describe_shape(given)} ({reason}); give every training stream and evaluation set the "
            f"same channels and size (dataset keys such as size: {h})"
        )


def read_state_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict saved with ``torch.save`` (possibly nested under 'state_dict' or 'model').

    Key prefixes ``module.`` (DataParallel) and ``backbone.`` are removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"pretrained weights file not found: {path}. Give the path of a saved state dict (.pt/.pth)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or damaged files
        raise DataError(f"{path}: cannot load it as a PyTorch state dict ({exc})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"{path}: holds a {type(state).__name__} that is not a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


def load_state_file(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a state-dict file into ``module``; every tensor of ``module`` must be found with its shape.

    Tensors the module lacks (a pretrained classifier, say) are ignored.
    """
    state = read_state_file(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise DataError(
            f"{path}: the weights do not fit this backbone; {len(missing)} of its {len(own)} tensors are absent "
            f"(e.g. {', '.join(missing[:3])}). Check that the file was saved from the same architecture."
        )
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise DataError(
            f"{path}: tensor '{k}' has shape {tuple(state[k].shape)} but the backbone expects {tuple(own[k].shape)}"
        )
    extra = len(state) - len(own)
    if extra:
        log.info(
            "%s: ignored %d tensors that are not part of the backbone (e.g. a classifier)",
            Path(path).name,
            extra,
        )
    module.load_state_dict({k: state[k] for k in own})
