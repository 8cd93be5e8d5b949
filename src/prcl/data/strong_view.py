"""Strong view of the unlabeled batch, built on the tensors' device.

docs/method.md, "The training step" (step 3) and "Data pipelines". It reproduces the release's
two ``batch_transform`` calls and its mix: the same geometry is applied to the images, the
teacher's pseudo-labels and its confidences; colour operations touch the images only:

0. the confidences are quantised to ``floor(255 q) / 255``, as the release's 8-bit PIL round trip
   leaves them (``quantise_confidence``);
1. random rescale (one scale per image) to ``int(H s) x int(W s)`` (images bilinear, antialiased
   when shrinking; pseudo-labels and confidences nearest), padding at the right/bottom where that
   is smaller than the crop (image: reflection, or 0 = the ImageNet mean colour; pseudo-label -1;
   confidence 0), and an (H, W) crop at a whole-pixel offset;
2. mixing with the next image of the batch, (i + 1) mod B: ClassMix (default; the padding value
   -1 counts as a class), CutMix, CutOut or none;
3. colour jitter (with probability 0.8 per image: brightness, contrast, saturation, hue, in a
   random order per image), Gaussian blur (probability 0.5, sigma uniform in 0.15-1.15), horizontal
   flip (probability 0.5, all three tensors).

Every random parameter is drawn per image from the optional ``torch.Generator`` (which must live
on the tensors' device); with ``generator=None`` the global RNG is used. Nothing leaves the device;
only the rescale, whose output sizes differ per image, loops over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prcl.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

MIX_MODES = ("classmix", "cutmix", "cutout", "none")

# ITU-R 601 luma weights, as in torchvision's rgb_to_grayscale.
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) float32 samples on ``device``."""
    return torch.rand(shape, generator=generator, device=device)


