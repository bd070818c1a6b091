"""LoRA adapters for crosstask models, through the ``peft`` library.

LoRA: Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen 2022, "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR; eq. 3: a frozen layer ``h = W₀x`` becomes

    h = W₀x + (α / r) · B A x,   A ∈ R^{r×k} (random), B ∈ R^{d×r} (zeros at the start)

so training starts from the pretrained function and only ``A`` and ``B`` learn. ``peft`` does this for
``nn.Linear`` and ``nn.Conv2d`` layers (a convolution's ``A`` is a conv with the layer's kernel, ``B`` a 1×1
conv). The model stays a :class:`~crosstask.models.model.MultiTaskModel` (adapters are injected in place)::

    apply_lora(model, r=8, alpha=16)            # every Linear/Conv2d of the backbone; heads keep training
    ...train (method erm, finetune: lora)...
    save_adapter(model, "adapter.pt")           # adapter weights (and heads) only
    load_adapter(fresh_pretrained_model, "adapter.pt")
    merge_lora(model)                           # W₀ + (α/r)·BA folded in: a plain model for deployment

``peft`` is optional: ``pip install 'crosstask[lora]'`` (or ``pip install peft``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from crosstask.config import LoRAConfig, validate_python
from crosstask.errors import ConfigError, DataError, suggest

if TYPE_CHECKING:
    from crosstask.models.model import MultiTaskModel

INSTALL = "pip install 'crosstask[lora]'"
SUPPORTED = (nn.Linear, nn.Conv2d)
FORMAT = "crosstask-lora"


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError(f"LoRA needs the peft package, which is not installed: {INSTALL}") from None
    return peft


def has_lora(model: nn.Module) -> bool:
    """Whether :func:`apply_lora` put adapters into ``model`` (and :func:`merge_lora` has not removed them)."""
    return getattr(model, "lora_settings", None) is not None


def lora_settings(model: nn.Module) -> dict[str, Any]:
    """The settings :func:`apply_lora` was called with; a clear error for a model without adapters."""
    if not has_lora(model):
        raise ConfigError(
            "this model has no LoRA adapters: call crosstask.models.lora.apply_lora(model, ...)"
        )
    return dict(model.lora_settings)


def _targets(model: MultiTaskModel, target_modules: Sequence[str] | None) -> list[str]:
    """Full module names of the Linear/Conv2d layers to adapt, in model order."""
    if target_modules is None:
        chosen = {
            id(m) for backbone in model.backbones() for m in backbone.modules() if isinstance(m, SUPPORTED)
        }
    else:
        chosen = set()
        for entry in target_modules:
            matches = [m for name, m in model.named_modules() if name == entry or name.endswith("." + entry)]
            layers = {id(sub) for m in matches for sub in m.modules() if isinstance(sub, SUPPORTED)}
            if not layers:
                candidates = [n for n, m in model.named_modules() if isinstance(m, SUPPORTED)]
                what = "no module" if not matches else "no Linear or Conv2d layer"
                raise ConfigError(
                    f"lora target_modules: '{entry}' names {what}.{suggest(entry, candidates)} LoRA adapts "
                    f"nn.Linear and nn.Conv2d layers; this model's: {', '.join(candidates)}"
                )
            chosen |= layers
    if not chosen:
        raise ConfigError("lora: the backbone has no Linear or Conv2d layer to adapt; name target_modules")
    return [name for name, module in model.named_modules() if id(module) in chosen]


def apply_lora(
    model: MultiTaskModel,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] | None = None,
    dropout: float = 0.0,
    *,
    train_heads: bool = True,
) -> MultiTaskModel:
    """Inject LoRA adapters into ``model`` in place and freeze everything else (but the heads, with
    ``train_heads``); returns the model.

    ``target_modules`` names layers by the end of their module name (``layer1.0``, ``conv1``, ``heads.digit``);
    a container stands for every Linear/Conv2d inside it. Default: every Linear and Conv2d of the backbone(s).
    Call it after loading the pretrained weights (they become the frozen ``W₀``).
    """
    settings = validate_python(
        LoRAConfig,
        {
            "r": r,
            "alpha": alpha,
            "target_modules": target_modules,
            "dropout": dropout,
            "train_heads": train_heads,
        },
        "lora",
    )
    if has_lora(model):
        raise ConfigError("this model already has LoRA adapters; apply_lora once (merge_lora removes them)")
    peft = _peft()
    targets = _targets(model, settings.target_modules)
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        target_modules=targets,
        lora_dropout=settings.dropout,
        bias="none",
    )
    peft.inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():  # peft froze the rest already; make it explicit
        param.requires_grad_(".lora_" in name)
    if settings.train_heads:
        model.heads.requires_grad_(True)
    model.lora_settings = settings.model_dump(mode="json")
    return model


def _is_adapter_key(key: str, settings: dict[str, Any]) -> bool:
    return ".lora_" in key or (settings["train_heads"] and key.startswith("heads."))


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors only: the LoRA weights, and the heads with ``train_heads``."""
    settings = lora_settings(model)
    return {k: v for k, v in model.state_dict().items() if _is_adapter_key(k, settings)}


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapter (settings and :func:`lora_state_dict`) to ``path``, atomically; returns the path."""
    from crosstask.checkpoint import save_checkpoint

    path = Path(path)
    save_checkpoint(
        path,
        {"format": FORMAT, "version": 1, "settings": lora_settings(model), "state": lora_state_dict(model)},
    )
    return path


def load_adapter(model: MultiTaskModel, path: str | os.PathLike) -> MultiTaskModel:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (the pretrained model it was trained on);
    adapters are injected first when the model has none. Returns the model."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"LoRA adapter file not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors vary
        raise DataError(f"{path}: cannot read it as a LoRA adapter ({exc})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise DataError(
            f"{path} is not a crosstask LoRA adapter (written by crosstask.models.lora.save_adapter)"
        )
    if has_lora(model):
        if lora_settings(model) != saved["settings"]:
            raise ConfigError(
                f"{path}: the adapter was made with {saved['settings']}, the model has {lora_settings(model)}"
            )
    else:
        apply_lora(model, **saved["settings"])
    own, state = lora_state_dict(model), saved["state"]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape of {wrong[:3]}"
        )
        raise DataError(
            f"{path}: the adapter does not fit this model ({detail}); was it trained on the same architecture?"
        )
    model.load_state_dict(state, strict=False)
    return model


def merge_lora(model: MultiTaskModel) -> MultiTaskModel:
    """Fold every adapter into its layer (``W = W₀ + (α/r)·B A``) and put the plain layer back: the same
    function, no peft needed to run it. In place; returns the model, every parameter trainable again."""
    lora_settings(model)  # a clear error without adapters
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    model.requires_grad_(True)
    del model.lora_settings
    return model
