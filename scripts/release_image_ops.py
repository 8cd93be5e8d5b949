"""How far prcl's strong-view image operations are from the release's PIL ones (docs/method.md).

The release builds its strong view by round trips through 8-bit PIL images (dataset_helpers/VOC.py,
``tensor_to_pil`` and ``transform``). prcl matches its geometry, mixing, confidences and the order of
the colour operations, and computes the colour operations in float on the device. This prints, on
scikit-image's ``coffee`` picture (it ships in the wheel) in 0-255 grey levels, how much the
remaining pieces differ:

- the 8-bit round trip of a normalised image (``to_pil_image`` truncates ``x * 255``);
- PIL's GaussianBlur(radius=sigma) (box-filter approximation) against a 9-tap Gaussian kernel;
- PIL's ImageEnhance/hue arithmetic in uint8 against torchvision's float adjust_* functions.

    python scripts/release_image_ops.py
"""

from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from skimage import data
from torchvision.transforms import functional as TF

from prcl.constants import IMAGENET_MEAN, IMAGENET_STD
from prcl.data.strong_view import gaussian_blur


def levels(x: torch.Tensor) -> torch.Tensor:
    return x.double() * 255


def main() -> None:
    picture = Image.fromarray(data.coffee())
    exact = TF.to_tensor(picture)  # (3, H, W) in [0, 1], k / 255

    # 1. the release's round trip: normalise (loader), denormalise, to_pil_image, to_tensor
    normalised = TF.normalize(exact, IMAGENET_MEAN, IMAGENET_STD)
    denormalised = TF.normalize(TF.normalize(normalised, [0.0] * 3, [1 / s for s in IMAGENET_STD]),
                                [-m for m in IMAGENET_MEAN], [1.0] * 3)
    round_trip = TF.to_tensor(TF.to_pil_image(denormalised))
    change = levels(round_trip) - levels(exact)
    print(f"8-bit round trip: {100 * (change != 0).float().mean():.1f} % of the values change, "
          f"by {change.min():.0f} to {change.max():.0f} levels")

    # 2. Gaussian blur
    for sigma in (0.15, 0.65, 1.15):
        pil = TF.to_tensor(picture.filter(ImageFilter.GaussianBlur(radius=sigma)))
        ours = gaussian_blur(exact[None], torch.tensor([sigma]), radius=4)[0]
        diff = (levels(pil) - levels(ours)).abs()
        print(f"blur sigma {sigma}: PIL - Gaussian kernel: mean {diff.mean():.2f}, max {diff.max():.1f} levels")

    # 3. colour operations, one at a time at the range ends
    for name, factor, pil_op, tensor_op in [
        ("brightness", 1.25, TF.adjust_brightness, TF.adjust_brightness),
        ("contrast", 0.75, TF.adjust_contrast, TF.adjust_contrast),
        ("saturation", 1.25, TF.adjust_saturation, TF.adjust_saturation),
        ("hue", 0.25, TF.adjust_hue, TF.adjust_hue),
    ]:
        pil = TF.to_tensor(pil_op(picture, factor))
        ours = tensor_op(exact, factor)
        diff = (levels(pil) - levels(ours)).abs()
        print(f"{name} {factor}: PIL uint8 - float: mean {diff.mean():.2f}, max {diff.max():.1f} levels")


if __name__ == "__main__":
    main()
