"""Strong view of the unlabeled batch: geometry, mixing, colour, determinism (CPU, small shapes)."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from prcl.constants import IMAGENET_MEAN, IMAGENET_STD
from PIL import Image
from torchvision.transforms import functional as TF_pil

from prcl.data.strong_view import (
    JITTER_OPERATIONS,
    StrongView,
    class_mix_masks,
    colour_jitter,
    cutmix_boxes,
    gaussian_blur,
    hsv_to_rgb,
    mix,
    quantise_confidence,
    random_rescale_crop,
    rgb_to_hsv,
)

from tolerances import assert_within, summation_bound

B, H, W = 4, 32, 32


def jitter_rounding(pixels: int) -> float:
    """How far two float32 computations of one colour jitter of [0, 1] images may differ: the contrast's mean over
    the image's ``pixels`` (of 3-term greys), and some 30 elementwise roundings (the HSV round trip of the hue)."""
    return summation_bound(1.0, pixels + 3 + 30)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blocky_labels(seed: int, batch: int = B, height: int = H, width: int = W, max_classes: int = 7) -> torch.Tensor:
    """(B,H,W) labels made of 8x8 blocks, image b drawing from a random number of classes."""
    g = gen(seed)
    labels = []
    for _ in range(batch):
        n = int(torch.randint(1, max_classes + 1, (1,), generator=g))
        classes = torch.randperm(10, generator=g)[:n]
        blocks = classes[torch.randint(0, n, (height // 8, width // 8), generator=g)]
        labels.append(blocks.repeat_interleave(8, 0).repeat_interleave(8, 1))
    return torch.stack(labels)


def tagged_batch(seed: int, batch: int = B):
    """Image whose channel 0 is the label, channel 1 the confidence, channel 2 the image index + 1."""
    labels = blocky_labels(seed, batch)
    confidence = torch.rand(batch, H, W, generator=gen(seed + 1)) * 0.9 + 0.1
    index = torch.arange(1, batch + 1, dtype=torch.float32).view(batch, 1, 1).expand(batch, H, W)
    images = torch.stack([labels.float(), confidence, index], dim=1)
    return images, labels, confidence


def test_class_mix_mask_selects_half_of_the_values_present_padding_included():
    labels = blocky_labels(0, batch=8)
    labels[::2, :3, :3] = -1  # the rescale's padding: one of the values drawn, as the release's torch.unique
    masks = class_mix_masks(labels, gen(1))
    assert masks.shape == labels.shape and masks.dtype == torch.bool
    seen_sizes = set()
    for b in range(labels.shape[0]):
        present = labels[b].unique()
        chosen = labels[b][masks[b]].unique()
        assert len(chosen) == len(present) // 2
        seen_sizes.add(len(present))
        assert set(chosen.tolist()) <= set(present.tolist())
        assert torch.equal(masks[b], torch.isin(labels[b], chosen))
    assert len(seen_sizes) > 1  # the test covered several class counts


@pytest.mark.parametrize("num_classes", [2, 3])
def test_class_mix_draws_the_padding_as_a_class_with_the_release_probability(num_classes):
    # n values (the classes and -1): floor(n / 2) of them are drawn, so -1 with probability floor(n/2) / n,
    # as the release's labels[torch.randperm(n)][:n // 2] over torch.unique(labels).
    draws = 4000
    labels = torch.arange(num_classes).repeat_interleave(4).view(1, num_classes, 4).expand(draws, -1, -1).clone()
    labels[:, -1, 2:] = -1
    masks = class_mix_masks(labels, gen(40), num_classes=num_classes)
    padding_kept = masks[:, -1, 2:].all(dim=1)
    assert torch.equal(padding_kept, masks[:, -1, 2:].any(dim=1))  # all the padding or none of it
    n = num_classes + 1
    expected = (n // 2) / n
    sigma = (expected * (1 - expected) / draws) ** 0.5
    assert abs(padding_kept.float().mean().item() - expected) < 4 * sigma, padding_kept.float().mean()


def test_class_mix_on_one_class_and_padding_keeps_either_the_class_or_the_padding():
    labels = torch.full((400, 6, 6), 3)
    labels[:, :, 4:] = -1
    labels[:, 4:, :] = -1
    masks = class_mix_masks(labels, gen(41), num_classes=5)
    keeps_class = masks.eq(labels >= 0).flatten(1).all(dim=1)
    keeps_padding = masks.eq(labels < 0).flatten(1).all(dim=1)
    assert torch.all(keeps_class ^ keeps_padding)  # exactly one of the two, every time
    assert 0.4 < keeps_padding.float().mean() < 0.6


def test_class_mix_choice_is_uniform_over_classes():
    labels = torch.tensor([0, 1, 2, 3]).repeat_interleave(4).view(1, 4, 4).expand(300, 4, 4).contiguous()
    masks = class_mix_masks(labels, gen(2))
    kept = torch.stack([masks[:, labels[0] == c].all(dim=1) for c in range(4)], dim=1).float()
    assert torch.all(kept.sum(dim=1) == 2)
    frequency = kept.mean(dim=0)
    assert torch.all((frequency > 0.38) & (frequency < 0.62)), frequency


def test_classmix_takes_pixels_from_image_i_and_the_next_one():
    images, labels, confidence = tagged_batch(3)
    keep = class_mix_masks(labels, gen(4))
    out_images, out_labels, out_confidence = mix(images, labels, confidence, "classmix", gen(4))
    source = torch.where(keep, torch.arange(B).view(B, 1, 1), (torch.arange(B).view(B, 1, 1) + 1) % B)
    assert torch.equal(out_images[:, 2], source.float() + 1)
    assert torch.equal(out_labels, labels[source, torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)])
    assert torch.equal(out_images[:, 0], out_labels.float())
    assert torch.equal(out_images[:, 1], out_confidence)
    assert keep.any() and not keep.all()


def test_cutmix_boxes_cover_half_the_area():
    for height, width in [(32, 32), (24, 40)]:
        boxes = cutmix_boxes(64, height, width, gen(5))
        assert boxes.shape == (64, height, width) and boxes.dtype == torch.bool
        rows, cols = boxes.any(dim=2), boxes.any(dim=1)
        # a filled axis-aligned rectangle
        assert torch.equal(boxes, rows[:, :, None] & cols[:, None, :])
        box_w = cols.sum(dim=1).float()
        assert torch.all((box_w >= width / 2) & (box_w <= width))
        area = boxes.sum(dim=(1, 2)).float()
        assert torch.all((area - height * width / 2).abs() <= box_w / 2 + 1e-6)
        # positions vary
        assert len({int(c.float().argmax()) for c in cols}) > 1


def test_cutmix_box_comes_from_the_next_image():
    images, labels, confidence = tagged_batch(6)
    box = cutmix_boxes(B, H, W, gen(7))
    out_images, out_labels, out_confidence = mix(images, labels, confidence, "cutmix", gen(7))
    nxt = torch.roll(torch.arange(B), -1)
    assert torch.equal(out_labels[box], labels[nxt][box])
    assert torch.equal(out_labels[~box], labels[~box])
    assert torch.equal(out_confidence[box], confidence[nxt][box])
    assert torch.equal(out_images.permute(0, 2, 3, 1)[box], images[nxt].permute(0, 2, 3, 1)[box])


def test_cutout_zeroes_exactly_the_box():
    images, labels, confidence = tagged_batch(8)
    box = cutmix_boxes(B, H, W, gen(9))
    out_images, out_labels, out_confidence = mix(images, labels, confidence, "cutout", gen(9))
    assert torch.all(out_images.permute(0, 2, 3, 1)[box] == 0)
    assert torch.all(out_labels[box] == -1)
    assert torch.all(out_confidence[box] == 0)
    assert torch.equal(out_images.permute(0, 2, 3, 1)[~box], images.permute(0, 2, 3, 1)[~box])
    assert torch.equal(out_labels[~box], labels[~box])
    assert torch.equal(out_confidence[~box], confidence[~box])


@pytest.mark.parametrize("mode", ["classmix", "cutmix", "cutout", "none"])
def test_geometry_keeps_image_label_and_confidence_aligned(mode):
    images, labels, confidence = tagged_batch(10)
    view = StrongView(mix=mode, colour=False, blur=False, flip=True, image_interpolation="nearest",
                      image_padding="zeros", quantise_confidence=False)
    padded_somewhere = False
    for seed in range(6):
        out_images, out_labels, out_confidence = view(images, labels, confidence, gen(seed))
        valid = out_labels >= 0
        assert torch.equal(out_images[:, 0][valid], out_labels[valid].float())
        assert torch.equal(out_images[:, 1][valid], out_confidence[valid])
        assert torch.all(out_confidence[~valid] == 0)
        assert torch.all(out_images.permute(0, 2, 3, 1)[~valid] == 0)
        padded_somewhere |= bool((~valid).any())
        # every valid pixel comes from image i or image i + 1
        source = out_images[:, 2][valid].long() - 1
        own = torch.arange(B).view(B, 1, 1).expand(B, H, W)[valid]
        assert torch.all((source == own) | (source == (own + 1) % B))
        if mode != "classmix" and mode != "cutmix":
            assert torch.all(source == own)
    assert padded_somewhere


def test_flip_is_applied_to_all_three_alike():
    images, labels, confidence = tagged_batch(11)
    view = StrongView(scale_range=(1.0, 1.0), mix="none", colour=False, blur=False, flip=True,
                      quantise_confidence=False)
    out_images, out_labels, out_confidence = view(images, labels, confidence, gen(12))
    flipped = [not torch.equal(out_labels[b], labels[b]) for b in range(B)]
    assert any(flipped) and not all(flipped)
    for b in range(B):
        expected = labels[b].flip(-1) if flipped[b] else labels[b]
        assert torch.equal(out_labels[b], expected)
        assert torch.equal(out_confidence[b], confidence[b].flip(-1) if flipped[b] else confidence[b])
        # a resample at scale 1 weighs at most 4 neighbours by 1 and 0: a few eps of the tags (<= 9), while a flip
        # that missed the image would move them by whole numbers
        assert_within(out_images[b, 0], expected.float(), summation_bound(9.0, 4))


def test_downscale_pads_right_and_bottom():
    images, labels, confidence = tagged_batch(13)
    view = StrongView(scale_range=(0.5, 0.5), mix="none", colour=False, blur=False, flip=False, image_padding="zeros")
    out_images, out_labels, out_confidence = view(images, labels, confidence, gen(14))
    assert torch.all(out_labels[:, : H // 2, : W // 2] >= 0)
    assert torch.all(out_labels[:, H // 2 :, :] == -1) and torch.all(out_labels[:, :, W // 2 :] == -1)
    assert torch.all(out_confidence[:, H // 2 :, :] == 0) and torch.all(out_confidence[:, :, W // 2 :] == 0)
    assert torch.all(out_images[:, :, H // 2 :, :] == 0)  # 0 in normalised space (the mean colour)
    # label of output pixel (i, j) is the input label at (2i + 1, 2j + 1) or a neighbour of the same block
    assert torch.equal(out_labels[:, : H // 2 : 4, : W // 2 : 4], labels[:, ::8, ::8])


def test_upscale_never_pads():
    images, labels, confidence = tagged_batch(15)
    view = StrongView(scale_range=(1.2, 1.5), mix="none", colour=False, blur=False, flip=False)
    _, out_labels, out_confidence = view(images, labels, confidence, gen(16))
    assert torch.all(out_labels >= 0) and torch.all(out_confidence > 0)


def test_same_seed_same_view_and_other_seed_differs():
    images = torch.randn(B, 3, H, W, generator=gen(17))
    labels = blocky_labels(18)
    confidence = torch.rand(B, H, W, generator=gen(19))
    view = StrongView()
    first = view(images, labels, confidence, gen(20))
    second = view(images, labels, confidence, gen(20))
    third = view(images, labels, confidence, gen(21))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], third[0])
    torch.manual_seed(22)
    global_first = view(images, labels, confidence)
    torch.manual_seed(22)
    global_second = view(images, labels, confidence)
    assert all(torch.equal(a, b) for a, b in zip(global_first, global_second))


def test_colour_ops_change_images_but_never_labels():
    images = torch.randn(B, 3, H, W, generator=gen(23)).clamp(-1.5, 1.5)
    labels = blocky_labels(24)
    confidence = torch.rand(B, H, W, generator=gen(25))
    view = StrongView(scale_range=(1.0, 1.0), mix="none", colour=True, blur=True, flip=False, jitter_p=1.0, blur_p=1.0)
    out_images, out_labels, out_confidence = view(images, labels, confidence, gen(26))
    assert torch.equal(out_labels, labels) and torch.equal(out_confidence, quantise_confidence(confidence))
    for b in range(B):
        assert (out_images[b] - images[b]).abs().max() > 0.05
    # with both probabilities 0 the images pass unchanged (identity geometry at scale 1)
    view = StrongView(scale_range=(1.0, 1.0), mix="none", flip=False, jitter_p=0.0, blur_p=0.0)
    out_images, _, _ = view(images, labels, confidence, gen(26))
    # a resample at scale 1 weighs at most 4 neighbours by 1 and 0: a few eps of the images (<= 1.5)
    assert_within(out_images, images, summation_bound(1.5, 4))


def test_colour_jitter_matches_torchvision_per_image():
    rgb = torch.rand(3, 3, 16, 16, generator=gen(27))
    brightness = torch.tensor([0.8, 1.2, 1.0])
    contrast = torch.tensor([1.1, 0.76, 1.0])
    saturation = torch.tensor([0.9, 1.24, 1.0])
    hue = torch.tensor([0.2, -0.25, 0.0])
    ours = colour_jitter(rgb, brightness, contrast, saturation, hue)
    for b in range(3):
        expected = TF.adjust_brightness(rgb[b], float(brightness[b]))
        expected = TF.adjust_contrast(expected, float(contrast[b]))
        expected = TF.adjust_saturation(expected, float(saturation[b]))
        expected = TF.adjust_hue(expected, float(hue[b]))
        # batched against torchvision's per image: the jitter chain's rounding (16 x 16 pixels)
        assert_within(ours[b], expected, jitter_rounding(16 * 16), f"image {b}")
    # about 10 roundings each way; the hue's (some 6) are magnified 6 v s <= 6 times on the way back: 40 eps
    assert_within(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, summation_bound(1.0, 40))


def test_gaussian_blur_matches_torchvision_per_image():
    images = torch.rand(3, 3, 20, 20, generator=gen(28))
    sigma = torch.tensor([0.3, 1.1, 0.0])
    ours = gaussian_blur(images, sigma, radius=4)
    for b in range(2):
        expected = TF.gaussian_blur(images[b], kernel_size=[9, 9], sigma=[float(sigma[b])] * 2)
        # torchvision sums the 9 x 9 kernel's 81 products, ours may take two 9-tap passes; the weights (9 exponentials
        # normalised: 10 roundings) sum to 1 over values <= 1: 81 + 18 + 10 roundings of 1
        assert_within(ours[b], expected, summation_bound(1.0, 81 + 18 + 10), f"image {b}")
    assert torch.equal(ours[2], images[2])


def test_output_shapes_dtypes_and_single_image_batch():
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for batch in (B, 1):
        images = (torch.rand(batch, 3, H, W, generator=gen(29)) - mean) / std
        labels = blocky_labels(30, batch)
        confidence = torch.rand(batch, H, W, generator=gen(31))
        for mode in ("classmix", "cutmix", "cutout", "none"):
            out = StrongView(mix=mode)(images, labels, confidence, gen(32))
            assert out[0].shape == (batch, 3, H, W) and out[0].dtype == torch.float32
            assert out[1].shape == (batch, H, W) and out[1].dtype == torch.int64
            assert out[2].shape == (batch, H, W) and out[2].dtype == torch.float32
            assert torch.isfinite(out[0]).all()
            assert int(out[1].min()) >= -1 and int(out[1].max()) < 10
    # B = 1 mixes with itself: ClassMix and CutMix leave the batch unchanged
    images, labels, confidence = tagged_batch(33, batch=1)
    for mode in ("classmix", "cutmix"):
        out = mix(images, labels, confidence, mode, gen(34))
        assert all(torch.equal(a, b) for a, b in zip(out, (images, labels, confidence)))


def test_rejects_unknown_mix_mode_and_bad_shapes():
    with pytest.raises(ValueError, match="classmix"):
        StrongView(mix="mixup")
    with pytest.raises(ValueError, match="pseudo_labels"):
        StrongView()(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 9, dtype=torch.long), torch.zeros(2, 8, 8))


def test_class_mix_with_a_given_num_classes_still_selects_half():
    labels = blocky_labels(35)
    masks = class_mix_masks(labels, gen(36), num_classes=12)
    for b in range(B):
        present = labels[b].unique()
        chosen = labels[b][masks[b]].unique()
        assert len(chosen) == len(present) // 2
        assert torch.equal(masks[b], torch.isin(labels[b], chosen))


# --------------------------------------------------------------------------------------------
# the release's strong view, point by point (its transform() in dataset_helpers/VOC.py)
# --------------------------------------------------------------------------------------------


def test_rescale_pads_with_the_reflection_of_the_image():
    # 4x4 at scale 0.75: resized to 3x3 (nearest: rows and columns 0, 2, 3 of the input), then one
    # row and one column of reflect padding (numpy.pad "reflect": the edge is not repeated), crop at 0.
    image = (10 * torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)).float().expand(1, 3, 4, 4)
    labels = torch.arange(16).view(1, 4, 4)
    confidence = torch.full((1, 4, 4), 0.9)
    out_image, out_labels, out_confidence = random_rescale_crop(
        image, labels, confidence, (0.75, 0.75), gen(0), image_interpolation="nearest")
    kept = torch.tensor([0, 2, 3, 2])  # the resized row/column 1 mirrored past the edge
    assert torch.equal(out_image[0, 0], image[0, 0][kept][:, kept])
    assert torch.equal(out_labels[0, :3, :3], labels[0][kept[:3]][:, kept[:3]])
    assert torch.all(out_labels[0, 3, :] == -1) and torch.all(out_labels[0, :, 3] == -1)
    assert torch.all(out_confidence[0, 3, :] == 0) and torch.all(out_confidence[0, :3, :3] == 0.9)
    zeros, _, _ = random_rescale_crop(image, labels, confidence, (0.75, 0.75), gen(0),
                                      image_interpolation="nearest", image_padding="zeros")
    assert torch.all(zeros[0, :, 3, :] == 0) and torch.equal(zeros[0, :, :3, :3], out_image[0, :, :3, :3])


def test_rescale_reflection_matches_numpy_pad_when_the_pad_is_longer_than_the_image():
    image = torch.rand(1, 3, 9, 9, generator=gen(1))
    out, _, _ = random_rescale_crop(image, torch.zeros(1, 9, 9, dtype=torch.long), torch.ones(1, 9, 9),
                                    (0.34, 0.34), gen(2), image_interpolation="nearest")
    small = torch.nn.functional.interpolate(image, size=(3, 3), mode="nearest-exact")
    expected = np.pad(small[0].numpy(), ((0, 0), (0, 6), (0, 6)), mode="reflect")
    assert np.array_equal(out[0].numpy(), expected)


def test_downscale_is_antialiased_like_pil_bilinear():
    # Columns 1, 0, 0, 0 repeated: PIL's bilinear shrink by 4 averages them (about 0.25); a plain
    # bilinear sample between two pixels (the former grid_sample) reads 0 or 0.5.
    stripes = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(4).view(1, 16).expand(16, 16)
    image = stripes.expand(1, 3, 16, 16).contiguous()
    out, _, _ = random_rescale_crop(image, torch.zeros(1, 16, 16, dtype=torch.long), torch.ones(1, 16, 16),
                                    (0.25, 0.25), gen(3))
    pil = Image.fromarray((stripes.numpy() * 255).astype(np.uint8))
    expected = torch.from_numpy(np.asarray(pil.resize((4, 4), Image.BILINEAR), dtype=np.float32)) / 255
    # PIL computes in 8 bits: its result is rounded to a grey level (0.5 / 255 off); one more grey level allows for
    # its fixed-point weights and edge handling, while the former plain bilinear sample was 0.25 = 64 / 255 off
    assert torch.allclose(out[0, 0, :4, :4], expected, rtol=0, atol=1.5 / 255), (out[0, 0, :4, :4], expected)


def test_crop_offsets_are_whole_pixels_of_the_rescaled_image():
    image = torch.arange(24 * 24).float().view(1, 1, 24, 24).expand(1, 3, 24, 24).contiguous()
    for seed in range(5):
        out, _, _ = random_rescale_crop(image, torch.zeros(1, 24, 24, dtype=torch.long), torch.ones(1, 24, 24),
                                        (1.0, 1.0), gen(seed), image_interpolation="nearest")
        top, left = divmod(int(out[0, 0, 0, 0]), 24)
        assert torch.equal(out[0, 0], image[0, 0, top : top + 24, left : left + 24])


def test_confidence_is_quantised_as_the_release_8_bit_round_trip():
    q = torch.rand(2, 16, 16, generator=gen(4))
    q[0, 0, 0] = 0.9725  # >= 0.97, but 255 q = 247.99: the release reads 247/255 = 0.9686
    round_trip = torch.stack([TF_pil.to_tensor(TF_pil.to_pil_image(q[b : b + 1]))[0] for b in range(2)])
    assert torch.equal(quantise_confidence(q), round_trip)
    view = StrongView(scale_range=(1.0, 1.0), mix="none", colour=False, blur=False, flip=False)
    _, _, out = view(torch.zeros(2, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long), q, gen(5))
    assert torch.equal(out, round_trip) and out[0, 0, 0] < 0.97


def test_colour_jitter_applies_each_image_own_order_like_torchvision():
    rgb = torch.rand(4, 3, 12, 12, generator=gen(6))
    brightness = torch.tensor([0.8, 1.2, 0.9, 1.1])
    contrast = torch.tensor([1.2, 0.76, 1.1, 0.8])
    saturation = torch.tensor([0.8, 1.24, 1.2, 0.8])
    hue = torch.tensor([0.2, -0.25, 0.1, -0.15])
    order = torch.tensor([[3, 2, 1, 0], [1, 3, 0, 2], [0, 1, 2, 3], [2, 0, 3, 1]])
    adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
              "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
    factors = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    ours = colour_jitter(rgb, brightness, contrast, saturation, hue, order)
    fixed = colour_jitter(rgb, brightness, contrast, saturation, hue)
    for b in range(4):
        expected = rgb[b]
        for index in order[b].tolist():
            name = JITTER_OPERATIONS[index]
            expected = adjust[name](expected, float(factors[name][b]))
        # batched against torchvision's per image: the jitter chain's rounding (12 x 12 pixels)
        assert_within(ours[b], expected, jitter_rounding(12 * 12), f"image {b}")
        if b != 2:  # the fixed order (image 2's) gives another image: the order matters here, by far more than rounding
            assert (fixed[b] - expected).abs().max() > 1e-3
    # image 2's order is the fixed one: the same operations, whose batched means may round otherwise
    assert_within(ours[2], fixed[2], jitter_rounding(12 * 12))


def test_strong_view_draws_a_permutation_per_image():
    images = torch.rand(32, 3, 8, 8, generator=gen(7))
    labels = torch.zeros(32, 8, 8, dtype=torch.long)
    confidence = torch.ones(32, 8, 8)
    kwargs = dict(scale_range=(1.0, 1.0), mix="none", blur=False, flip=False, jitter_p=1.0)
    random_order, _, _ = StrongView(**kwargs)(images, labels, confidence, gen(8))
    fixed_order, _, _ = StrongView(jitter_order="fixed", **kwargs)(images, labels, confidence, gen(8))
    # the same image up to the jitter chain's rounding (8 x 8 pixels): those whose drawn order is the fixed one
    same = [bool(((random_order[b] - fixed_order[b]).abs() <= jitter_rounding(8 * 8)).all()) for b in range(32)]
    assert sum(same) < 12  # the identity permutation is 1 of 24; a fixed order would match all 32