def _uniform(
    size: int, low: float, high: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """(size,) float32 samples uniform in [low, high)."""
    return low + (high - low) * _rand((size,), device, generator)


def _coin(size: int, p: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(size,) bool, each True with probability p."""
    return _rand((size,), device, generator) < p


def _next_image(x: torch.Tensor) -> torch.Tensor:
    """Batch reordered so that row i holds row (i + 1) mod B."""
    return torch.roll(x, shifts=-1, dims=0)


# --------------------------------------------------------------------------------------------
# 1. rescale + crop
# --------------------------------------------------------------------------------------------

PADDING_MODES = ("reflect", "zeros")


def reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices past the end of an axis of ``size`` pixels, mirrored as ``numpy.pad(mode="reflect")``
    mirrors them (the edge pixel is not repeated; a pad longer than the axis reflects again).

    index: int64 tensor of indices >= 0; returns indices in [0, size).
    """
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index % period
    return torch.where(index < size, index, period - index)


def random_rescale_crop(
    images: torch.Tensor,
    pseudo_labels: torch.Tensor,
    confidence: torch.Tensor,
    scale_range: tuple[float, float] = (0.5, 1.5),
    generator: torch.Generator | None = None,
    image_interpolation: str = "bilinear",
    image_padding: str = "reflect",
    true_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Rescale each image by its own random factor, pad it if smaller than the crop, crop (H, W).

    images (B,3,H,W) float, pseudo_labels (B,H,W) int64, confidence (B,H,W) float; returns the
    same shapes and dtypes. As the release's ``transform`` does per PIL image: image i is resized
    to ``(int(H s_i), int(W s_i))`` with s_i ~ U(scale_range) (image: bilinear, antialiased when
    shrinking, like PIL's bilinear; ``image_interpolation="nearest"`` for tests; pseudo-labels and
    confidences: nearest, like PIL's); where that is smaller than (H, W) it is padded at the right
    and bottom (image: reflection as ``numpy.pad(mode="reflect")``, or 0 = the mean colour with
    ``image_padding="zeros"``; pseudo-label -1; confidence 0); then an (H, W) window is cut at a
    whole-pixel offset uniform over the positions inside the padded image.

    The sizes differ per image, so this loops over the batch (a few small kernels per image) and
    reads the random draws on the host once per call. ``true_labels`` (B,H,W) int64, optional (a
    probe's ground truth), moves with the pseudo-labels and is returned fourth.
    """
    if image_padding not in PADDING_MODES:
        raise ValueError(f"unknown padding {image_padding!r}; choose one of {', '.join(PADDING_MODES)}")
    batch, _, height, width = images.shape
    device = images.device
    draws = _rand((3, batch), device, generator)
    scales = (scale_range[0] + (scale_range[1] - scale_range[0]) * draws[0]).tolist()
    fractions_y, fractions_x = draws[1].tolist(), draws[2].tolist()
    mode = "bilinear" if image_interpolation == "bilinear" else "nearest-exact"
    # Labels shifted so that ignore is 0, so that the zero padding below becomes ignore after the shift back.
    channels = [(pseudo_labels - IGNORE_INDEX).to(confidence.dtype), confidence]
    if true_labels is not None:
        channels.append((true_labels - IGNORE_INDEX).to(confidence.dtype))
    targets = torch.stack(channels, dim=1)
    out_images, out_targets = [], []
    for i in range(batch):
        new_h, new_w = int(height * scales[i]), int(width * scales[i])
        image = F.interpolate(images[i : i + 1], size=(new_h, new_w), mode=mode,
                              antialias=mode == "bilinear", align_corners=False if mode == "bilinear" else None)
        target = F.interpolate(targets[i : i + 1], size=(new_h, new_w), mode="nearest-exact")
        # RandomCrop.get_params of the padded image: a whole offset in [0, padded - crop].
        top = int(fractions_y[i] * (max(new_h, height) - height + 1))
        left = int(fractions_x[i] * (max(new_w, width) - width + 1))
        rows = torch.arange(top, top + height, device=device)
        cols = torch.arange(left, left + width, device=device)
        inside = (rows < new_h)[:, None] & (cols < new_w)[None, :]  # (H, W); outside: the padding
        edge_rows, edge_cols = rows.clamp(max=new_h - 1), cols.clamp(max=new_w - 1)
        target = target[:, :, edge_rows][:, :, :, edge_cols] * inside
        if image_padding == "reflect":
            image = image[:, :, reflect_index(rows, new_h)][:, :, :, reflect_index(cols, new_w)]
        else:
            image = image[:, :, edge_rows][:, :, :, edge_cols] * inside
        out_images.append(image)
        out_targets.append(target)
    images = torch.cat(out_images)
    targets = torch.cat(out_targets)
    pseudo_labels = targets[:, 0].round().long() + IGNORE_INDEX
    confidence = targets[:, 1]
    if true_labels is not None:
        return images, pseudo_labels, confidence, targets[:, 2].round().long() + IGNORE_INDEX
    return images, pseudo_labels, confidence


def quantise_confidence(confidence: torch.Tensor) -> torch.Tensor:
    """Confidences as the release's 8-bit PIL round trip leaves them: ``floor(255 q) / 255``.

    The release passes q through ``to_pil_image`` (``mul(255).byte()``, a truncation) and back,
    so its thresholds act as 248/255 (0.97) and 179/255 (0.7). (B,H,W) -> (B,H,W), same dtype.
    """
    return torch.floor(confidence * 255) / 255


# --------------------------------------------------------------------------------------------
# 2. mixing
# --------------------------------------------------------------------------------------------


def class_mix_masks(
    pseudo_labels: torch.Tensor, generator: torch.Generator | None = None, num_classes: int | None = None
) -> torch.Tensor:
    """ClassMix masks: True where pixel (b, h, w) keeps image b, False where it comes from b+1.

    pseudo_labels (B,H,W) int64 with -1 = the rescale's padding. As the release's
    ``generate_class_mask`` (``torch.unique`` of the map), the values present in image b's map are
    its "classes", the padding value -1 among them when the image was padded: floor(n_b / 2) of
    its n_b values are chosen uniformly at random without replacement, and the mask is True
    exactly on the pixels of the chosen values. Vectorised: every (image, value) pair gets a
    uniform score, absent values score -1, and the values ranked below floor(n_b / 2) are chosen.
    ``num_classes`` (an upper bound on the label values + 1) avoids a device sync; by default it
    is read from the labels (the random draw has shape (B, num_classes + 1), so the same generator
    state gives other choices for another num_classes). Returns (B,H,W) bool.
    """
    batch = pseudo_labels.shape[0]
    device = pseudo_labels.device
    shifted = pseudo_labels.reshape(batch, -1) - IGNORE_INDEX  # 0 = padding (-1), c + 1 = class c
    if num_classes is None:
        num_classes = int(shifted.max()) if shifted.numel() else 0
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=device)
    present.scatter_(1, shifted, True)

    scores = _rand((batch, num_classes + 1), device, generator).masked_fill(~present, -1.0)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    num_chosen = present.sum(dim=1, keepdim=True) // 2
    chosen = (rank < num_chosen) & present
    return chosen.gather(1, shifted).view_as(pseudo_labels)


def cutmix_boxes(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One box per image covering half the area: (B,H,W) bool, True inside the box.

    Width uniform in (W/2, W) and height = (H W / 2) / width, both rounded to whole pixels (so the
    area is H W / 2 up to rounding: off by at most width/2 pixels); the top-left corner is uniform
    over the positions that keep the box inside the image. ``device`` defaults to the generator's.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    area = height * width / 2.0
    box_w = _uniform(batch_size, width / 2.0, float(width), device, generator).round().clamp(1, width)
    box_h = (area / box_w).round().clamp(1, height)
    x0 = (_rand((batch_size,), device, generator) * (width - box_w + 1)).floor()
    y0 = (_rand((batch_size,), device, generator) * (height - box_h + 1)).floor()
    cols = torch.arange(width, device=device)
    rows = torch.arange(height, device=device)
    inside_x = (cols >= x0[:, None]) & (cols < (x0 + box_w)[:, None])  # (B,W)
    inside_y = (rows >= y0[:, None]) & (rows < (y0 + box_h)[:, None])  # (B,H)
    return inside_y[:, :, None] & inside_x[:, None, :]


def mix(
    images: torch.Tensor,
    pseudo_labels: torch.Tensor,
    confidence: torch.Tensor,
    mode: str = "classmix",
    generator: torch.Generator | None = None,
    num_classes: int | None = None,
    true_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Mix each image with the next one of the batch, (i + 1) mod B (itself when B = 1).

    images (B,3,H,W), pseudo_labels (B,H,W) int64 (-1 ignore), confidence (B,H,W); returns the
    same shapes. ``mode``:
      - "classmix": pixels of half of image i's classes (see ``class_mix_masks``) from image i,
        the rest from image i+1;
      - "cutmix": a half-area box (see ``cutmix_boxes``) from image i+1, the rest from image i;
      - "cutout": the box is zeroed in image i (0 in normalised space, the mean colour),
        pseudo-label -1, confidence 0;
      - "none": unchanged.
    ``num_classes`` (optional, ClassMix only) saves a device sync, see ``class_mix_masks``.
    ``true_labels`` (optional, a probe's ground truth) is mixed like the pseudo-labels and returned fourth.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"unknown mix mode {mode!r}; choose one of {', '.join(MIX_MODES)}")
    extra = () if true_labels is None else (true_labels,)
    if mode == "none":
        return (images, pseudo_labels, confidence, *extra)
    batch, _, height, width = images.shape
    if mode == "classmix":
        keep = class_mix_masks(pseudo_labels, generator, num_classes)
    else:
        box = cutmix_boxes(batch, height, width, generator, device=images.device)
        if mode == "cutout":
            return (
                images.masked_fill(box[:, None], 0.0),
                pseudo_labels.masked_fill(box, IGNORE_INDEX),
                confidence.masked_fill(box, 0.0),
                *(labels.masked_fill(box, IGNORE_INDEX) for labels in extra),
            )
        keep = ~box
    return (
        torch.where(keep[:, None], images, _next_image(images)),
        torch.where(keep, pseudo_labels, _next_image(pseudo_labels)),
        torch.where(keep, confidence, _next_image(confidence)),
        *(torch.where(keep, labels, _next_image(labels)) for labels in extra),
    )


# --------------------------------------------------------------------------------------------
# 3. colour, blur, flip (batched, one parameter per image)
# --------------------------------------------------------------------------------------------


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,1,H,W) luma."""
    weights = torch.tensor(_GREY_WEIGHTS, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def _blend(rgb: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * rgb + (1 - factor) * other, clamped to [0, 1]; factor (B,)."""
    factor = factor.view(-1, 1, 1, 1).to(rgb.dtype)
    return (factor * rgb + (1.0 - factor) * other).clamp(0.0, 1.0)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> (B,3,H,W) HSV, hue in [0,1) turns."""
    red, green, blue = rgb.unbind(dim=1)
    value = rgb.amax(dim=1)
    chroma = value - rgb.amin(dim=1)
    saturation = chroma / value.clamp_min(1e-12)
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    red_c = (value - red) / safe_chroma
    green_c = (value - green) / safe_chroma
    blue_c = (value - blue) / safe_chroma
    hue = torch.where(
        value == red,
        blue_c - green_c,
        torch.where(value == green, 2.0 + red_c - blue_c, 4.0 + green_c - red_c),
    )
    hue = torch.where(chroma > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) HSV (hue in turns) -> (B,3,H,W) RGB, by f(n) = V - V S clamp(min(k, 4-k), 0, 1)
    with k = (n + 6 H) mod 6 and n = 5, 3, 1 for red, green, blue."""
    hue, saturation, value = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = (n + 6.0 * hue) % 6.0
    return value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _adjust_hue(rgb: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (B,3,H,W) RGB by hue (B,) turns."""
    hsv = rgb_to_hsv(rgb)
    hue_shifted = (hsv[:, 0] + hue.view(-1, 1, 1).to(rgb.dtype)) % 1.0
    return hsv_to_rgb(torch.stack([hue_shifted, hsv[:, 1], hsv[:, 2]], dim=1)).clamp(0.0, 1.0)


JITTER_OPERATIONS = ("brightness", "contrast", "saturation", "hue")  # torchvision ColorJitter's numbering


def colour_jitter(
    rgb: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue adjustment with one factor per image.

    rgb (B,3,H,W) in [0,1]; brightness, contrast, saturation (B,) multiplicative factors (1 =
    unchanged), hue (B,) shift in turns (0 = unchanged). Same definitions as torchvision's
    adjust_* functions: brightness scales, contrast blends with the image's mean grey level,
    saturation blends with the per-pixel grey, hue rotates in HSV. ``order`` (B,4) int64: image
    b applies operation ``order[b, k]`` (0-3 in the order of ``JITTER_OPERATIONS``) k-th, as
    torchvision's ColorJitter applies its four operations in a random permutation; None: the
    order of ``JITTER_OPERATIONS`` for every image. Returns (B,3,H,W) in [0,1].
    """
    operations = (
        lambda x: _blend(x, torch.zeros_like(x), brightness),
        lambda x: _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), contrast),
        lambda x: _blend(x, _grey(x), saturation),
        lambda x: _adjust_hue(x, hue),
    )
    if order is None:
        for operation in operations:
            rgb = operation(rgb)
        return rgb
    # Batched: at each position every operation is computed for the whole batch and each image
    # keeps the one its permutation names there (4x the arithmetic of one pass, no host sync).
    for position in range(len(operations)):
        which = order[:, position].view(-1, 1, 1, 1)
        result = rgb
        for index, operation in enumerate(operations):
            result = torch.where(which == index, operation(rgb), result)
        rgb = result
    return rgb


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (sigma <= 0: unchanged, bit for bit).

    images (B,C,H,W); sigma (B,); kernel size 2 * radius + 1; reflect padding (replicate when the
    image is too small to reflect). One grouped convolution per axis for the whole batch.
    """
    batch, channels, height, width = images.shape
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    sigma = sigma.float().clamp_min(1e-6).view(-1, 1)
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma**2))  # tiny sigma -> exact delta
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    kernel = kernel.to(images.dtype)  # (B*C, K)
    size = 2 * radius + 1
    pad_mode = "reflect" if min(height, width) > radius else "replicate"
    x = images.reshape(1, batch * channels, height, width)
    groups = batch * channels
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=pad_mode), kernel.view(-1, 1, 1, size), groups=groups)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=pad_mode), kernel.view(-1, 1, size, 1), groups=groups)
    return x.view(batch, channels, height, width)


def horizontal_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the last axis of the images where flip (B,) is True; x (B,...,W)."""
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


# --------------------------------------------------------------------------------------------
# the whole strong view
# --------------------------------------------------------------------------------------------


class StrongView:
    """The strong view of an unlabeled batch (rescale/crop -> mix -> colour -> blur -> flip).

    ``StrongView()(images, pseudo_labels, confidence, generator)`` with images (B,3,H,W) float
    normalised by ``mean``/``std``, pseudo_labels (B,H,W) int64 (-1 = ignore), confidence (B,H,W)
    float; returns the transformed triple with the same shapes, dtypes and device.

    Arguments: ``scale_range`` of the random rescale; ``mix`` one of classmix, cutmix, cutout,
    none; ``colour``/``blur``/``flip`` switch those steps. Keyword-only extras: jitter probability
    and strengths (factors uniform in [1 - s, 1 + s], hue shift uniform in [-hue, hue] turns),
    blur probability and sigma range, flip probability, normalisation constants,
    ``image_interpolation`` ("bilinear" or "nearest") and ``image_padding`` ("reflect" or "zeros")
    for the rescale, ``jitter_order`` ("random": a permutation per image, as torchvision's
    ColorJitter; "fixed"), ``quantise_confidence`` (``floor(255 q) / 255`` first, as the release),
    ``num_classes`` (saves ClassMix a device sync per call).
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 1.5),
        mix: str = "classmix",
        colour: bool = True,
        blur: bool = True,
        flip: bool = True,
        *,
        jitter_p: float = 0.8,
        brightness: float = 0.25,
        contrast: float = 0.25,
        saturation: float = 0.25,
        hue: float = 0.25,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.15, 1.15),
        flip_p: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        image_interpolation: str = "bilinear",
        image_padding: str = "reflect",
        jitter_order: str = "random",
        quantise_confidence: bool = True,
        num_classes: int | None = None,
    ) -> None:
        if mix not in MIX_MODES:
            raise ValueError(f"unknown mix mode {mix!r}; choose one of {', '.join(MIX_MODES)}")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))
        self.mix_mode = mix
        self.colour = colour
        self.blur = blur
        self.flip = flip
        self.jitter_p = jitter_p
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.blur_p = blur_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_radius = max(1, math.ceil(3.0 * self.blur_sigma[1]))
        self.flip_p = flip_p
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.image_interpolation = image_interpolation
        if image_padding not in PADDING_MODES:
            raise ValueError(f"unknown padding {image_padding!r}; choose one of {', '.join(PADDING_MODES)}")
        if jitter_order not in ("random", "fixed"):
            raise ValueError(f"unknown jitter order {jitter_order!r}; choose random or fixed")
        self.image_padding = image_padding
        self.jitter_order = jitter_order
        self.quantise_confidence = quantise_confidence
        self.num_classes = num_classes

    def __repr__(self) -> str:
        return (
            f"StrongView(scale_range={self.scale_range}, mix={self.mix_mode!r}, colour={self.colour}, "
            f"blur={self.blur}, flip={self.flip})"
        )

    def _jitter(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch, device = images.shape[0], images.device
        apply = _coin(batch, self.jitter_p, device, generator)
        brightness = _uniform(batch, 1 - self.brightness, 1 + self.brightness, device, generator)
        contrast = _uniform(batch, 1 - self.contrast, 1 + self.contrast, device, generator)
        saturation = _uniform(batch, 1 - self.saturation, 1 + self.saturation, device, generator)
        hue = _uniform(batch, -self.hue, self.hue, device, generator)
        order = None
        if self.jitter_order == "random":  # a uniform permutation per image, as torch.randperm(4)
            order = _rand((batch, len(JITTER_OPERATIONS)), device, generator).argsort(dim=1)
        mean = torch.tensor(self.mean, device=device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device, dtype=images.dtype).view(1, 3, 1, 1)
        rgb = (images * std + mean).clamp(0.0, 1.0)
        jittered = (colour_jitter(rgb, brightness, contrast, saturation, hue, order) - mean) / std
        # Images outside the block keep their exact values (no normalisation round trip).
        return torch.where(apply.view(-1, 1, 1, 1), jittered, images)

    def __call__(
        self,
        images: torch.Tensor,
        pseudo_labels: torch.Tensor,
        confidence: torch.Tensor,
        generator: torch.Generator | None = None,
        true_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The strong view (images, pseudo-labels, confidences); with ``true_labels`` (B,H,W), a
        probe's ground truth, also those labels moved and mixed as the pseudo-labels (fourth).
        The random draws do not depend on whether ``true_labels`` is given."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
        expected = (images.shape[0], *images.shape[2:])
        if tuple(pseudo_labels.shape) != expected or tuple(confidence.shape) != expected:
            raise ValueError(
                f"pseudo_labels and confidence must be {expected}, got "
                f"{tuple(pseudo_labels.shape)} and {tuple(confidence.shape)}"
            )
        batch, device = images.shape[0], images.device
        if self.quantise_confidence:
            confidence = quantise_confidence(confidence)
        images, pseudo_labels, confidence, *extra = random_rescale_crop(
            images,
            pseudo_labels,
            confidence,
            self.scale_range,
            generator,
            image_interpolation=self.image_interpolation,
            image_padding=self.image_padding,
            true_labels=true_labels,
        )
        images, pseudo_labels, confidence, *extra = mix(
            images, pseudo_labels, confidence, self.mix_mode, generator, self.num_classes,
            true_labels=extra[0] if extra else None,
        )
        if self.colour:
            images = self._jitter(images, generator)
        if self.blur:
            apply = _coin(batch, self.blur_p, device, generator)
            sigma = _uniform(batch, self.blur_sigma[0], self.blur_sigma[1], device, generator)
            images = gaussian_blur(images, torch.where(apply, sigma, torch.zeros_like(sigma)), self.blur_radius)
        if self.flip:
            flip = _coin(batch, self.flip_p, device, generator)
            images = horizontal_flip(images, flip)
            pseudo_labels = horizontal_flip(pseudo_labels, flip)
            confidence = horizontal_flip(confidence, flip)
            extra = [horizontal_flip(labels, flip) for labels in extra]
        return (images, pseudo_labels, confidence, *extra)
