"""User tables: a CSV file (plain or gzipped) with named feature columns and one or more label columns.

Every fitted transformation (one-hot categories, numeric mean/std, imputation values, class indices) is
learned from the training rows only. The builder therefore makes the train/val/test partition itself, with
``split_indices`` and the config's fractions and seed, and returns all three splits so that
:func:`~crosstask.data.datasets.base.standard_splits` uses them as they are.

The reading (:class:`CsvOptions`, :func:`read_table`, :func:`resolve_path`), the partition
(:func:`partition_rows`) and the label encoding (:class:`LabelSpec`, :func:`encode_labels`) are public: the
``text`` family reads its CSV files and makes its labels with them.

Example (UCI Adult, two binary tasks)::

    name: tabular
    path: adult/adult.data.gz
    test_path: adult/adult.test.gz
    header: false
    column_names: [age, workclass, fnlwgt, education, education-num, marital-status, occupation, relationship,
                   race, sex, capital-gain, capital-loss, hours-per-week, native-country, income]
    comment: "|"
    labels:
      income: {column: income, positive: [">50K", ">50K."]}
      never_married: {column: marital-status, positive: [Never-married]}
"""

from __future__ import annotations

import codecs
import csv
import gzip
import logging
import math
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, split_indices
from crosstask.errors import DataError, suggest
from crosstask.registry import DATASETS, StrictModel

logger = logging.getLogger(__name__)

DEFAULT_NA_VALUES = ["", "?", "NA", "nan", "NaN", "NAN"]
MISSING_NAME = "<missing>"  # how the fitted "missing" category of a categorical column is named
MANY_CATEGORIES = 200  # above this, one-hot encoding a column is probably a mistake (an id, free text)


class LabelSpec(StrictModel):
    """How one label is made from one column."""

    column: str = Field(min_length=1, description="the column holding the label")
    positive: list[str] | None = Field(
        default=None, min_length=1, description="values meaning 1 (all other values mean 0): a binary label"
    )
    kind: Literal["classification", "regression"] | None = Field(
        default=None,
        description="regression keeps a numeric column as a float target (default classification)",
    )
    classes: list[str] | None = Field(
        default=None,
        min_length=2,
        description="the class values in index order (default: the training rows' values, sorted); give it "
        "when several files must number their classes alike",
    )

    @model_validator(mode="after")
    def _positive_is_a_class(self) -> LabelSpec:
        if self.positive is not None and self.kind == "regression":
            raise ValueError("positive: makes a binary class label; remove it or remove kind: regression")
        if self.classes is not None:
            if self.positive is not None or self.kind == "regression":
                raise ValueError(
                    "classes: lists the values of a class label; remove it, positive: or kind: regression"
                )
            if len(set(self.classes)) < len(self.classes):
                raise ValueError(f"classes: lists a value twice: {self.classes}")
        return self


