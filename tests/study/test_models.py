"""Tests for lowprec.models: shapes, Caffe parameter counts and init, solvers, quick training."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowprec.study.models import (
    LANGUAGE_MODELS,
    MODELS,
    SOLVERS,
    CifarResNet,
    ShortcutA,
    WithinChannelLRN,
    build_for_data,
    build_model,
    default_solver,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry() -> None:
    assert set(MODELS) == {"cifar10_quick", "cifar10_full", "resnet20", "small_cnn", "gpt_tiny"}
    assert set(SOLVERS) == set(MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="no solver"):
        default_solver("vgg16")
    assert isinstance(build_model("cifar10-quick"), nn.Module)  # '-' and '_' interchangeable


@pytest.mark.parametrize("name", sorted(set(MODELS) - LANGUAGE_MODELS))
@pytest.mark.parametrize(
    ("shape", "classes"),
    [((3, 32, 32), 10), ((1, 28, 28), 10), ((3, 32, 32), 7)],
)
def test_output_shapes(name: str, shape: tuple[int, int, int], classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes, in_channels=shape[0], image_size=shape[1])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_small_cnn_on_digits_shape_and_params() -> None:
    model = build_model("small_cnn", in_channels=1, image_size=8)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    # conv1 1*16*9+16 + conv2 16*32*9+32 + fc (32*4*4)*10+10
    assert n_params(model) == (144 + 16) + (4608 + 32) + (5120 + 10) == 9930


def caffe_pool_out(n: int, k: int = 3, s: int = 2) -> int:
    """Caffe's pooling output size: ceil((n - k) / s) + 1 (no padding)."""
    return math.ceil((n - k) / s) + 1


@pytest.mark.parametrize("name", ["cifar10_quick", "cifar10_full"])
@pytest.mark.parametrize("size", [32, 28, 24])
def test_caffe_pool_sizes(name: str, size: int) -> None:
    model = build_model(name, in_channels=3, image_size=size)
    x = torch.zeros(1, 3, size, size)
    sizes = {}
    for layer_name, layer in model.named_children():
        x = layer(x)
        if layer_name.startswith("pool"):
            sizes[layer_name] = x.shape[-1]
    s1 = caffe_pool_out(size)
    s2 = caffe_pool_out(s1)
    s3 = caffe_pool_out(s2)
    assert sizes == {"pool1": s1, "pool2": s2, "pool3": s3}
    if size == 32:
        assert (s1, s2, s3) == (16, 8, 4)


def test_caffe_avg_pool_border_divisor() -> None:
    """Partial windows at the border average only the in-image cells, as in Caffe."""
    model = build_model("cifar10_quick")
    out = model.pool2(torch.ones(1, 1, 16, 16))
    assert out.shape == (1, 1, 8, 8)
    assert torch.allclose(out, torch.ones_like(out))


def test_cifar10_quick_layout_and_param_count() -> None:
    model = build_model("cifar10_quick", num_classes=10, in_channels=3, image_size=32)
    names = [n for n, _ in model.named_children()]
    assert names == [
        "conv1", "pool1", "relu1", "conv2", "relu2", "pool2",
        "conv3", "relu3", "pool3", "flatten", "ip1", "ip2",
    ]  # fmt: skip
    assert isinstance(model.pool1, nn.MaxPool2d) and isinstance(model.pool2, nn.AvgPool2d)
    assert model.ip1.in_features == 64 * 4 * 4
    expected = (
        (3 * 32 * 25 + 32)  # conv1 5x5: 2,432
        + (32 * 32 * 25 + 32)  # conv2: 25,632
        + (32 * 64 * 25 + 64)  # conv3: 51,264
        + (64 * 4 * 4 * 64 + 64)  # ip1: 65,600
        + (64 * 10 + 10)  # ip2: 650
    )
    assert expected == 145_578
    assert n_params(model) == expected


