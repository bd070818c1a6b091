"""The ``transformer`` backbone on a tiny randomly initialised BERT saved in the test: pooling, padding,
layer names for freezing and layer decay, the feature cache, LoRA, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import crosstask as ct
from crosstask.engine.optim import OptimizerConfig, parameter_groups
from crosstask.errors import ConfigError, DataError
from crosstask.models.backbones.base import build_backbone
from crosstask.models.backbones.transformer import TextEncoder, clear_feature_cache
from tests.text_helpers import save_tiny_bert

transformers = pytest.importorskip(
    "transformers", reason="the transformer backbone needs transformers (nlp extra)"
)

VOCAB, WIDTH, LAYERS = 120, 16, 2


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), vocab_size=VOCAB, width=WIDTH, layers=LAYERS)


def tokens(n: int = 6, length: int = 10, pad_to: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` texts of random lengths up to ``length`` (ids from 5), padded with 0 to ``pad_to``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    ids = torch.randint(5, VOCAB, (n, pad_to), generator=g)
    mask = (torch.arange(pad_to)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def encoder(folder: Path, **keys) -> TextEncoder:
    backbone = build_backbone({"name": "transformer", "model": str(folder), **keys})
    assert isinstance(backbone, TextEncoder)
    return backbone.eval()


def test_mean_pooling_over_real_tokens_matches_the_encoder_and_ignores_padding(tiny_bert: Path) -> None:
    backbone = encoder(tiny_bert)
    x = tokens()
    features = backbone(x)
    assert features.shape == (6, WIDTH) and backbone.num_features == WIDTH
    reference = transformers.AutoModel.from_pretrained(tiny_bert).eval()
    hidden = reference(**x).last_hidden_state
    mask = x["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(features, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-5)
    # more padding changes nothing: the backbone trims what every text of the batch shares
    wider = {k: torch.cat([v, torch.zeros(6, 20, dtype=v.dtype)], 1) for k, v in x.items()}
    torch.testing.assert_close(backbone(wider), features, atol=1e-5, rtol=1e-5)
    cls = encoder(tiny_bert, pooling="cls")(x)
    torch.testing.assert_close(cls, hidden[:, 0], atol=1e-5, rtol=1e-5)


def test_random_weights_differ_from_the_saved_ones(tiny_bert: Path) -> None:
    saved = encoder(tiny_bert).state_dict()
    torch.manual_seed(1)
    fresh = encoder(tiny_bert, pretrained=False).state_dict()
    assert saved.keys() == fresh.keys()
    assert not torch.equal(
        saved["encoder.encoder.layer.0.attention.self.query.weight"],
        fresh["encoder.encoder.layer.0.attention.self.query.weight"],
    )


def test_layers_for_freezing_and_layer_decay_are_the_embeddings_then_each_encoder_layer(
    tiny_bert: Path,
) -> None:
    tasks = [ct.Task("sentiment", num_classes=2)]
    model = ct.MultiTaskModel({"name": "transformer", "model": str(tiny_bert)}, tasks)
    assert model.backbones()[0].layer_names() == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    groups = parameter_groups(model, [], OptimizerConfig(name="adamw", lr=1.0, layer_decay=0.5))
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {"backbone.0": 0.125, "backbone.1": 0.25, "backbone.2": 0.5, "new": 1.0}
    frozen = model.freeze_backbone("encoder.layer.0")
    assert frozen == ["embeddings", "encoder.layer.0"]
    layer1 = model.backbones()[0].encoder.encoder.layer[1]
    assert all(p.requires_grad for p in layer1.parameters())
    assert not any(p.requires_grad for p in model.backbones()[0].encoder.embeddings.parameters())


def counting(backbone: TextEncoder) -> list[int]:
    """How many texts each encoder pass reads (a wrapper, not a hook: hooks turn the cache off)."""
    calls: list[int] = []
    encode = backbone._encode

    def wrapped(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls.append(len(ids))
        return encode(ids, mask)

    backbone._encode = wrapped  # type: ignore[method-assign]
    return calls


def test_the_feature_cache_encodes_each_text_once_while_the_encoder_is_frozen(tiny_bert: Path) -> None:
    backbone = encoder(tiny_bert, cache=True)
    calls = counting(backbone)
    x = tokens(n=6)
    plain = backbone(x)  # not frozen yet: encoded every time, no cache
    backbone(x)
    assert len(calls) == 2
    backbone.requires_grad_(False)
    first = backbone(x)
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=1e-5)
    again = backbone({k: v[[3, 1, 3]] for k, v in x.items()})  # seen texts, in another order, repeated
    assert len(calls) == 3
    torch.testing.assert_close(again, first[[3, 1, 3]], atol=0, rtol=0)
    # new weights: the cache of the old ones is not read
    with torch.no_grad():
        backbone.encoder.embeddings.word_embeddings.weight.mul_(2.0)
    changed = backbone(x)
    assert len(calls) == 4 and not torch.allclose(changed, first)
    backbone.train()  # dropout on: the cache steps aside
    backbone(x)
    assert len(calls) == 5
    backbone.eval()
    handle = backbone.encoder.encoder.layer[0].register_forward_hook(lambda *args: None)
    backbone(x)  # a hook watches a layer (DELTA, MixStyle, interpret): every text goes through it
    assert len(calls) == 6
    handle.remove()
    backbone(x)
    assert len(calls) == 6


def test_left_padded_texts_pool_and_cache_like_right_padded_ones(tiny_bert: Path) -> None:
    backbone = encoder(tiny_bert, cache=True).requires_grad_(False)
    right = tokens(n=4, length=6, pad_to=10)
    left = {k: torch.stack([torch.cat([r[m == 0], r[m == 1]]) for r, m in zip(v, right["attention_mask"], strict=True)])
            for k, v in right.items()}  # fmt: skip
    left["attention_mask"] = torch.stack([m.sort().values for m in right["attention_mask"]])
    plain = encoder(tiny_bert)
    # position embeddings differ between the two paddings, so compare each with its own uncached pass
    torch.testing.assert_close(backbone(left), plain(left), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        backbone(right), backbone(left), atol=0, rtol=0
    )  # the same texts: the same keys
    assert not torch.equal(plain(left)[0], plain(left)[1])


def test_cached_features_are_float32_whatever_the_autocast(tiny_bert: Path) -> None:
    backbone = encoder(tiny_bert, cache=True).requires_grad_(False)
    x = tokens(n=4, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = backbone(x)
    assert first.dtype == torch.float32
    torch.testing.assert_close(first, encoder(tiny_bert)(x), atol=1e-5, rtol=1e-5)


def test_lora_adapts_the_attention_projections_of_a_text_model(tiny_bert: Path) -> None:
    pytest.importorskip("peft", reason="LoRA needs peft")
    from crosstask.models.lora import apply_lora, merge_lora

    tasks = [ct.Task("sentiment", num_classes=2)]
    model = ct.MultiTaskModel({"name": "transformer", "model": str(tiny_bert)}, tasks).eval()
    x = tokens()
    before = model(x)["sentiment"]
    apply_lora(model, r=2, alpha=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert any("attention.self.query" in n for n in names) and any("attention.self.value" in n for n in names)
    torch.testing.assert_close(model(x)["sentiment"], before)  # B starts at zero
    merge_lora(model)
    torch.testing.assert_close(model(x)["sentiment"], before, atol=1e-5, rtol=1e-5)


def test_inputs_that_are_not_token_ids_and_ids_outside_the_vocabulary_are_refused(tiny_bert: Path) -> None:
    backbone = encoder(tiny_bert)
    with pytest.raises(DataError, match="reads token ids.*input_ids and attention_mask"):
        backbone.validate_input((1, 28, 28))
    with pytest.raises(DataError, match="reads token ids"):
        backbone(torch.zeros(2, 8, dtype=torch.long))
    x = tokens()
    x["input_ids"][0, 0] = VOCAB + 3
    with pytest.raises(DataError, match=f"do not fit the vocabulary of {VOCAB}.*same model"):
        backbone(x)
    with pytest.raises(DataError, match=f"do not fit the vocabulary of {VOCAB}"):
        backbone.summarize_input(x)  # what gates read first
    long = tokens(n=2, length=70, pad_to=80)
    with pytest.raises(DataError, match="longer than the 64 positions.*max_length: 64"):
        backbone(long)
    backbone.validate_input({"input_ids": (12,), "attention_mask": (12,)})


def test_a_missing_or_wrong_model_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        build_backbone({"name": "transformer", "model": str(tmp_path / "nowhere")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load a transformers model.*config.json"):
        build_backbone({"name": "transformer", "model": str(tmp_path / "empty")})


def test_shallow_adapters_train_on_features_extracted_through_the_cache(tiny_bert: Path) -> None:
    """ct.extract_features: a frozen cached encoder's pooled features of a whole text dataset, once per text,
    the input of the scikit-learn adapters."""
    from crosstask.shallow import build_adapter

    model = ct.MultiTaskModel(
        {"name": "transformer", "model": str(tiny_bert), "cache": True}, [ct.Task("y", num_classes=2)]
    )
    model.freeze_backbone()
    calls = counting(model.backbones()[0])
    source, target = tokens(n=40, seed=1), tokens(n=30, seed=2)
    ys = (source["attention_mask"].sum(1) > 6).long()  # the text's length: visible in mean-pooled features
    data = ct.ArrayDataset(source, ys)
    xs = ct.extract_features(model, data, batch_size=16)
    # the input check's dry pass (the first text), then three batches: each text encoded once
    assert xs.shape == (40, WIDTH) and calls == [1, 15, 16, 8]
    torch.testing.assert_close(ct.extract_features(model, data, batch_size=7), xs)  # read back from the cache
    assert len(calls) == 4
    clear_feature_cache()
    with torch.no_grad():  # encoded again, batched otherwise: the same features
        torch.testing.assert_close(xs, model.eval().backbones()[0](source), atol=1e-5, rtol=1e-5)
    assert len(calls) == 5
    xt = ct.extract_features(model, ct.ArrayDataset(target), limit=20)
    assert xt.shape == (20, WIDTH)
    adapter = build_adapter({"name": "coral"}).fit(xs.numpy(), ys.numpy(), xt.numpy())
    assert adapter.predict(xt.numpy()).shape == (20,)
    with pytest.raises(DataError, match="holds no sample"):
        ct.extract_features(model, ct.ArrayDataset({k: v[:0] for k, v in source.items()}))


def test_extract_features_refuses_bad_arguments_and_inputs_with_one_message(tiny_bert: Path) -> None:
    model = ct.MultiTaskModel({"name": "transformer", "model": str(tiny_bert)}, [ct.Task("y", num_classes=2)])
    data = ct.ArrayDataset(tokens(n=4))
    for options in (
        {"batch_size": 0},
        {"batch_size": 2.5},
        {"limit": 0},
        {"limit": -1},
        {"batch_size": True},
    ):
        with pytest.raises(
            ConfigError, match=f"extract_features: {next(iter(options))} must be a whole number"
        ):
            ct.extract_features(model, data, **options)
    with pytest.raises(ConfigError, match="data must be a dataset .* got a Tensor"):
        ct.extract_features(model, torch.zeros(3, 4))  # type: ignore[arg-type]
    images = ct.ArrayDataset(torch.zeros(3, 1, 8, 8))
    with pytest.raises(DataError, match="backbone 'transformer' reads token ids"):
        ct.extract_features(model, images)
    lenet = ct.MultiTaskModel("lenet", [ct.Task("y", num_classes=2)], input_shape=(1, 28, 28))
    with pytest.raises(
        DataError, match=r"data\.eval\.features gives inputs of shape \{input_ids.*same kind of input"
    ):
        ct.extract_features(lenet, data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: {**x, "input_ids": x["input_ids"].float()}, "must be integers"),
        (lambda x: {**x, "attention_mask": x["attention_mask"][:, :4]}, "the same shape"),
        (lambda x: {k: v[:, :0] for k, v in x.items()}, "at least one token"),
        (lambda x: {k: v[None] for k, v in x.items()}, r"must be \(texts, tokens\)"),
    ],
)
def test_malformed_token_batches_get_one_clear_error(tiny_bert: Path, change, message: str) -> None:
    with pytest.raises(DataError, match=message):
        encoder(tiny_bert)(change(tokens(n=3)))


def test_weights_that_do_not_match_the_config_or_are_damaged_are_refused(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """Renamed weights would load as random ones, a cut file as a safetensors traceback: one ConfigError each."""
    import shutil

    from safetensors.torch import load_file, save_file

    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_bert, renamed)
    weights = load_file(renamed / "model.safetensors")
    save_file({f"model.{k}": v for k, v in weights.items()}, renamed / "model.safetensors")
    with pytest.raises(
        ConfigError, match=r"weights of the bert model .* are not in its checkpoint .*start random"
    ):
        encoder(renamed)
    assert isinstance(
        build_backbone({"name": "transformer", "model": str(renamed), "pretrained": False}), TextEncoder
    )

    cut = tmp_path / "cut"
    shutil.copytree(tiny_bert, cut)
    (cut / "model.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes()[:500])
    with pytest.raises(
        ConfigError, match=r"cannot load a transformers model .*SafetensorError.*copy it again"
    ):
        encoder(cut)


def test_encoder_decoder_models_and_missing_folders_are_named_as_the_model(tmp_path: Path) -> None:
    t5 = transformers.T5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    transformers.T5Model(t5).save_pretrained(tmp_path / "t5")
    with pytest.raises(ConfigError, match="encoder-decoder model \\(t5\\); give an encoder"):
        encoder(tmp_path / "t5")
    with pytest.raises(ConfigError, match="^model: .*nothing_here' not found"):
        encoder(tmp_path / "nothing_here")