def expand_labels(value: Any) -> Any:
    """``income: income`` is short for ``income: {column: income}`` (a ``labels:`` mapping)."""
    if isinstance(value, dict):
        return {k: {"column": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


def no_duplicates(value: list[str] | None) -> list[str] | None:
    """``value`` unchanged, or a ValueError naming the entries listed more than once."""
    if value is not None:
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(map(repr, repeated))} more than once; list each column once")
    return value


def file_delimiter(path: Path, config: CsvOptions) -> str:
    """The configured delimiter; a tab for ``.tsv`` files (gzipped or not) when none is configured."""
    if config.delimiter is not None:
        return config.delimiter
    return "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","


class CsvOptions(StrictModel):
    """How a CSV file is parsed: separator, header, names, comments, whitespace (tabular and text)."""

    delimiter: str | None = Field(
        default=None, description="the one-character field separator (default: a tab in .tsv files, else ',')"
    )
    header: bool = Field(default=True, description="the first line names the columns")
    column_names: list[str] | None = Field(
        default=None, description="names for a headerless file (with header: true, they replace its names)"
    )
    comment: str | None = Field(default=None, description="skip lines starting with this prefix")
    strip: bool = Field(default=True, description="strip whitespace around values")

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(
                f"delimiter must be exactly one character, got {value!r}; for values separated by "
                "', ' (such as UCI Adult) use ',' and keep strip: true"
            )
        return value

    @field_validator("comment")
    @classmethod
    def _non_empty_comment(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("comment must be a non-empty prefix such as '#' (or leave it out)")
        return value

    @field_validator("column_names")
    @classmethod
    def _unique_names(cls, value: list[str] | None) -> list[str] | None:
        return no_duplicates(value)

    @model_validator(mode="after")
    def _names_for_headerless(self) -> CsvOptions:
        if not self.header and self.column_names is None:
            raise ValueError("header: false needs column_names: (one name per field, in file order)")
        return self


class PartitionsRows:
    """For dataset families that split their rows themselves (:func:`partition_rows`) and learn classes or
    encoders from the training rows: the split keys then change what the builder loads, so they are part of
    its cache key."""

    def family_params(self) -> dict[str, Any]:
        params = super().family_params()  # type: ignore[misc]
        params.update(val_fraction=self.val_fraction, split_seed=self.split_seed)  # type: ignore[attr-defined]
        if self.test_path is None:  # type: ignore[attr-defined]  # a test file replaces test_fraction
            params["test_fraction"] = self.test_fraction  # type: ignore[attr-defined]
        return params


class TabularConfig(PartitionsRows, DatasetConfig, CsvOptions):
    """Keys of a user CSV table: files, columns, parsing and preprocessing."""

    path: Path = Field(
        description="the CSV file (.gz read transparently); relative: to the cwd, then the data root"
    )
    test_path: Path | None = Field(default=None, description="a second CSV used as the test split")
    labels: dict[str, LabelSpec] = Field(
        min_length=1, description="label name -> column name, or {column, positive, kind}"
    )
    features: list[str] | None = Field(
        default=None, min_length=1, description="feature columns (default: all non-label columns)"
    )
    categorical: list[str] | None = Field(
        default=None,
        description="columns to one-hot encode (default: those holding a value that is not a number)",
    )
    numeric: list[str] | None = Field(default=None, description="columns that must hold numbers")
    na_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NA_VALUES), description="missing values"
    )
    normalize: bool = Field(default=True, description="standardize numeric features (train mean and std)")

    @field_validator("labels", mode="before")
    @classmethod
    def _label_shorthand(cls, value: Any) -> Any:
        return expand_labels(value)

    @field_validator("features", "categorical", "numeric")
    @classmethod
    def _no_duplicates(cls, value: list[str] | None) -> list[str] | None:
        return no_duplicates(value)

    @model_validator(mode="after")
    def _columns_consistent(self) -> TabularConfig:
        label_columns = {spec.column: name for name, spec in self.labels.items()}
        overlap = sorted(set(self.categorical or []) & set(self.numeric or []))
        if overlap:
            raise ValueError(
                f"column(s) {', '.join(overlap)} are listed under both categorical: and numeric:"
            )
        for key in ("features", "categorical", "numeric"):
            for column in getattr(self, key) or []:
                if column in label_columns:
                    raise ValueError(
                        f"column '{column}' is used by labels.{label_columns[column]} and also listed under "
                        f"{key}:; a label column cannot be a feature, remove it from {key}:"
                    )
        if self.features is not None:
            for key in ("categorical", "numeric"):
                outside = [c for c in getattr(self, key) or [] if c not in self.features]
                if outside:
                    raise ValueError(
                        f"{key}: lists {', '.join(outside)}, which features: does not include; add them to "
                        f"features: or remove them from {key}:"
                    )
        return self


# ----------------------------------------------------------------------------- reading


