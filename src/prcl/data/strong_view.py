"""Strong view of the unlabeled batch, built on the tensors' device for the whole batch at once.

docs/method.md, "The training step" (step 3) and "Data pipelines". The same geometry is applied
to the images, the teacher's pseudo-labels and its confidences; colour operations touch the images
only:

1. random rescale (one scale per image) and crop back to (H, W), by one batched ``grid_sample``:
   bilinear for images, nearest for pseudo-labels and confidences. Where the rescaled image is
   smaller than the crop it sits at the top-left corner and the right/bottom border is padding:
   image 0 in normalised space (the ImageNet mean colour; ``image_padding="reflection"`` mirrors
   instead), pseudo-label -1 (ignore), confidence 0.
2. mixing with the next image of the batch, (i + 1) mod B: ClassMix (default), CutMix, CutOut or
   none.
3. colour jitter (one block with probability 0.8 per image: brightness, contrast, saturation, hue,
   in this fixed order), Gaussian blur (probability 0.5, sigma uniform in 0.15-1.15), horizontal
   flip (probability 0.5, all three tensors).

Every random parameter is drawn per image from the optional ``torch.Generator`` (which must live
on the tensors' device); with ``generator=None`` the global RNG is used. Nothing leaves the device
and nothing loops over the batch.
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


def random_rescale_crop(
    images: torch.Tensor,
    pseudo_labels: torch.Tensor,
    confidence: torch.Tensor,
    scale_range: tuple[float, float] = (0.5, 1.5),
    generator: torch.Generator | None = None,
    image_interpolation: str = "bilinear",
    image_padding: str = "zeros",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rescale each image by its own random factor and crop a random (H, W) window.

    images (B,3,H,W) float, pseudo_labels (B,H,W) int64, confidence (B,H,W) float; returns the
    same shapes and dtypes. Image i is scaled by s_i ~ U(scale_range); the crop window starts at
    an offset uniform in [0, s_i*W - W] (and likewise in height) when the rescaled image is larger
    than the crop, at 0 otherwise (padding right/bottom: label -1, confidence 0, image 0 or
    reflection per ``image_padding``).
    """
    batch, _, height, width = images.shape
    device = images.device
    scale = _uniform(batch, scale_range[0], scale_range[1], device, generator)
    offset_x = _rand((batch,), device, generator) * (scale * width - width).clamp(min=0)
    offset_y = _rand((batch,), device, generator) * (scale * height - height).clamp(min=0)

    # Output pixel centre x_o (normalised, align_corners=False) lies at pixel (x_o + 1) W/2 of the
    # crop, i.e. at pixel ((x_o + 1) W/2 + offset) / s of the input: an affine map per image.
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 0, 2] = (1.0 + 2.0 * offset_x / width) / scale - 1.0
    theta[:, 1, 1] = 1.0 / scale
    theta[:, 1, 2] = (1.0 + 2.0 * offset_y / height) / scale - 1.0
    grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)

    images = F.grid_sample(
        images, grid.to(images.dtype), mode=image_interpolation, padding_mode=image_padding, align_corners=False
    )
    # Labels are shifted so that ignore is 0: the zero padding becomes ignore after the shift back.
    targets = torch.stack([(pseudo_labels - IGNORE_INDEX).float(), confidence.float()], dim=1)
    targets = F.grid_sample(targets, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    pseudo_labels = targets[:, 0].round().long() + IGNORE_INDEX
    confidence = targets[:, 1].to(confidence.dtype)
    return images, pseudo_labels, confidence


# --------------------------------------------------------------------------------------------
# 2. mixing
# --------------------------------------------------------------------------------------------


def class_mix_masks(
    pseudo_labels: torch.Tensor, generator: torch.Generator | None = None, num_classes: int | None = None
) -> torch.Tensor:
    """ClassMix masks: True where pixel (b, h, w) keeps image b, False where it comes from b+1.

    pseudo_labels (B,H,W) int64 with -1 = ignore. For image b, floor(n_b / 2) of its n_b present
    classes (labels >= 0) are chosen uniformly at random without replacement; the mask is True
    exactly on the pixels of those classes (never on ignored pixels). Vectorised: every
    (image, class) pair gets a uniform score, absent classes score -1, and the classes ranked
    below floor(n_b / 2) are chosen. ``num_classes`` (an upper bound on the label values + 1)
    avoids a device sync; by default it is read from the labels (the random draw has shape
    (B, num_classes), so the same generator state gives other choices for another num_classes).
    Returns (B,H,W) bool.
    """
    batch = pseudo_labels.shape[0]
    device = pseudo_labels.device
    shifted = pseudo_labels.reshape(batch, -1) + 1  # 0 = ignore, c + 1 = class c
    if num_classes is None:
        num_classes = int(shifted.max()) if shifted.numel() else 0
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=device)
    present.scatter_(1, shifted, True)
    present = present[:, 1:]

    scores = _rand((batch, num_classes), device, generator).masked_fill(~present, -1.0)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    num_chosen = present.sum(dim=1, keepdim=True) // 2
    chosen = (rank < num_chosen) & present
    chosen = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=device), chosen], dim=1)
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    """
    if mode not in MIX_MODES:
        raise ValueError(f"unknown mix mode {mode!r}; choose one of {', '.join(MIX_MODES)}")
    if mode == "none":
        return images, pseudo_labels, confidence
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
            )
        keep = ~box
    return (
        torch.where(keep[:, None], images, _next_image(images)),
        torch.where(keep, pseudo_labels, _next_image(pseudo_labels)),
        torch.where(keep, confidence, _next_image(confidence)),
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


def colour_jitter(
    rgb: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue adjustment with one factor per image.

    rgb (B,3,H,W) in [0,1]; brightness, contrast, saturation (B,) multiplicative factors (1 =
    unchanged), hue (B,) shift in turns (0 = unchanged). Same definitions as torchvision's
    adjust_* functions: brightness scales, contrast blends with the image's mean grey level,
    saturation blends with the per-pixel grey, hue rotates in HSV. Returns (B,3,H,W) in [0,1].
    """
    rgb = _blend(rgb, torch.zeros_like(rgb), brightness)
    rgb = _blend(rgb, _grey(rgb).mean(dim=(1, 2, 3), keepdim=True), contrast)
    rgb = _blend(rgb, _grey(rgb), saturation)
    hsv = rgb_to_hsv(rgb)
    hue_shifted = (hsv[:, 0] + hue.view(-1, 1, 1).to(rgb.dtype)) % 1.0
    hsv = torch.stack([hue_shifted, hsv[:, 1], hsv[:, 2]], dim=1)
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


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
    ``image_interpolation`` ("bilinear" or "nearest") and ``image_padding`` ("zeros" or
    "reflection") for the rescale, ``num_classes`` (saves ClassMix a device sync per call).
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
        image_padding: str = "zeros",
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
        self.image_padding = image_padding
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
        mean = torch.tensor(self.mean, device=device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device, dtype=images.dtype).view(1, 3, 1, 1)
        rgb = (images * std + mean).clamp(0.0, 1.0)
        jittered = (colour_jitter(rgb, brightness, contrast, saturation, hue) - mean) / std
        # Images outside the block keep their exact values (no normalisation round trip).
        return torch.where(apply.view(-1, 1, 1, 1), jittered, images)

    def __call__(
        self,
        images: torch.Tensor,
        pseudo_labels: torch.Tensor,
        confidence: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
        expected = (images.shape[0], *images.shape[2:])
        if tuple(pseudo_labels.shape) != expected or tuple(confidence.shape) != expected:
            raise ValueError(
                f"pseudo_labels and confidence must be {expected}, got "
                f"{tuple(pseudo_labels.shape)} and {tuple(confidence.shape)}"
            )
        batch, device = images.shape[0], images.device

        images, pseudo_labels, confidence = random_rescale_crop(
            images,
            pseudo_labels,
            confidence,
            self.scale_range,
            generator,
            image_interpolation=self.image_interpolation,
            image_padding=self.image_padding,
        )
        images, pseudo_labels, confidence = mix(
            images, pseudo_labels, confidence, self.mix_mode, generator, self.num_classes
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
        return images, pseudo_labels, confidence