def test_cifar10_full_layout_and_param_count() -> None:
    model = build_model("cifar10_full")
    names = [n for n, _ in model.named_children()]
    assert names == [
        "conv1", "pool1", "relu1", "norm1", "conv2", "relu2", "pool2", "norm2",
        "conv3", "relu3", "pool3", "flatten", "ip1",
    ]  # fmt: skip
    assert isinstance(model.norm1, nn.LocalResponseNorm) and model.norm1.size == 3
    expected = (3 * 32 * 25 + 32) + (32 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (1024 * 10 + 10)
    assert n_params(model) == expected == 89_578
    within = build_model("cifar10_full", lrn="within")
    assert isinstance(within.norm2, WithinChannelLRN)


def test_within_channel_lrn_matches_caffe_formula() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 5) * 30
    lrn = WithinChannelLRN(3, alpha=5e-5, beta=0.75)
    y = lrn(x)
    padded = F.pad(x, (1, 1, 1, 1))
    for c in range(2):
        for i in range(5):
            for j in range(5):
                s = (padded[0, c, i : i + 3, j : j + 3] ** 2).sum() / 9
                expect = x[0, c, i, j] * (1 + 5e-5 * s) ** -0.75
                assert torch.allclose(y[0, c, i, j], expect, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "layer_stds"),
    [
        ("cifar10_quick", {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "ip1": 0.1, "ip2": 0.1}),
        ("cifar10_full", {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "ip1": 0.01}),
    ],
)
def test_caffe_gaussian_init(name: str, layer_stds: dict[str, float]) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    for layer, std in layer_stds.items():
        w = getattr(model, layer).weight.detach()
        # >= 640 samples: the sample std is within ~6% of the true one with huge margin at 15%
        assert abs(w.std().item() / std - 1) < 0.15, layer
        assert abs(w.mean().item()) < 4 * std / math.sqrt(w.numel()) + 1e-12, layer
        assert torch.count_nonzero(getattr(model, layer).bias) == 0, layer


def test_resnet20_structure_params_and_init() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20")
    assert isinstance(model, CifarResNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 1 stem + 18 in blocks (+ fc = 20 weighted layers)
    assert isinstance(model.layer2[0].shortcut, ShortcutA)
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    names = dict(model.named_modules())
    assert {"conv1", "layer2.0.conv1", "layer3.2.bn2", "fc"} <= set(names)
    # option A: stem 464 + stage1 14,016 + stage2 51,072 + stage3 203,520 + fc 650
    assert n_params(model) == 269_722
    assert n_params(build_model("resnet20", shortcut="B")) == 269_722 + (512 + 64) + (2048 + 128)
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * 9))
    w = model.layer3[1].conv1.weight.detach()
    assert abs(w.std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.05
    assert torch.equal(model.bn1.weight.detach(), torch.ones(16))
    # spatial sizes 32 -> 32 -> 16 -> 8
    x = model.relu1(model.bn1(model.conv1(torch.zeros(1, 3, 32, 32))))
    assert model.layer3(model.layer2(model.layer1(x))).shape == (1, 64, 8, 8)


def test_shortcut_a_zero_pads_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert (y[:, :8] == 0).all() and (y[:, 24:] == 0).all()


def test_too_small_input_rejected() -> None:
    with pytest.raises(ValueError, match="too small"):
        build_model("cifar10_quick", image_size=2)


def test_solvers_match_the_study() -> None:
    q = default_solver("cifar10_quick")
    assert (q.lr, q.momentum, q.weight_decay, q.batch_size) == (0.001, 0.9, 0.004, 100)
    assert q.step_iterations() == (4000,) and q.iterations == 5000
    assert q.lr_at(3999) == pytest.approx(1e-3) and q.lr_at(4000) == pytest.approx(1e-4)
    assert q.step_iterations(500) == (400,)  # fractions scale with the run
    assert q.normalize == "caffe" and not q.augment
    assert q.epochs(50000) == pytest.approx(10.0)
    f = default_solver("cifar10_full")
    assert f.step_iterations() == (60000, 65000)
    assert f.lr_at(64999) == pytest.approx(1e-4) and f.lr_at(65000) == pytest.approx(1e-5)
    r = default_solver("resnet20")
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert r.step_iterations(1000) == (500, 750) and r.augment and r.normalize == "standard"
    s = default_solver("small_cnn")
    assert (s.lr, s.momentum, s.weight_decay, s.batch_size) == (0.05, 0.9, 5e-4, 64)
    assert s.replace(lr=0.1).lr == 0.1 and s.lr == 0.05


def test_caffe_param_multipliers() -> None:
    model = build_model("cifar10_full")
    opt = default_solver("cifar10_full").make_optimizer(model)
    by_name = {}
    for group in opt.param_groups:
        for name in group["names"]:
            by_name[name] = (group["lr"], group["weight_decay"])
    assert by_name["conv1.weight"] == pytest.approx((0.001, 0.004))
    assert by_name["conv1.bias"] == pytest.approx((0.002, 0.004))
    assert by_name["conv3.bias"] == pytest.approx((0.001, 0.004))  # no lr_mult in prototxt
    assert by_name["ip1.weight"] == pytest.approx((0.001, 1.0))  # decay_mult 250
    assert by_name["ip1.bias"] == pytest.approx((0.002, 0.0))  # decay_mult 0
    assert len(by_name) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown parameters"):
        default_solver("cifar10_full").param_groups(build_model("resnet20"))


def test_scheduler_steps_per_iteration() -> None:
    model = build_model("cifar10_quick")
    solver = default_solver("cifar10_quick")
    opt = solver.make_optimizer(model)
    sched = solver.make_scheduler(opt, total_iterations=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:8] == pytest.approx([0.001] * 8) and lrs[8:] == pytest.approx([0.0001] * 2)
    biases = [g for g in opt.param_groups if g["lr_mult"] == 2.0]
    assert biases and biases[0]["lr"] == pytest.approx(0.0002)  # bias lr_mult 2 preserved


def test_small_cnn_learns_digits_quickly() -> None:
    pytest.importorskip("sklearn")
    from lowprec.study.data import load_dataset

    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    solver = default_solver("small_cnn")
    opt = solver.make_optimizer(model)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(5):
        model.train()
        for x, y in ds.loader("train", solver.batch_size, shuffle=True, generator=g):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    elapsed = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        acc = (model(ds.test_x).argmax(1) == ds.test_y).float().mean().item()
    assert acc > 0.9, acc
    assert elapsed < 60, elapsed  # typically ~1 s on 2 idle cores; generous for loaded CI


# -- gpt_tiny -----------------------------------------------------------------------------


def _tiny_gpt(**kw: object) -> nn.Module:
    torch.manual_seed(0)
    return build_model("gpt_tiny", **{"vocab_size": 11, "d_model": 32, "n_layers": 1,
                                      "n_heads": 4, "block_size": 16, **kw})


def test_gpt_shapes_tied_head_and_parameter_count() -> None:
    d, v, t, layers = 128, 100, 64, 2
    model = build_model("gpt_tiny", num_classes=v)  # the defaults: d 128, 2 layers, context 64
    assert model.head.weight is model.tok_emb.weight
    per_block = 12 * d * d + 13 * d  # ln1, qkv, proj, ln2, fc, proj (weights and biases)
    assert n_params(model) == v * d + t * d + layers * per_block + 2 * d == 417_792
    out = model(torch.randint(0, v, (2, 10)))  # shorter than the context is fine
    assert out.shape == (2, 10, v)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, t + 1, dtype=torch.long))
    names = {n for n, _ in model.named_modules()}
    assert {"blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.0.mlp.fc", "head"} <= names


