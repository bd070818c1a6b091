"""Fine-tuning: regularizers toward the starting point (L2-SP, DELTA, BSS, LwF), layer-wise learning-rate
decay, gradual unfreezing, and LoRA adapters (skipped without peft)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import crosstask as ct
from crosstask.checkpoint import load_checkpoint
from crosstask.config import component, load_config, validate_component
from crosstask.data.streams import Batch
from crosstask.engine.method import StreamSpec
from crosstask.engine.optim import backbone_stages, parameter_groups
from crosstask.errors import ConfigError, RunError
from crosstask.finetune.base import StreamForward
from crosstask.finetune.bss import smallest_singular_values
from crosstask.finetune.delta import attention_weights, loss_rise
from crosstask.models.model import ModelOutput
from crosstask.registry import METHODS, OPTIMIZERS

REPO = Path(__file__).resolve().parents[1]
HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(
    not HAS_PEFT, reason="LoRA needs peft, which is not installed (pip install 'crosstask[lora]')"
)


def mlp_model(hidden: tuple[int, ...] = (16, 16, 16), seed: int = 0) -> ct.MultiTaskModel:
    torch.manual_seed(seed)
    return ct.MultiTaskModel(
        {"name": "mlp", "hidden": list(hidden)}, [ct.Task("a", num_classes=3)], input_shape=(6,)
    )


def data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def erm(model: ct.MultiTaskModel, **options):
    config = validate_component(component(METHODS), {"name": "erm", **options}, "method")
    method = METHODS.get("erm").obj(config, model, [StreamSpec("train", True, ("a",))])
    method.setup()
    return method


def step(method, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    out = method.training_step({"train": Batch(x, {"a": y}, frozenset({"a"}))})
    return {**out.objectives, **out.penalties}


def backbone_state(model: ct.MultiTaskModel) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.backbone_parameters()]


# ----------------------------------------------------------------------------- regularizers


def test_l2sp_is_zero_at_the_start_and_its_gradient_points_back_to_it() -> None:
    model = mlp_model()
    method = erm(model, regularizers=[{"name": "l2sp", "alpha": 0.5, "beta": 0.1}])
    l2sp = method.regularizers["l2sp"]
    heads = sum(p.detach().pow(2).sum() for p in model.heads.parameters())
    assert float(l2sp.penalty([]).detach()) == pytest.approx(
        0.05 * float(heads)
    )  # only β/2·‖w_new‖² at the start
    start = backbone_state(model)
    with torch.no_grad():
        for p in model.backbone_parameters():
            p.add_(torch.randn_like(p))
    model.zero_grad()
    penalty = l2sp.penalty([])
    penalty.backward()
    moved = sum(
        float((p.detach() - p0).pow(2).sum())
        for p, p0 in zip(model.backbone_parameters(), start, strict=True)
    )
    assert float(penalty.detach()) == pytest.approx(0.25 * moved + 0.05 * float(heads), rel=1e-5)
    for p, p0 in zip(model.backbone_parameters(), start, strict=True):
        torch.testing.assert_close(p.grad, 0.5 * (p.detach() - p0))  # −gradient points back to w⁰
    for p in model.heads.parameters():
        torch.testing.assert_close(p.grad, 0.1 * p.detach())
    assert method.penalty_names == ["l2sp"] and set(step(method, *data())) == {"train", "l2sp"}


def test_l2sp_keeps_the_backbone_near_its_start(tmp_path: Path) -> None:
    x, y = data(seed=1)
    distances = {}
    for alpha in (0.0, 5.0):
        model = mlp_model()
        start = backbone_state(model)
        ct.fit(
            model,
            method={"name": "erm", "regularizers": [{"name": "l2sp", "alpha": alpha, "beta": 0.0}]},
            data=ct.ArrayDataset(x, {"a": y}),
            steps=40,
            optim={"name": "sgd", "lr": 0.1},
            output_dir=tmp_path / str(alpha),
        )
        distances[alpha] = sum(
            float((p.detach() - p0).pow(2).sum())
            for p, p0 in zip(model.backbone_parameters(), start, strict=True)
        )
    assert distances[5.0] < 0.5 * distances[0.0]


def test_resume_keeps_the_original_start_point_and_is_exact(tmp_path: Path) -> None:
    x, y = data()
    options = {
        "method": {
            "name": "erm",
            "finetune": "gradual",
            "unfreeze_every": 4,
            "regularizers": [
                {"name": "l2sp", "alpha": 1.0},
                {"name": "lwf", "tasks": ["a"]},
                {"name": "delta", "probe_steps": 5, "attention_batches": 2},  # drawn before step 0
            ],
        },
        "data": ct.ArrayDataset(x, {"a": y}),
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
        "batch_size": 16,
        "checkpoint_every": 6,
    }
    whole = mlp_model()
    initial = copy.deepcopy(whole.state_dict())
    ct.fit(whole, steps=12, name="whole", output_dir=tmp_path, **options)

    part = mlp_model()
    ct.fit(part, steps=6, name="part", output_dir=tmp_path, **options)
    resumed = mlp_model(seed=5)  # other weights: the checkpoint decides, the start point included
    ct.fit(resumed, steps=12, name="part", output_dir=tmp_path, resume=True, **options)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    saved = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["method"]
    for key, value in initial.items():
        torch.testing.assert_close(saved["start"][key], value, rtol=0, atol=0)
    assert len(saved["regularizers"]["delta"]["channel_weights"]) == 3  # one weight vector per layer


def test_delta_attention_weights_sum_to_one_and_follow_the_loss_rise() -> None:
    rise = torch.tensor([4.0, 0.25, 0.0, 0.25])
    weights = attention_weights(rise)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert weights[0] > weights[1] == weights[3] > weights[2]
    assert torch.allclose(attention_weights(rise * 100 + 7), weights)  # the loss's scale does not matter
    assert torch.allclose(attention_weights(torch.ones(5)), torch.full((5,), 0.2))
    z = (rise - rise.mean()) / rise.std(correction=0)
    assert torch.allclose(weights, torch.softmax(z / 5, 0))  # TLlib: population std, temperature 5
    assert attention_weights(rise, temperature=0.5).max() > weights.max()  # colder: more peaked
    with pytest.raises(RunError, match="not finite"):
        attention_weights(torch.tensor([1.0, float("nan")]))


def test_zeroing_a_channel_measures_how_much_the_loss_needs_it() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g)
    y = 2 * x[:, 0] + 0.5 * x[:, 1]  # channel 2 is not used at all
    layer = torch.nn.Identity()
    coefficients = torch.tensor([2.0, 0.5, 0.0])

    def loss(batch):
        return (layer(batch["x"]) @ coefficients - batch["y"]).pow(2).mean()

    (rise,) = loss_rise(loss, [layer], [{"x": x[:256], "y": y[:256]}, {"x": x[256:], "y": y[256:]}])
    expected = torch.stack([(c * x[:, i]).pow(2).mean() for i, c in enumerate(coefficients)])  # ≈ 4, 0.25, 0
    torch.testing.assert_close(rise, expected, rtol=1e-4, atol=1e-6)


def test_delta_with_attention_weights_the_channels_the_task_needs(tmp_path: Path) -> None:
    x, y = data(n=256)
    model = mlp_model(hidden=(16,))
    with torch.no_grad():  # units 0-3 are dead (always 0 after the ReLU): zeroing them costs nothing
        layer = model.architecture.trunk.backbone.layer1[0]
        layer.weight[:4] = 0.0
        layer.bias[:4] = -1.0
    delta = {"name": "delta", "alpha": 1.0, "beta": 0.0, "probe_steps": 50, "attention_batches": 3}
    result = ct.fit(
        model,
        method={"name": "erm", "regularizers": [delta]},
        data=ct.ArrayDataset(x, {"a": y}),
        steps=5,
        optim={"name": "sgd", "lr": 0.05},
        output_dir=tmp_path,
    )
    (weights,) = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["method"]["regularizers"][
        "delta"
    ]["channel_weights"]
    assert weights.shape == (16,) and float(weights.sum()) == pytest.approx(1.0)
    assert bool((weights[:4] < 1 / 16).all()) and int(weights.argmax()) >= 4  # dead units weigh least
    method = erm(mlp_model(hidden=(16,)), regularizers=[delta])
    with pytest.raises(RunError, match="channel attention was not computed"):
        step(method, x, y)  # steps by hand without prepare()


def test_lwf_distils_the_old_tasks_by_default_and_says_when_there_are_none() -> None:
    """The paper's setting: the old task's head is kept by distillation, the new task trains on its labels."""
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [16]},
        [ct.Task("a", num_classes=3), ct.Task("old", num_classes=4)],
        input_shape=(6,),
    )
    method = erm(model, regularizers=[{"name": "lwf"}])  # the stream labels only 'a'
    assert method.regularizers["lwf"].tasks == ["old"]
    with pytest.raises(ConfigError, match="old tasks"):
        erm(mlp_model(), regularizers=[{"name": "lwf"}])  # one task, trained: nothing old to keep


def test_lwf_is_zero_when_the_model_equals_the_old_one() -> None:
    model = mlp_model()
    method = erm(model, regularizers=[{"name": "lwf", "tasks": ["a"]}])
    x, y = data()
    assert float(step(method, x, y)["lwf"].detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.heads["a"].weight.add_(torch.randn_like(model.heads["a"].weight))
    losses = step(method, x, y)
    assert float(losses["lwf"].detach()) > 1e-3
    losses["lwf"].backward()
    assert model.heads["a"].weight.grad.abs().sum() > 0
    assert method.start.heads["a"].weight.grad is None  # the old model stays frozen


def test_delta_is_zero_at_the_start_and_grows_with_the_feature_maps() -> None:
    model = mlp_model()
    delta = {"name": "delta", "alpha": 1.0, "beta": 0.0, "layers": ["layer2"], "attention": False}
    method = erm(model, regularizers=[delta])
    x, y = data()
    assert float(step(method, x, y)["delta"].detach()) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model.architecture.trunk.backbone.layer3[0].weight.add_(1.0)  # above layer2: its maps do not change
    assert float(step(method, x, y)["delta"].detach()) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        layer = model.architecture.trunk.backbone.layer1[0]
        layer.weight.add_(0.5)
    expected = model.architecture.trunk.backbone.layer2(
        model.architecture.trunk.backbone.layer1(x)
    ) - method.start.architecture.trunk.backbone.layer2(method.start.architecture.trunk.backbone.layer1(x))
    assert float(step(method, x, y)["delta"].detach()) == pytest.approx(
        float(expected.detach().pow(2).mean()), rel=1e-5
    )
    with pytest.raises(ConfigError, match="no layer 'layer9'"):
        erm(mlp_model(), regularizers=[{"name": "delta", "layers": ["layer9"]}])


def test_bss_is_the_sum_of_the_squared_smallest_singular_values() -> None:
    features = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    singular = np.linalg.svd(features.numpy(), compute_uv=False)
    assert smallest_singular_values(features, 2).numpy() == pytest.approx(
        np.sort(singular)[:2][::-1], rel=1e-5
    )
    method = erm(mlp_model(), regularizers=[{"name": "bss", "eta": 0.5, "k": 2}])
    forward = StreamForward("train", features, ModelOutput({}, features))
    expected = 0.5 * float((np.sort(singular)[:2] ** 2).sum())
    assert float(method.regularizers["bss"].penalty([forward]).detach()) == pytest.approx(expected, rel=1e-5)
    assert method.start is None  # BSS needs no copy of the model
    x, y = data()
    losses = step(method, x, y)
    losses["bss"].backward()
    assert all(p.grad is not None for p in method.model.backbone_parameters())


def test_regularizer_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown regularizer 'l2_sp'"):
        erm(mlp_model(), regularizers=[{"name": "l2_sp"}])
    with pytest.raises(ConfigError, match="twice"):
        erm(mlp_model(), regularizers=[{"name": "l2sp"}, {"name": "l2sp", "alpha": 1.0}])
    with pytest.raises(ConfigError, match="not classification"):
        model = ct.MultiTaskModel("mlp", [ct.Task("r", kind="regression")], input_shape=(6,))
        erm(model, regularizers=[{"name": "lwf", "tasks": ["r"]}])
    with pytest.raises(ConfigError, match="unfreeze_every"):
        erm(mlp_model(), finetune="gradual")


def test_finetune_l2sp_config_loads() -> None:
    experiment = load_config(REPO / "configs" / "digits_finetune_l2sp.yaml")
    assert experiment.method.regularizers[0].name == "l2sp" and experiment.optim.weight_decay == 0


# ----------------------------------------------------------------------------- layer decay, gradual unfreezing


def test_layer_decay_gives_each_stage_its_learning_rate() -> None:
    optim = validate_component(
        component(OPTIMIZERS),
        {"name": "sgd", "lr": 1.0, "layer_decay": 0.5, "backbone_lr_mult": 0.8},
        "optim",
    )
    groups = {g["name"]: g for g in parameter_groups(mlp_model(), [], optim)}
    assert {name: g["lr"] for name, g in groups.items()} == pytest.approx(
        {"backbone.0": 0.8 * 0.125, "backbone.1": 0.8 * 0.25, "backbone.2": 0.8 * 0.5, "new": 1.0}
    )
    model = mlp_model()
    assert groups["backbone.0"]["params"] is not None and len(groups["backbone.0"]["params"]) == 2
    lenet = ct.MultiTaskModel(
        {"name": "lenet", "channels": [2, 4], "features": 8},
        [ct.Task("a", num_classes=2)],
        input_shape=(1, 16, 16),
    )
    assert [len(s.parameters) for s in backbone_stages(lenet)] == [2, 2, 2]  # conv1, conv2, fc
    custom = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4))
    custom.num_features = 4
    stages = backbone_stages(
        ct.MultiTaskModel(custom, [ct.Task("a", num_classes=2)])
    )  # opaque stage: its named layers instead
    assert [s.modules[0] for s in stages] == [custom[1], custom[3]]
    no_decay = parameter_groups(model, [], validate_component(component(OPTIMIZERS), "sgd", "optim"))
    assert [g["name"] for g in no_decay] == ["backbone", "new"]


def test_gradual_unfreezing_follows_its_schedule_and_frozen_stages_never_move(tmp_path: Path) -> None:
    x, y = data()
    model = mlp_model()
    stages = [list(model.architecture.trunk.backbone.children())[i] for i in range(3)]
    method = {"name": "erm", "finetune": "gradual", "unfreeze_every": 5}
    options = {
        "data": ct.ArrayDataset(x, {"a": y}),
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1},  # decay would show
        "batch_size": 16,
        "name": "gradual",
        "output_dir": tmp_path,
    }
    assert [
        erm(mlp_model(), **{k: v for k, v in method.items() if k != "name"}).strategy.unfrozen_stages(s)
        for s in (0, 4, 5, 9, 10, 15, 99)
    ] == [0, 0, 1, 1, 2, 3, 3]
    before = [[p.detach().clone() for p in stage.parameters()] for stage in stages]
    heads = model.heads["a"].weight.detach().clone()
    moved = []
    for steps in (5, 10, 15):  # each segment resumes the last one
        ct.fit(model, method=method, steps=steps, resume=steps > 5, **options)
        moved.append(
            [
                any(not torch.equal(p, p0) for p, p0 in zip(s.parameters(), b, strict=True))
                for s, b in zip(stages, before, strict=True)
            ]
        )
    assert not torch.equal(model.heads["a"].weight, heads)
    # stage i (input to output) trains once 3 - i stages are unfrozen, i.e. from step 5 * (3 - i)
    assert moved == [[False, False, False], [False, False, True], [False, True, True]]


# ----------------------------------------------------------------------------- LoRA


def lenet_model(seed: int = 0) -> ct.MultiTaskModel:
    torch.manual_seed(seed)
    return ct.MultiTaskModel(
        {"name": "lenet", "channels": [4, 8], "features": 16, "dropout": 0.0},
        [ct.Task("a", num_classes=3)],
        input_shape=(1, 16, 16),
    )


def image_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 16, 16, generator=g)
    return x, (x[:, :, :8].mean((1, 2, 3)) > 0).long() + (x[:, :, 8:].mean((1, 2, 3)) > 0.1).long()


@needs_peft
def test_lora_trains_and_saves_only_the_adapter(tmp_path: Path) -> None:
    from crosstask.models.lora import apply_lora, lora_state_dict, save_adapter

    model = apply_lora(lenet_model(), r=2, alpha=4, train_heads=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.rsplit(".lora_", 1)[0] for n in trainable} == {
        f"architecture.trunk.backbone.{layer}" for layer in ("conv1.0", "conv2.0", "fc.1")
    }  # both convolutions and the linear layer
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    x, y = image_data()
    ct.fit(
        model,
        method={"name": "erm", "finetune": "lora"},
        data=ct.ArrayDataset(x, {"a": y}),
        steps=10,
        optim={"name": "adam", "lr": 0.01},
        output_dir=tmp_path,
    )
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(n.endswith("lora_B.default.weight") and p.abs().sum() > 0 for n, p in model.named_parameters())
    assert set(lora_state_dict(model)) == trainable
    saved = torch.load(save_adapter(model, tmp_path / "adapter.pt"), weights_only=True)
    assert set(saved["state"]) == trainable and saved["settings"]["r"] == 2
    with_heads = apply_lora(lenet_model(), target_modules=["conv2"])
    assert {n.split(".")[0] for n in lora_state_dict(with_heads)} == {"architecture", "heads"}


@needs_peft
def test_merged_model_is_base_plus_adapter_and_reloading_reproduces_outputs(tmp_path: Path) -> None:
    from peft.tuners.lora import LoraLayer

    from crosstask.models.lora import apply_lora, load_adapter, merge_lora, save_adapter

    base = lenet_model()
    model = apply_lora(copy.deepcopy(base), r=2, alpha=6)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, p in model.named_parameters():
            if ".lora_" in name or name.startswith("heads."):
                p.add_(0.3 * torch.randn_like(p))
    x, _ = image_data(16)
    model.eval()
    expected = model(x)["a"]
    fc = model.architecture.trunk.backbone.fc[1]
    delta = 3.0 * fc.lora_B["default"].weight @ fc.lora_A["default"].weight  # (alpha / r) · B A
    fc_expected = fc.base_layer.weight.detach() + delta

    path = save_adapter(model, tmp_path / "adapter.pt")
    reloaded = load_adapter(copy.deepcopy(base), path).eval()
    torch.testing.assert_close(reloaded(x)["a"], expected, rtol=0, atol=1e-6)

    merged = merge_lora(model)
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert set(merged.state_dict()) == set(base.state_dict())  # a plain model again
    torch.testing.assert_close(
        merged.architecture.trunk.backbone.fc[1].weight, fc_expected, rtol=0, atol=1e-6
    )
    torch.testing.assert_close(merged(x)["a"], expected, rtol=0, atol=1e-5)
    plain = copy.deepcopy(base)
    plain.load_state_dict(merged.state_dict())
    torch.testing.assert_close(plain.eval()(x)["a"], expected, rtol=0, atol=1e-5)


@needs_peft
def test_lora_errors_are_clear() -> None:
    from crosstask.models.lora import apply_lora

    with pytest.raises(ConfigError, match="needs a model with LoRA adapters"):
        erm(lenet_model(), finetune="lora")
    with pytest.raises(ConfigError, match="finetune: lora"):
        erm(apply_lora(lenet_model()), finetune="full")
    with pytest.raises(ConfigError, match="'conv9' names no module"):
        apply_lora(lenet_model(), target_modules=["conv9"])
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(apply_lora(lenet_model()))


def test_lora_without_peft_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from crosstask.models.lora import apply_lora

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft fails as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'crosstask\[lora\]'"):
        apply_lora(lenet_model())


def test_lora_config_loads_once_the_model_key_is_wired() -> None:
    from crosstask.config import ModelConfig

    if "lora" not in ModelConfig.model_fields:
        pytest.skip("model.lora is not a config key yet (crosstask/config.py)")
    experiment = load_config(REPO / "configs" / "digits_finetune_lora.yaml")
    assert experiment.method.finetune.name == "lora"
