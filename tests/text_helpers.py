"""Tiny text fixtures built in the tests: a word-level tokenizer and a randomly initialised BERT, so the text
tests need neither the MiniLM package nor the benchmark data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
PAD, UNK, CLS, SEP = range(4)
WORDS = ["good", "bad", "great", "awful", "movie", "book", "the", "a", "is", "not", "café", "&", '"', "."]
WORDS += [f"w{i}" for i in range(300)]
VOCAB = {token: i for i, token in enumerate(SPECIALS + WORDS)}


def save_tokenizer(path: Path, specials: list[str] = SPECIALS) -> Path:
    """A whitespace word-level tokenizer that wraps each text in [CLS] ... [SEP], saved as tokenizer.json."""
    pytest.importorskip("transformers", reason="text needs transformers (pip install 'crosstask[nlp]')")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]" if "[UNK]" in specials else None))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer.add_special_tokens(specials)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def save_tiny_bert(folder: Path, vocab_size: int = len(VOCAB), width: int = 16, layers: int = 2) -> Path:
    """A randomly initialised BERT (seeded) saved with ``save_pretrained``: what a local model folder holds."""
    transformers = pytest.importorskip("transformers", reason="text needs transformers")
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder
