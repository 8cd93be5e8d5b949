"""Strong view of the unlabeled batch: geometry, mixing, colour, determinism (CPU, small shapes)."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from prcl.constants import IMAGENET_MEAN, IMAGENET_STD
from prcl.data.strong_view import (
    StrongView,
    class_mix_masks,
    colour_jitter,
    cutmix_boxes,
    gaussian_blur,
    hsv_to_rgb,
    mix,
    rgb_to_hsv,
)

B, H, W = 4, 32, 32


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


def test_class_mix_mask_selects_half_of_the_present_classes():
    labels = blocky_labels(0, batch=8)
    labels[:, :3, :3] = -1  # ignored pixels never count as a class and are never kept
    masks = class_mix_masks(labels, gen(1))
    assert masks.shape == labels.shape and masks.dtype == torch.bool
    seen_sizes = set()
    for b in range(labels.shape[0]):
        present = labels[b].unique()
        present = present[present >= 0]
        chosen = labels[b][masks[b]].unique()
        assert len(chosen) == len(present) // 2
        seen_sizes.add(len(present))
        assert set(chosen.tolist()) <= set(present.tolist())
        assert torch.equal(masks[b], torch.isin(labels[b], chosen))
        assert not masks[b][:3, :3].any()
    assert len(seen_sizes) > 1  # the test covered several class counts


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
    view = StrongView(mix=mode, colour=False, blur=False, flip=True, image_interpolation="nearest")
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
    view = StrongView(scale_range=(1.0, 1.0), mix="none", colour=False, blur=False, flip=True)
    out_images, out_labels, out_confidence = view(images, labels, confidence, gen(12))
    flipped = [not torch.equal(out_labels[b], labels[b]) for b in range(B)]
    assert any(flipped) and not all(flipped)
    for b in range(B):
        expected = labels[b].flip(-1) if flipped[b] else labels[b]
        assert torch.equal(out_labels[b], expected)
        assert torch.equal(out_confidence[b], confidence[b].flip(-1) if flipped[b] else confidence[b])
        assert torch.allclose(out_images[b, 0], expected.float(), atol=1e-4)


def test_downscale_pads_right_and_bottom():
    images, labels, confidence = tagged_batch(13)
    view = StrongView(scale_range=(0.5, 0.5), mix="none", colour=False, blur=False, flip=False)
    out_images, out_labels, out_confidence = view(images, labels, confidence, gen(14))
    assert torch.all(out_labels[:, : H // 2, : W // 2] >= 0)
    assert torch.all(out_labels[:, H // 2 :, :] == -1) and torch.all(out_labels[:, :, W // 2 :] == -1)
    assert torch.all(out_confidence[:, H // 2 :, :] == 0) and torch.all(out_confidence[:, :, W // 2 :] == 0)
    assert torch.all(out_images[:, :, H // 2 + 1 :, :] == 0)  # 0 in normalised space (the mean colour)
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
    assert torch.equal(out_labels, labels) and torch.equal(out_confidence, confidence)
    for b in range(B):
        assert (out_images[b] - images[b]).abs().max() > 0.05
    # with both probabilities 0 the images pass unchanged (identity geometry at scale 1)
    view = StrongView(scale_range=(1.0, 1.0), mix="none", flip=False, jitter_p=0.0, blur_p=0.0)
    out_images, _, _ = view(images, labels, confidence, gen(26))
    assert torch.allclose(out_images, images, atol=1e-5)


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
        assert torch.allclose(ours[b], expected, atol=1e-5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-6)


def test_gaussian_blur_matches_torchvision_per_image():
    images = torch.rand(3, 3, 20, 20, generator=gen(28))
    sigma = torch.tensor([0.3, 1.1, 0.0])
    ours = gaussian_blur(images, sigma, radius=4)
    for b in range(2):
        expected = TF.gaussian_blur(images[b], kernel_size=[9, 9], sigma=[float(sigma[b])] * 2)
        assert torch.allclose(ours[b], expected, atol=1e-5)
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
