"""LoRA fine-tuning (Hu et al. 2022, ICLR): only the low-rank adapters (and the heads) train. The model must
carry adapters: ``model.lora`` in a config, or :func:`crosstask.models.lora.apply_lora` before ``fit``
(peft; ``pip install 'crosstask[lora]'``). The run also saves the adapter alone (``adapter.pt``)."""

from __future__ import annotations

from crosstask.engine.strategy import Strategy
from crosstask.errors import ConfigError
from crosstask.models.lora import has_lora
from crosstask.registry import FINETUNE, ComponentConfig


@FINETUNE.register("lora", config=ComponentConfig)
class LoRA(Strategy):
    """Train only the LoRA adapters injected by model.lora (and the heads)."""

    def setup(self) -> None:
        if not has_lora(self.model):
            raise ConfigError(
                "method.finetune: lora needs a model with LoRA adapters (model.lora: {r: 8, alpha: 16}, or "
                "crosstask.models.lora.apply_lora(model) before fit)"
            )