def test_gpt_build_errors() -> None:
    with pytest.raises(ValueError, match="not in_channels/image_size"):
        build_model("gpt_tiny", 10, 3, 32)
    with pytest.raises(ValueError, match="disagree"):
        build_model("gpt_tiny", 10, vocab_size=12)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        build_model("gpt_tiny", d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="attention must be"):
        build_model("gpt_tiny", attention="flash")
    with pytest.raises(ValueError, match="takes token windows"):
        build_for_data("gpt_tiny", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="takes images"):
        build_for_data("small_cnn", 10, (64,))
    assert build_for_data("gpt_tiny", 7, (16,)).pos_emb.num_embeddings == 16


def test_gpt_matmul_attention_matches_sdpa_and_is_causal() -> None:
    sdpa, matmul = _tiny_gpt(), _tiny_gpt(attention="matmul")
    matmul.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 11, (3, 16))
    torch.testing.assert_close(matmul(x), sdpa(x), rtol=1e-5, atol=1e-5)
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 11
    for model in (sdpa, matmul):
        a, b = model(x), model(changed)
        assert torch.equal(a[:, :9], b[:, :9])  # positions before 9 never see token 9
        assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_gpt_attention_against_a_loop_over_positions() -> None:
    """The matmul path against attention written position by position with plain sums."""
    model = _tiny_gpt(attention="matmul")
    attn = model.blocks[0].attn
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    attn.double()
    q, k, v = attn.qkv(x)[0].split(32, dim=1)
    heads = []
    for h in range(4):
        sl = slice(8 * h, 8 * h + 8)
        rows = []
        for i in range(5):
            s = torch.stack([(q[i, sl] * k[j, sl]).sum() / math.sqrt(8) for j in range(i + 1)])
            w = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
            rows.append(sum(w[j] * v[j, sl] for j in range(i + 1)))
        heads.append(torch.stack(rows))
    want = attn.proj(torch.cat(heads, dim=1))
    torch.testing.assert_close(attn(x)[0], want, rtol=1e-10, atol=1e-12)


def test_gpt_learns_a_periodic_sequence() -> None:
    model = _tiny_gpt()
    solver = default_solver("gpt_tiny")
    assert solver.optimizer == "adamw"
    opt = solver.make_optimizer(model)
    assert isinstance(opt, torch.optim.AdamW)
    seq = torch.arange(17) % 5  # next token = (token + 1) mod 5
    x, y = seq[:-1].repeat(8, 1), seq[1:].repeat(8, 1)
    for _ in range(60):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float((model(x).argmax(-1) == y).float().mean()) == 1.0
