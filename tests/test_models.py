"""Tests for prcl.models: encoders, local weights, DeepLabV3+ student, probability head, EMA teacher."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from prcl.errors import UserError
from prcl.models import (
    ProbabilityHead,
    Segmenter,
    SegmenterOutput,
    build_encoder,
    build_segmenter,
    efficientnet_lite0_weights_path,
    ema_decay,
    ema_update,
    load_encoder_weights,
    make_teacher,
)
from prcl.models.release_checkpoint import (
    load_release_checkpoint,
    release_state_from_student,
    student_state_from_release,
)
from prcl.models.weights import map_by_order, read_state_dict

from tolerances import EPS32, assert_within, network_bound, summation_bound


def _randomise(module: nn.Module, seed: int = 0, norm_only: bool = False) -> nn.Module:
    """Fill parameters and float buffers with random values in [0.5, 1.5) (so equality checks mean
    something). norm_only: only BatchNorm tensors (conv weights are random from init already)."""
    generator = torch.Generator().manual_seed(seed)
    modules = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)] if norm_only else [module]
    with torch.no_grad():
        for part in modules:
            for tensor in list(part.parameters()) + list(part.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return module


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine, two spinning OpenMP threads make the ResNet-101
    forward passes here up to 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet101_student() -> Segmenter:
    return build_segmenter("resnet101", num_classes=21, output_stride=16).eval()


# ---------------------------------------------------------------- sizes and shapes


def test_resnet101_student_has_the_papers_parameter_count(resnet101_student):
    assert sum(p.numel() for p in resnet101_student.parameters()) == 59_520_693


def test_resnet101_student_outputs_are_81x81_at_321(resnet101_student):
    with torch.no_grad():
        out = resnet101_student(torch.randn(1, 3, 321, 321))
    assert isinstance(out, SegmenterOutput)
    assert out.logits.shape == (1, 21, 81, 81)
    assert out.mu.shape == (1, 256, 81, 81)
    assert out.features.shape == (1, 304, 81, 81)
    # the ASPP output at stride 16, which F's last 256 channels upsample (what the folded head relies on)
    assert out.context.shape == (1, 256, 21, 21)
    assert torch.equal(out.features[:, 48:],
                       F.interpolate(out.context, size=(81, 81), mode="bilinear", align_corners=True))


def test_student_layout_matches_release_checkpoint_keys(resnet101_student):
    release = release_state_from_student(resnet101_student.state_dict())
    expected = {
        "resnet_conv1.weight": (64, 3, 7, 7),
        "resnet_layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "resnet_layer4.2.conv3.weight": (2048, 512, 1, 1),
        "ASPP.convs.0.0.weight": (256, 2048, 1, 1),
        "ASPP.convs.3.0.weight": (256, 2048, 3, 3),
        "ASPP.convs.4.1.weight": (256, 2048, 1, 1),
        "ASPP.convs.4.2.running_var": (256,),
        "ASPP.project.0.weight": (256, 1280, 1, 1),
        "project.0.weight": (48, 256, 1, 1),
        "classifier.0.weight": (256, 304, 3, 3),
        "classifier.3.bias": (21,),
        "representation.3.weight": (256, 256, 1, 1),
        "representation.3.bias": (256,),
    }
    for key, shape in expected.items():
        assert tuple(release[key].shape) == shape, key
    assert not any(key.startswith("resnet_fc") for key in release)
    assert len(release) == 682  # the release checkpoint's "model" entry has 682 tensors


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_rates_follow_output_stride(output_stride, rates):
    student = build_segmenter("resnet18", num_classes=3, output_stride=output_stride)
    dilations = tuple(student.ASPP.convs[i][0].dilation[0] for i in (1, 2, 3))
    assert dilations == rates
    assert student.ASPP.convs[0][0].kernel_size == (1, 1)
    assert all(m.bias is None for m in student.ASPP.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.Dropout) for m in student.modules())


@pytest.mark.parametrize("name, low, deep", [
    ("resnet18", 64, 512),
    ("tf_efficientnet_lite0", 24, 320),
    ("mobilenetv3_large_100", 24, 960),
])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_encoder_gives_stride4_and_deep_maps(name, low, deep, output_stride):
    encoder = build_encoder(name, output_stride).eval()
    assert (encoder.low_level_channels, encoder.deep_channels) == (low, deep)
    with torch.no_grad():
        low_map, deep_map = encoder(torch.randn(1, 3, 64, 64))
    assert low_map.shape == (1, low, 16, 16)
    assert deep_map.shape == (1, deep, 64 // output_stride, 64 // output_stride)


def test_resnet101_encoder_channels_and_strides():
    encoder = build_encoder("resnet101", 8).eval()
    assert (encoder.low_level_channels, encoder.deep_channels) == (256, 2048)
    assert encoder.body.layer3[1].conv2.dilation == (2, 2)
    assert encoder.body.layer4[1].conv2.dilation == (4, 4)
    assert encoder.body.layer4[0].conv2.stride == (1, 1)
    assert encoder.output_stride == 8


def test_resnet101c_has_the_deep_stem():
    encoder = build_encoder("resnet101c", 16)
    stem = encoder.body.conv1
    convs = [m for m in stem if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 64, (3, 3)), (64, 64, (3, 3)), (64, 128, (3, 3))
    ]
    assert encoder.body.bn1.num_features == 128
    assert encoder.body.layer1[0].conv1.in_channels == 128
    assert (encoder.low_level_channels, encoder.deep_channels) == (256, 2048)


def test_segmenter_works_with_efficientnet_lite0():
    student = build_segmenter("tf_efficientnet_lite0", num_classes=5, output_stride=16).eval()
    with torch.no_grad():
        out = student(torch.randn(1, 3, 65, 65))
    assert out.logits.shape == (1, 5, 17, 17)
    assert out.features.shape == (1, 304, 17, 17)
    assert student.project[0].in_channels == 24


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(encoder="not_a_model"), "not_a_model"),
    (dict(encoder="resnet18", output_stride=32), "output stride"),
    (dict(encoder="vit_tiny_patch16_224"), "vit_tiny_patch16_224"),
    (dict(encoder="resnet18", num_classes=0), "classes"),
    (dict(encoder="resnet101c", weights="imagenet"), "no stable public address"),  # nothing to download
])
def test_bad_model_settings_raise_user_error(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        build_segmenter(**kwargs)


# ---------------------------------------------------------------- probability head


def _reference_probability_head(head: ProbabilityHead, x: torch.Tensor) -> torch.Tensor:
    """The formula written out with per-pixel F.linear (channels last), as in the release code."""
    y = F.linear(x.permute(0, 2, 3, 1), F.normalize(head.fc1, dim=-1)).permute(0, 3, 1, 2)
    y = F.relu(head.bn1(y))
    y = F.linear(y.permute(0, 2, 3, 1), F.normalize(head.fc2, dim=-1)).permute(0, 3, 1, 2)
    y = head.gamma * head.bn2(y) + head.beta
    return torch.sigmoid(torch.log(torch.exp(y) + 1e-6))


def test_probability_head_parameters():
    head = ProbabilityHead(304, 256)
    assert sum(p.numel() for p in head.parameters()) == 143_874
    names = {n for n, _ in head.named_parameters()}
    assert names == {"fc1", "fc2", "gamma", "beta", "bn1.weight", "bn1.bias"}
    assert head.fc1.shape == (256, 304) and head.fc2.shape == (256, 256)
    assert head.gamma.item() == 1.0 and head.beta.item() == 0.0


def test_probability_head_matches_formula_and_is_in_unit_interval():
    torch.manual_seed(0)
    head = ProbabilityHead(304, 256)
    x = torch.randn(2, 304, 5, 6)
    var = head(x)  # train mode: batch statistics
    assert var.shape == (2, 256, 5, 6)
    assert torch.all(var > 0) and torch.all(var < 1)
    head.eval()
    expected = _reference_probability_head(head, x)
    # a two-layer network (304- and 256-term products) summed in other orders: a forward pass's rounding
    assert_within(head(x), expected, network_bound(expected))


def _head_with_statistics() -> ProbabilityHead:
    """An eval-mode head whose BatchNorms and gamma/beta are far from the identity (so a wrong fold shows)."""
    torch.manual_seed(0)
    head = _randomise(ProbabilityHead(304, 256), norm_only=True).eval()
    with torch.no_grad():
        head.bn1.running_mean.normal_()
        head.bn2.running_mean.normal_()
        head.gamma.fill_(1.7)
        head.beta.fill_(-0.4)
    return head


def test_eval_forward_folds_the_batch_norms_without_losing_precision():
    """In eval mode the head folds its BNs into the linear maps (one matrix product per layer).

    Both float32 forwards are measured against the layer-by-layer formula in float64: the folded one
    only reorders float32 roundings, so its error must be of the order of the layer-by-layer
    float32 error (at most 4 times it; a wrong fold, e.g. a missing shift, is off by O(0.1)).
    Gradients still flow in eval mode (the export traces it; nobody should get a silent zero).
    """
    head = _head_with_statistics()
    x = torch.randn(2, 304, 5, 6, requires_grad=True)
    folded = head(x)
    layer_by_layer = _reference_probability_head(head, x)
    with torch.no_grad():
        truth = _reference_probability_head(copy.deepcopy(head).double(), x.detach().double())
    float32_error = float((layer_by_layer.detach().double() - truth).abs().max())
    assert float((folded.detach().double() - truth).abs().max()) <= 4 * float32_error + EPS32
    folded.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert head.fc1.grad is not None and head.bn1.weight.grad is not None


def test_folded_mean_variance_folds_once_and_keeps_the_precision():
    """The evaluation's mean variance (folded once, pixels as rows): within 4 x the layer-by-layer float32 error of
    the float64 mean variance plus one float32 eps (that error, 1-2e-8, can be a few times smaller than another
    summation order's; a wrong fold is off by O(0.1)), for NCHW and channels-last features alike; no gradient; weights changed afterwards
    do not reach a function made before (it is made per evaluation), but a new one sees them."""
    from prcl.infer.protocols import mean_variance

    head = _head_with_statistics()
    x = torch.randn(2, 304, 5, 6)
    with torch.no_grad():
        truth = _reference_probability_head(copy.deepcopy(head).double(), x.double()).mean(dim=1, keepdim=True)
        float32_error = float((_reference_probability_head(head, x).double().mean(dim=1, keepdim=True) - truth).abs().max())
    folded = head.folded_mean_variance()
    for features in (x, x.contiguous(memory_format=torch.channels_last)):
        got = folded(features)
        assert got.shape == (2, 1, 5, 6) and not got.requires_grad
        assert float((got.double() - truth).abs().max()) <= 4 * float32_error + EPS32
    output = SegmenterOutput(logits=None, mu=None, features=x)
    before = mean_variance(head)(output)
    assert torch.equal(before, folded(x))
    with torch.no_grad():
        head.beta.fill_(0.6)  # a large change of every variance
    assert torch.equal(folded(x), before)
    assert (mean_variance(head)(output) - before).abs().min() > 0.01
    head.train()  # in training mode mean_variance runs the head itself (BatchNorm on the batch, with gradient)
    assert mean_variance(head)(output).requires_grad


def test_folded_mean_variance_takes_the_first_layer_on_the_coarse_context():
    """Given the segmenter's ASPP output, evaluation applies the first layer's context part at the coarse size and
    upsamples it (linear per pixel; bilinear weights sum to 1): the same variance as from the 304-channel F, within
    4 x the layer-by-layer float32 error of the float64 formula plus one float32 eps (measured: about 6.5e-8 against
    a bound near 1.9e-7; a nearest-neighbour upsampling is off by 2e-2), for NCHW and channels-last inputs, an upsampling
    by 4 and none (OS equal to 4), and through ``mean_variance`` from a SegmenterOutput. A context that is not F's
    last channels (here: shifted) gives other values, so the test can tell."""
    from prcl.infer.protocols import mean_variance

    head = _head_with_statistics()
    for coarse_size, size in (((3, 4), (10, 13)), ((5, 6), (5, 6))):
        low, context = torch.randn(2, 48, *size), torch.randn(2, 256, *coarse_size)
        x = torch.cat([low, F.interpolate(context, size=size, mode="bilinear", align_corners=True)], dim=1)
        with torch.no_grad():
            truth = _reference_probability_head(copy.deepcopy(head).double(), x.double()).mean(dim=1, keepdim=True)
            float32_error = float((_reference_probability_head(head, x).double().mean(dim=1, keepdim=True)
                                   - truth).abs().max())
        folded = head.folded_mean_variance()
        for layout in (torch.contiguous_format, torch.channels_last):
            got = folded(x.contiguous(memory_format=layout), context.contiguous(memory_format=layout))
            assert got.shape == (2, 1, *size)
            assert float((got.double() - truth).abs().max()) <= 4 * float32_error + EPS32
        output = SegmenterOutput(logits=None, mu=None, features=x, context=context)
        assert float((mean_variance(head)(output).double() - truth).abs().max()) <= 4 * float32_error + EPS32
        assert float((folded(x, context + 0.5).double() - truth).abs().max()) > 1e-3


def test_probability_head_weight_rows_are_normalised():
    torch.manual_seed(0)
    head = _randomise(ProbabilityHead(304, 256)).eval()  # eval: BN does not undo weight scaling
    with torch.no_grad():
        head.gamma.fill_(1.0)
        head.beta.fill_(0.0)
    x = torch.randn(1, 304, 4, 4)
    before = head(x)
    with torch.no_grad():
        head.fc1.mul_(3.0)
        head.fc2[0].mul_(0.25)
    # the rows are normalised again (304- and 256-term norms): the same network up to a forward pass's rounding
    assert_within(head(x), before, network_bound(before))



def test_probability_head_init_is_kaiming_normal_with_default_gain():
    """kaiming_normal_(a=0): entries of std sqrt(2 / fan_in), so every row norm is near sqrt(2).

    a = sqrt(5) (PyTorch's Linear default) would give std sqrt(1/3 / fan_in), row norms near 0.58.
    """
    torch.manual_seed(0)
    head = ProbabilityHead(304, 256)
    for weight, fan_in in ((head.fc1, 304), (head.fc2, 256)):
        norms = weight.detach().norm(dim=1)
        assert abs(float(norms.mean()) - math.sqrt(2)) < 0.02
        assert float(norms.min()) > 1.1 and float(norms.max()) < 1.7
        assert abs(float(weight.detach().std()) - math.sqrt(2 / fan_in)) < 0.005

def test_probability_head_is_stable_for_extreme_inputs():
    head = ProbabilityHead(304, 256)
    x = torch.randn(2, 304, 3, 3) * 1e4
    with torch.no_grad():
        head.gamma.fill_(1e4)  # pushes the pre-sigmoid value far past exp's float32 range
    x.requires_grad_(True)
    var = head(x)
    assert torch.isfinite(var).all()
    var.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.gamma.grad).all()
    with torch.no_grad():
        head.gamma.fill_(-1e4)
        low = head(x)
    # log(exp(x) + 1e-6) keeps the variance at or above about sigmoid(log 1e-6) = 1e-6.
    assert low.min() >= 0.99e-6 and torch.isfinite(low).all()


# ---------------------------------------------------------------- weights from local files


@pytest.fixture(scope="module")
def torchvision_resnet18_file(tmp_path_factory):
    model = _randomise(torchvision.models.resnet18(weights=None), seed=1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def test_torchvision_resnet_file_loads_strictly(torchvision_resnet18_file):
    saved = torch.load(torchvision_resnet18_file, weights_only=True)
    encoder = build_encoder("resnet18", 16, weights=torchvision_resnet18_file)
    loaded = encoder.body.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key


def test_torchvision_weights_reproduce_torchvision_features(tmp_path):
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
    _randomise(reference, seed=2, norm_only=True)
    reference.eval()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    encoder = build_encoder("resnet50", 16, weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        low_map, deep_map = encoder(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        low_expected = reference.layer1(y)
        deep_expected = reference.layer4(reference.layer3(reference.layer2(low_expected)))
    # timm's ResNet layers against torchvision's with the same weights: a forward pass's rounding of each map
    assert_within(low_map, low_expected, network_bound(low_expected), "layer1")
    assert_within(deep_map, deep_expected, network_bound(deep_expected), "layer4")  # (the same, deeper)


def test_file_without_bn_counters_loads(tmp_path, torchvision_resnet18_file):
    state = torch.load(torchvision_resnet18_file, weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    encoder = build_encoder("resnet18", 16, weights=path)
    assert torch.equal(encoder.body.layer2[0].bn1.running_var, state["layer2.0.bn1.running_var"])


def test_truncated_file_names_the_missing_key(tmp_path, torchvision_resnet18_file):
    state = torch.load(torchvision_resnet18_file, weights_only=True)
    del state["layer3.1.conv2.weight"]
    path = tmp_path / "truncated.pth"
    torch.save(state, path)
    expected = r"truncated\.pth.*missing keys \[layer3\.1\.conv2\.weight\] \(1 in all\)"
    with pytest.raises(UserError, match=expected):
        build_encoder("resnet18", 16, weights=path)


def test_wrong_shape_names_the_key(tmp_path, torchvision_resnet18_file):
    state = torch.load(torchvision_resnet18_file, weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    encoder = build_encoder("resnet18", 16)
    before = encoder.body.layer1[0].conv2.weight.clone()
    with pytest.raises(UserError, match=r"bad_shape\.pth.*shape mismatches \[layer1\.0\.conv1\.weight"):
        load_encoder_weights(encoder, path)
    assert torch.equal(encoder.body.layer1[0].conv2.weight, before)  # nothing half-loaded


def test_wrong_architecture_lists_unexpected_keys(torchvision_resnet18_file):
    with pytest.raises(UserError, match=r"resnet18\.pth.*'tf_efficientnet_lite0'.*unexpected keys"):
        build_encoder("tf_efficientnet_lite0", 16, weights=torchvision_resnet18_file)


def test_missing_and_corrupt_files_raise_user_error(tmp_path):
    missing = tmp_path / "nope" / "resnet101-63fe2227.pth"
    with pytest.raises(UserError, match="resnet101-63fe2227.pth does not exist"):
        build_encoder("resnet18", 16, weights=missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(UserError, match="corrupt.pth cannot be read"):
        build_encoder("resnet18", 16, weights=corrupt)
    half = tmp_path / "half.pth"
    torch.save(nn.Linear(300, 300).state_dict(), half)
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    with pytest.raises(UserError, match="half.pth cannot be read"):
        build_encoder("resnet18", 16, weights=half)
    pickled_model = tmp_path / "pickled_model.pth"
    torch.save(nn.Linear(2, 2), pickled_model)
    with pytest.raises(UserError, match="pickled_model.pth holds objects other than tensors"):
        build_encoder("resnet18", 16, weights=pickled_model)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(UserError, match="list.pth does not hold a state dict"):
        build_encoder("resnet18", 16, weights=not_a_state_dict)


def test_deep_stem_layout_loads_into_resnet101c(tmp_path):
    source = _randomise(build_encoder("resnet101c", 16), seed=3, norm_only=True)
    state = source.body.state_dict()
    assert state["conv1.0.weight"].shape == (64, 3, 3, 3)
    assert state["conv1.1.running_mean"].shape == (64,)
    assert state["conv1.3.weight"].shape == (64, 64, 3, 3)
    assert state["conv1.4.weight"].shape == (64,)
    assert state["conv1.6.weight"].shape == (128, 64, 3, 3)
    assert state["bn1.weight"].shape == (128,)
    wrapped = {"module." + k: v for k, v in state.items()}
    wrapped["module.fc.weight"] = torch.zeros(1000, 2048)
    wrapped["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet101_deep_stem.pth"
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    target = build_encoder("resnet101c", 16, weights=path)
    for key, value in target.body.state_dict().items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(UserError, match="resnet101_deep_stem.pth.*'resnet101'"):
        build_encoder("resnet101", 16, weights=path)


# ---------------------------------------------------------------- EfficientNet-Lite0 package weights


def _chelsea_batch() -> torch.Tensor:
    """scikit-image's cat photo: 224x224 bilinear resize, mean = std = 0.5 (timm's cfg for this model)."""
    from skimage import data

    image = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.BILINEAR), dtype=np.float32)
    x = torch.from_numpy(image / 255.0).permute(2, 0, 1)[None]
    return (x - 0.5) / 0.5


def test_efficientnet_lite0_package_weights_classify_the_cat():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    path = efficientnet_lite0_weights_path()
    model.load_state_dict(map_by_order(read_state_dict(path), model.state_dict(), path))
    model.eval()
    with torch.no_grad():
        probabilities = model(_chelsea_batch()).softmax(dim=1)[0]
    assert probabilities.argmax().item() == 285  # ImageNet "Egyptian cat"
    assert probabilities[285].item() > 0.5


def test_efficientnet_lite0_imagenet_weights_load_into_the_encoder():
    path = efficientnet_lite0_weights_path()
    packaged = read_state_dict(path)
    encoder = build_encoder("tf_efficientnet_lite0", 8, weights="imagenet")
    assert encoder.mean == (0.5, 0.5, 0.5)
    assert torch.equal(encoder.body.conv_stem.weight, packaged["_conv_stem.weight"])
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_by_order(packaged, full.state_dict(), path)
    own = encoder.body.state_dict()
    assert len(own) > 250
    for key, value in own.items():
        assert torch.equal(value, mapped[key]), key


def test_order_mapping_rejects_a_shape_mismatch(tmp_path):
    packaged = read_state_dict(efficientnet_lite0_weights_path())
    packaged["_fc.weight"] = torch.zeros(10, 1280)
    path = tmp_path / "lite0_bad.pth"
    torch.save(packaged, path)
    expected = r"lite0_bad\.pth.*_fc\.weight \(10, 1280\) -> classifier\.weight \(1000, 1280\)"
    with pytest.raises(UserError, match=expected):
        build_encoder("tf_efficientnet_lite0", 16, weights=path)


# ---------------------------------------------------------------- EMA teacher


@pytest.mark.parametrize(
    "step, expected", [(0, 0.0), (1, 0.5), (9, 0.9), (99, 0.99), (100, 0.99), (10**6, 0.99)]
)
def test_ema_decay_schedule(step, expected):
    assert math.isclose(ema_decay(step, 0.99), expected, abs_tol=1e-12)


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_make_teacher_is_a_frozen_independent_copy():
    student = _randomise(_tiny_net())
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (_, t), (_, s) in zip(teacher.state_dict().items(), student.state_dict().items()):
        assert torch.equal(t, s)
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert not torch.equal(teacher[0].weight, student[0].weight)


def test_ema_update_averages_parameters_not_buffers():
    torch.manual_seed(0)
    student = _randomise(_tiny_net(), seed=4)
    teacher = _randomise(make_teacher(_tiny_net()), seed=5)
    teacher_params = {n: p.clone() for n, p in teacher.named_parameters()}
    teacher_buffers = {n: b.clone() for n, b in teacher.named_buffers()}
    decay = ema_update(teacher, student, step=3, alpha=0.99)
    assert decay == pytest.approx(0.75)
    student_params = dict(student.named_parameters())
    for name, value in teacher.named_parameters():
        expected = 0.75 * teacher_params[name] + 0.25 * student_params[name]
        # lerp computes t + w (s - t), the formula 0.75 t + 0.25 s: 3 roundings of |t| + |s| apart at most
        size = teacher_params[name].abs() + student_params[name].abs()
        assert_within(value, expected, summation_bound(size, 3), name)
    for name, value in teacher.named_buffers():
        assert torch.equal(value, teacher_buffers[name]), name
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, student, step=0)  # decay 0: the teacher becomes the student
    for name, value in teacher.named_parameters():
        # a lerp with weight 1: the student, but for 2 roundings of |t| + |s|
        size = before[name].abs() + student_params[name].abs()
        assert_within(value, student_params[name], summation_bound(size, 2), name)


# ---------------------------------------------------------------- the authors' checkpoint layout


def test_release_checkpoint_round_trip(tmp_path):
    student = _randomise(build_segmenter("resnet18", num_classes=4), seed=6)
    head = _randomise(ProbabilityHead(), seed=7)
    release = release_state_from_student(student.state_dict())
    assert "resnet_conv1.weight" in release and "resnet_layer4.1.bn2.bias" in release
    assert student_state_from_release(release).keys() == student.state_dict().keys()
    path = tmp_path / "release.pth"
    torch.save({"epoch": 1, "model": release, "ema": release, "uncer_head": head.state_dict()}, path)
    loaded = load_release_checkpoint(path)
    fresh_student = build_segmenter("resnet18", num_classes=4)
    fresh_student.load_state_dict(loaded["ema"])  # strict
    fresh_head = ProbabilityHead()
    fresh_head.load_state_dict(loaded["probability_head"])  # strict
    for key, value in fresh_student.state_dict().items():
        assert torch.equal(value, student.state_dict()[key]), key
    assert torch.equal(fresh_head.fc1, head.fc1)
    with pytest.raises(UserError, match="missing.pth does not exist"):
        load_release_checkpoint(tmp_path / "missing.pth")


def test_encoder_maps_imagenet_normalised_input_to_its_own_normalisation():
    """tf_efficientnet_lite0 expects mean = std = 0.5; the data pipeline gives ImageNet-normalised input."""
    from prcl.models import build_encoder

    encoder = build_encoder("tf_efficientnet_lite0", output_stride=16).eval()
    pixels = torch.rand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = encoder((pixels - mean) / std)
        expected = encoder.body((pixels - 0.5) / 0.5)
    # the input renormalised in one step (x * scale + shift) against two: a few eps at the input, carried through
    # the network like one more layer's rounding: a forward pass's rounding
    assert_within(ours[1], expected[encoder.deep_index], network_bound(expected[encoder.deep_index]))
    assert "input_scale" not in encoder.state_dict()


def test_representation_head_runs_only_when_asked_for():
    """``representation=False``: mu is None, the head never runs (no forward, no BN update), and the logits and
    features are bit for bit those of a full forward; inference (dense maps, export) asks for no mu."""
    from prcl.infer.export import ExportModule
    from prcl.infer.protocols import dense_maps

    net = _randomise(build_segmenter("resnet18", num_classes=3, output_stride=16), seed=8, norm_only=True).eval()
    calls = []
    net.representation.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = net(image)
        assert len(calls) == 1 and full.mu is not None and torch.isfinite(full.logits).all()
        part = net(image, representation=False)
        assert len(calls) == 1 and part.mu is None
        assert torch.equal(part.logits, full.logits) and torch.equal(part.features, full.features)
        maps = dense_maps(net, 3)(image)
        ExportModule(net, ProbabilityHead().eval())(image)
    assert len(calls) == 1
    assert torch.equal(maps, F.interpolate(full.logits, size=(64, 64), mode="bilinear", align_corners=True).softmax(1))
    net.train()
    tracked = int(net.representation[1].num_batches_tracked)
    net(image, representation=False)
    assert int(net.representation[1].num_batches_tracked) == tracked