@dataclass
class Table:
    """The rows of one CSV file as strings, by column name, with the file line number of every row."""

    path: Path
    columns: list[str]
    data: dict[str, Sequence[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)


class _Lines:
    """Iterate over a file's lines, skipping comments, remembering where the current CSV record began."""

    def __init__(self, handle: TextIO, comment: str | None):
        self.handle = handle
        self.comment = comment
        self.number = 0  # line number of the last line handed out
        self.record_start: int | None = None

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self.handle, start=1):
            self.number = number
            if self.comment is not None and line.startswith(self.comment):
                continue
            if self.record_start is None:
                self.record_start = number
            yield line


def is_gzipped(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed, by its first bytes (not by its name)."""
    with open(path, "rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


def open_text(path: Path, encoding: str = "utf-8") -> TextIO:
    """Open ``path`` as text, decompressing it when it is gzipped (by content, not by name).

    UTF-8 is read as ``utf-8-sig``, so that a byte order mark at the start is dropped.
    """
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    if is_gzipped(path):
        return gzip.open(path, "rt", encoding=encoding, newline="")  # type: ignore[return-value]
    return open(path, encoding=encoding, newline="")


def undecodable_line(path: Path, encoding: str) -> int | None:
    """The number of the first line of ``path`` that is not ``encoding`` text (None if every line is)."""
    try:
        with gzip.open(path, "rb") if is_gzipped(path) else open(path, "rb") as raw:
            for number, line in enumerate(raw, start=1):
                try:
                    line.decode(encoding)
                except UnicodeDecodeError:
                    return number
    except (OSError, EOFError, zlib.error):
        pass
    return None


def decode_error(path: Path, exc: UnicodeDecodeError, encoding: str | None) -> DataError:
    """The error for a file that is not text in ``encoding`` (None: UTF-8, with no ``encoding:`` key)."""
    line = undecodable_line(path, encoding or "utf-8")
    where = f"{path.name}, line {line}" if line is not None else path.name
    if encoding is None:
        return DataError(f"{where}: not UTF-8 text ({exc}); save the file as UTF-8 [file: {path}]")
    return DataError(
        f"{where}: not {encoding} text ({exc}); save the file as UTF-8, or set encoding: to the file's "
        f"encoding (e.g. latin-1 or cp1252) [file: {path}]"
    )


def read_table(path: Path, config: CsvOptions, encoding: str | None = None) -> Table:
    """Read one CSV file into columns of strings; malformed files raise :class:`DataError` with the line.

    ``encoding`` is the text encoding (default UTF-8); give it when the caller has an ``encoding:`` key,
    which the error for undecodable bytes then names.
    """
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    header_line = 0
    try:
        with open_text(path, encoding or "utf-8") as handle:
            source = _Lines(handle, config.comment)
            for row in csv.reader(source, delimiter=file_delimiter(path, config)):
                start, source.record_start = source.record_start or source.number, None
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if config.strip:
                    row = [value.strip() for value in row]
                if config.header and header is None:
                    header, header_line = row, start
                    continue
                rows.append(row)
                lines.append(start)
    except csv.Error as exc:
        raise DataError(
            f"{path.name}, line {source.number}: cannot parse the CSV ({exc}); fix the quoting of that line "
            f"or set delimiter: (now {file_delimiter(path, config)!r}) [file: {path}]"
        ) from None
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc, encoding) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); replace it with an intact copy") from None

    if config.column_names is not None:
        columns = list(config.column_names)
    elif header is None:
        raise DataError(f"{path}: the file is empty; it needs a header line and data rows")
    else:
        # unnamed header fields (e.g. a written index) still need a name to be addressed by
        columns = [name or f"column_{i + 1}" for i, name in enumerate(header)]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise DataError(
                f"{path.name}, line {header_line}: the header names column(s) "
                f"{', '.join(map(repr, repeated))} more than once; rename them so that each column has "
                "its own name"
            )
    if not rows:
        what = "has a header line but no data rows" if header is not None else "is empty (no data rows)"
        hint = f" (lines starting with {config.comment!r} are skipped as comments)" if config.comment else ""
        raise DataError(f"{path}: the file {what}{hint}; add rows or point the config at another file")

    width = len(columns)
    bad = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if bad is not None:
        origin = "column_names:" if config.column_names is not None else f"the header (line {header_line})"
        raise DataError(
            f"{path.name}, line {lines[bad]}: expected {width} fields as named by {origin} but found "
            f"{len(rows[bad])}; fix that row, quote values that contain the delimiter {file_delimiter(path, config)!r}, "
            f"or check delimiter: [file: {path}]"
        )
    data = dict(zip(columns, zip(*rows, strict=True), strict=True))
    return Table(path, columns, data, lines)


def resolve_path(path: Path, root: Path, key: str, family: str = "tabular", kind: str = "CSV file") -> Path:
    """Find a user file: absolute as given; relative from the working directory, then the data root.

    ``key`` is the config key that names it, ``family`` the dataset family and ``kind`` what the file is,
    for the error message.
    """
    path = path.expanduser()
    candidates = [path] if path.is_absolute() else list(dict.fromkeys([Path.cwd() / path, root / path]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    folders = [c for c in candidates if c.is_dir()]
    if folders:
        raise DataError(f"{family}: {key}: {folders[0]} is a folder; point {key}: at the {kind} inside it")
    raise DataError(
        f"{family}: {key}: file '{path}' not found (looked at {', '.join(str(c) for c in candidates)}); fix "
        f"{key}: (a relative path is tried from the working directory, then from the data root)"
    )


# ----------------------------------------------------------------------------- encoding


class Rows:
    """All rows of the main file followed by those of the test file, for locating values in errors."""

    def __init__(self, tables: list[Table]):
        self.tables = tables
        self.offsets = np.cumsum([0] + [len(t) for t in tables])

    def where(self, index: int, column: str) -> str:
        """``"file, line N, column 'c'"`` for the row at ``index`` of the concatenation."""
        t = int(np.searchsorted(self.offsets, index, side="right")) - 1
        table = self.tables[t]
        return f"{table.path.name}, line {table.lines[index - self.offsets[t]]}, column '{column}'"

    def column(self, name: str) -> list[str]:
        values: list[str] = []
        for table in self.tables:
            values.extend(table.data[name])
        return values


def parse_numbers(values: Sequence[str], na: frozenset[str]) -> tuple[np.ndarray | None, int | None]:
    """Values as float64 (NaN where missing), or ``(None, index)`` of the first value that is no number."""
    try:
        return np.fromiter((math.nan if v in na else float(v) for v in values), np.float64, len(values)), None
    except ValueError:
        pass
    for i, value in enumerate(values):
        if value not in na:
            try:
                float(value)
            except ValueError:
                return None, i
    raise AssertionError("unreachable: a value failed to parse but none fails alone")


def _report_categorical(column: str, values: list[str], bad: int, rows: Rows, na: frozenset[str]) -> None:
    """Say that an undeclared column was one-hot encoded because of a value that is not a number: a warning
    when the column also holds numbers (a typo or an unlisted missing marker makes a numeric column
    categorical), a note when it holds text only."""
    counts = Counter(v for v in values if v not in na)
    numbers = sum(count for value, count in counts.items() if _is_number(value))
    where = rows.where(bad, column)
    if numbers:
        logger.warning(
            "tabular: column '%s' holds numbers but also '%s' (%s; %d of %d values are not numbers), so it was "
            "treated as categorical (%d categories); if it is numeric, fix those values or add them to "
            "na_values: (and list the column under numeric:), else list it under categorical:",
            column,
            values[bad],
            where,
            sum(counts.values()) - numbers,
            sum(counts.values()),
            len(counts),
        )
    else:
        logger.info(
            "tabular: column '%s' treated as categorical ('%s' at %s is not a number; %d categories)",
            column,
            values[bad],
            where,
            len(counts),
        )


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _numeric_feature(
    column: str, numbers: np.ndarray, train: np.ndarray, rows: Rows, normalize: bool
) -> tuple[np.ndarray, list[str]]:
    """One numeric feature: missing values imputed with the train mean, standardized with train statistics."""
    infinite = np.flatnonzero(np.isinf(numbers))
    if infinite.size:
        raise DataError(
            f"{rows.where(int(infinite[0]), column)}: {numbers[infinite[0]]} is not a finite number; "
            "replace it, or mark it missing by adding its text to na_values:"
        )
    observed = numbers[train]
    observed = observed[~np.isnan(observed)]
    if observed.size == 0:
        logger.warning("tabular: column '%s' has no value in the training rows; it is imputed with 0", column)
        mean, std = 0.0, 1.0
    else:
        mean, std = float(observed.mean()), float(observed.std())
        std = std if std > 1e-12 else 1.0  # a constant column stays constant (0) instead of dividing by 0
    filled = np.where(np.isnan(numbers), mean, numbers)
    if normalize:
        filled = (filled - mean) / std
    return filled[:, None], [column]


def _categorical_feature(
    column: str, values: list[str], train: np.ndarray, na: frozenset[str]
) -> tuple[np.ndarray, list[str]]:
    """One-hot columns for the categories seen in training (plus "missing" if training has missing values).

    A category never seen in training encodes as an all-zero row.
    """
    train_values = {values[i] for i in train}
    has_missing = bool(train_values & na)
    categories: list[str | None] = sorted(train_values - na)
    if has_missing:
        categories.append(None)  # None: the "missing" category, distinct from any string in the file
    if len(categories) > MANY_CATEGORIES:
        logger.warning(
            "tabular: column '%s' has %d categories, so one-hot encoding makes %d features; "
            "if it is an id or free text, leave it out of features:",
            column,
            len(categories),
            len(categories),
        )
    index = {category: j for j, category in enumerate(categories)}
    codes = np.fromiter((index.get(None if v in na else v, -1) for v in values), np.int64, len(values))
    onehot = np.zeros((len(values), len(categories)), np.float32)
    known = np.flatnonzero(codes >= 0)
    onehot[known, codes[known]] = 1.0
    unseen = len(values) - known.size
    if unseen:
        logger.info(
            "tabular: column '%s': %d val/test rows hold categories unseen in training (all-zero)",
            column,
            unseen,
        )
    names = [f"{column}={MISSING_NAME if c is None else c}" for c in categories]
    return onehot, names


def encode_label(
    name: str, spec: LabelSpec, values: list[str], train: np.ndarray, rows: Rows, na: frozenset[str]
) -> tuple[np.ndarray, list[str] | None]:
    """One label: int64 class indices (missing -1) or float32 regression targets (missing NaN)."""
    where = f"labels.{name}"
    if spec.positive is not None:
        positive = set(spec.positive)
        y = np.fromiter((-1 if v in na else int(v in positive) for v in values), np.int64, len(values))
        if not (y == 1).any():
            seen = sorted({v for v in values if v not in na})
            raise DataError(
                f"{rows.tables[0].path.name}: column '{spec.column}' ({where}) never holds a value listed "
                f"under positive: {spec.positive}; values seen: {', '.join(map(repr, seen[:20]))}"
                f"{' ...' if len(seen) > 20 else ''}; fix positive:"
            )
        joined = " / ".join(spec.positive)
        return y, [f"not {joined}", joined]

    if spec.kind == "regression":
        numbers, bad = parse_numbers(values, na)
        if numbers is None:
            raise DataError(
                f"{rows.where(bad, spec.column)}: '{values[bad]}' is not a number but {where} is a "
                "regression target; fix the value, add it to na_values: if it means missing, or remove "
                "kind: regression"
            )
        infinite = np.flatnonzero(np.isinf(numbers))
        if infinite.size:
            i = int(infinite[0])
            raise DataError(
                f"{rows.where(i, spec.column)}: '{values[i]}' is not a finite number but {where} is a regression "
                f"target; fix the value or add it to na_values: if it means missing ({infinite.size} row(s))"
            )
        return numbers.astype(np.float32), None

    if spec.classes is not None:
        return _index_classes(name, spec, values, rows, na, list(spec.classes))
    train_values = {values[i] for i in train} - na
    if not train_values:
        raise DataError(
            f"{rows.tables[0].path.name}: column '{spec.column}' ({where}) has no value in the training "
            "rows; check the column and na_values:"
        )
    numbers, _ = parse_numbers(sorted(train_values), frozenset())
    # numeric class values sort as numbers, so that "10" comes after "9"
    classes = sorted(train_values, key=float) if numbers is not None else sorted(train_values)
    if numbers is not None and len(classes) > 20 and spec.kind is None:
        logger.warning(
            "tabular: %s: column '%s' holds %d distinct numbers, each made a class; set kind: regression "
            "for a numeric target",
            where,
            spec.column,
            len(classes),
        )
    return _index_classes(name, spec, values, rows, na, classes)


def _index_classes(
    name: str, spec: LabelSpec, values: list[str], rows: Rows, na: frozenset[str], classes: list[str]
) -> tuple[np.ndarray, list[str]]:
    """Class indices of ``values`` in ``classes`` (missing values -1); a value outside them is a DataError:
    with ``classes:`` given, add it there; else it missed the training rows (a main-file value by the draw of
    the split, a test-file value never had a chance)."""
    index = {value: j for j, value in enumerate(classes)}
    y = np.fromiter((-1 if v in na else index.get(v, -2) for v in values), np.int64, len(values))
    unseen = np.flatnonzero(y == -2)
    if unseen.size:
        i = int(unseen[0])
        shown = ", ".join(map(repr, classes[:20])) + (" ..." if len(classes) > 20 else "")
        if spec.classes is not None:
            problem, remedy = f"is not one of labels.{name}.classes ({shown})", "add it to classes:"
        else:
            problem = f"does not occur in the training rows, so it has no class index (classes: {shown})"
            remedy = "use another split_seed" if i < len(rows.tables[0]) else "add training rows that hold it"
        raise DataError(
            f"{rows.where(i, spec.column)}: label value '{values[i]}' (labels.{name}) {problem}; fix the value, "
            f"merge it into a known class, or {remedy} ({unseen.size} row(s) affected)"
        )
    return y, classes


def check_columns(table: Table, needed: dict[str, str], config: CsvOptions | None) -> None:
    """Check that every needed column (name -> where it is used) exists in ``table``; else a DataError.

    ``config``: the CSV options the table was read with (None for a file that is not CSV).
    """
    for column, used in needed.items():
        if column not in table.data:
            hint = (
                " If the file has no header line, set header: false and column_names:."
                if config is not None and config.header and config.column_names is None
                else ""
            )
            raise DataError(
                f"{table.path.name}: column '{column}' (used by {used}) not found."
                f"{suggest(column, table.columns)} Columns in the file: {', '.join(table.columns)}. "
                f"Fix the name in {used.split('.')[0]}:.{hint} "
                f"[file: {table.path}]"
            )


def encode_labels(
    specs: dict[str, LabelSpec], rows: Rows, train: np.ndarray, na: frozenset[str], family: str = "tabular"
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, str]]:
    """Every label of ``specs`` (see :func:`encode_label`): the arrays, the class names of the
    classification labels, and each label's kind (``classification`` or ``regression``).

    Warns when every training row holds the same class.
    """
    labels, classes, kinds = {}, {}, {}
    for name, spec in specs.items():
        labels[name], label_classes = encode_label(name, spec, rows.column(spec.column), train, rows, na)
        kinds[name] = "regression" if label_classes is None else "classification"
        if label_classes is not None:
            classes[name] = label_classes
            seen = np.unique(labels[name][train])
            seen = seen[seen >= 0]
            if seen.size == 1:
                logger.warning(
                    "%s: %s: labels.%s: every training row holds the class %r (column '%s'), so a "
                    "classifier learns to predict that class only; check the column, positive: and the split",
                    family,
                    rows.tables[0].path.name,
                    name,
                    label_classes[int(seen[0])],
                    spec.column,
                )
    return labels, classes, kinds


def partition_rows(tables: list[Table], config: DatasetConfig) -> dict[str, np.ndarray]:
    """Row indices (into the concatenation of ``tables``) of the train/val/test splits.

    The main file (``tables[0]``) is partitioned by the config's fractions and ``split_seed``; a second
    table, the test file, is the whole test split (and ``test_fraction`` is then not used).
    """
    main = tables[0]
    has_test_file = len(tables) > 1
    parts = split_indices(
        len(main), config.val_fraction, 0.0 if has_test_file else config.test_fraction, config.split_seed
    )
    index = {split: np.sort(part.numpy()) for split, part in parts.items()}
    if has_test_file:
        index["test"] = np.arange(len(main), len(main) + len(tables[1]))
    if index["train"].size == 0:
        raise DataError(
            f"{main.path}: {len(main)} row(s) leave no training rows; add rows or lower the fractions"
        )
    return index


# ----------------------------------------------------------------------------- builder


@DATASETS.register("tabular", config=TabularConfig)
def build_tabular(config: TabularConfig, root: Path) -> dict[str, ArrayDataset]:
    """A user CSV table with named features and labels; encoders and scaling fitted on the training rows."""
    main = read_table(resolve_path(config.path, root, "path"), config)
    tables = [main]
    if config.test_path is not None:
        tables.append(read_table(resolve_path(config.test_path, root, "test_path"), config))
    rows = Rows(tables)
    na = frozenset(config.na_values)

    label_columns = {spec.column for spec in config.labels.values()}
    features = config.features or [c for c in main.columns if c not in label_columns]
    needed = {spec.column: f"labels.{name}" for name, spec in config.labels.items()}
    needed.update({c: "features" for c in features if c not in needed})
    for key in ("categorical", "numeric"):
        needed.update({c: key for c in getattr(config, key) or [] if c not in needed})
    for table in tables:
        check_columns(table, needed, config)
    if not features:
        raise DataError(
            f"{main.path.name}: no feature columns left besides the labels; list them under features:"
        )

    index = partition_rows(tables, config)
    train = index["train"]

    blocks, names = [], []
    categorical, numeric = set(config.categorical or []), set(config.numeric or [])
    for column in features:
        values = rows.column(column)
        numbers = None
        if column not in categorical:
            numbers, bad = parse_numbers(values, na)
            declared = column in numeric or config.categorical is not None
            if numbers is None and declared:
                raise DataError(
                    f"{rows.where(bad, column)}: '{values[bad]}' is not a number; list the column under "
                    "categorical: or fix the value (or add it to na_values: if it means missing)"
                )
            if numbers is None:
                _report_categorical(column, values, bad, rows, na)  # type: ignore[arg-type]
        block, block_names = (
            _numeric_feature(column, numbers, train, rows, config.normalize)
            if numbers is not None
            else _categorical_feature(column, values, train, na)
        )
        blocks.append(block)
        names.extend(block_names)
    x = np.concatenate(blocks, axis=1).astype(np.float32)

    labels, classes, kinds = encode_labels(config.labels, rows, train, na)
    info = {"feature_names": names, "classes": classes, "label_kinds": kinds}
    keep = ["train", "test"] + (["val"] if config.val_fraction > 0 else [])
    splits = {
        split: ArrayDataset(
            torch.from_numpy(x[index[split]]),
            {name: torch.from_numpy(y[index[split]]) for name, y in labels.items()},
            **info,
        )
        for split in keep
    }
    logger.info(
        "tabular: %s: %s rows, %d features (%d columns), labels %s",
        main.path.name,
        "/".join(f"{s} {len(d)}" for s, d in splits.items()),
        len(names),
        len(features),
        ", ".join(f"{n} ({kinds[n]})" for n in labels),
    )
    return splits
