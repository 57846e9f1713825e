"""Image processors reproducing GLIP's test-time transform (maskrcnn_benchmark `build_transforms(cfg, is_train=False)`).

The original: `Resize(MIN_SIZE_TEST, MAX_SIZE_TEST)` on the uint8 PIL image (PIL bilinear), `ToTensor`,
`Normalize(format="bgr255")`, then `to_image_list(size_divisible=32)`, which zero-pads the bottom/right *after*
normalisation. The converted model takes RGB in [0, 1] normalised with the ImageNet mean/std: the same tensor as the
original's up to float rounding and the channel order (the original is BGR).

Two backends, as in transformers:

- `GlipImageProcessor` ("pil"): every input becomes an upright 8-bit RGB PIL image (`to_rgb_pil_image`) resized by
  PIL, bit-exact with the original (which resized uint8 PIL images; resizing floats or 16-bit data would not be).
- `GlipImageProcessorFast` ("torchvision"): the same steps as torch operations on `device`. uint8 (3, H, W) tensors
  are used where they lie, other inputs are converted as above first. A resize uses torch's antialiased filter,
  within one grey level of PIL's; without a resize the outputs are identical.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from transformers.image_processing_backends import BaseImageProcessorFast, PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    infer_channel_dimension_format,
    load_image,
    to_numpy_array,
)
from transformers.processing_utils import ImagesKwargs, Unpack

__all__ = ["GlipImageProcessor", "GlipImageProcessorFast", "get_resize_output_size", "to_rgb_pil_image"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# torch filters of the PIL resample modes the fast processor supports (antialiased, as PIL's downscaling is).
_TORCH_RESAMPLE = {PILImageResampling.BILINEAR: "bilinear", PILImageResampling.BICUBIC: "bicubic"}


class GlipImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisibility (`int`, *optional*, defaults to 32):
        Padded height and width are rounded up to a multiple of this (the original's `DATALOADER.SIZE_DIVISIBILITY`).
        0 or 1 pads only to the largest image of the batch.
    """

    size_divisibility: int | None


def get_resize_output_size(height: int, width: int, shortest_edge: int, longest_edge: int | None) -> tuple[int, int]:
    """(height, width) after resizing, exactly as maskrcnn_benchmark's `Resize.get_size` computes it."""
    size = shortest_edge
    if longest_edge is not None:
        min_original, max_original = float(min(width, height)), float(max(width, height))
        if max_original / min_original * size > longest_edge:
            size = int(round(longest_edge * min_original / max_original))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    # The long side is truncated, not rounded, as in the original.
    if width < height:
        new_size = int(size * height / width), size
    else:
        new_size = size, int(size * width / height)
    if min(new_size) < 1:
        raise ValueError(
            f"an image of {width}x{height} pixels would be resized to {new_size[1]}x{new_size[0]} (shortest edge "
            f"{shortest_edge}, longest edge {longest_edge}): its short side vanishes; crop or pad it to a less "
            "elongated shape"
        )
    return new_size


def padded_size(image_sizes, size_divisibility: int | None) -> tuple[int, int]:
    """The batch canvas: largest height and width, rounded up to a multiple of `size_divisibility` (if > 1)."""
    height, width = max(int(size[0]) for size in image_sizes), max(int(size[1]) for size in image_sizes)
    if size_divisibility and size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    return height, width


# ----- inputs -> upright 8-bit RGB PIL images ------------------------------------------------------------------

def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Map an array's values to uint8: uint16 is scaled by 255/65535, floats must lie in [0, 1] and are rounded."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"float images must hold values in [0, 1], got range [{array.min()}, {array.max()}]; "
                "divide 0-255 data by 255 or pass it as uint8"
            )
        # Rounding (not truncation, as transformers' `to_pil_image`) makes `uint8 / 255` come back as the same uint8.
        return np.round(array.astype(np.float64) * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise ValueError(
        f"unsupported image dtype {array.dtype}: use uint8, uint16, float in [0, 1], or integers in [0, 255]"
    )


def _array_to_pil(array: np.ndarray, channels_first: bool) -> Image.Image:
    """(H, W), (H, W, C) or (C, H, W) with 1-4 channels; an ambiguous shape follows `channels_first`."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"image arrays must be 2-D (H, W) or 3-D (H, W, C) / (C, H, W), got shape {tuple(array.shape)}; "
            "pass a batch as a list of images"
        )
    if array.size == 0:
        raise ValueError(f"empty image of shape {tuple(array.shape)}")
    channels = (1, 2, 3, 4)
    try:
        if array.ndim == 2:
            array, layout = array[:, :, None], ChannelDimension.LAST
        elif array.shape[0] in channels and array.shape[-1] in channels:
            layout = ChannelDimension.FIRST if channels_first else ChannelDimension.LAST
        else:
            layout = infer_channel_dimension_format(array, num_channels=channels)
    except ValueError:
        raise ValueError(
            f"cannot find the channel axis of an image array of shape {tuple(array.shape)}: expected 1 (grey), "
            "2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels on the first or last axis"
        ) from None
    # PIL's RGB conversion repeats grey over RGB and drops alpha, as GLIP's datasets did.
    return to_pil_image(_to_uint8(array), do_rescale=False, input_data_format=layout).convert("RGB")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"empty image of size {image.size}")
    image = ImageOps.exif_transpose(image)
    # PIL's own convert("RGB") clips 16-bit and float values instead of scaling them.
    if image.mode in _SIXTEEN_BIT_MODES:
        return _array_to_pil(np.clip(np.asarray(image), 0, 65535).astype(np.uint16), channels_first=False)
    if image.mode == "F":
        return _array_to_pil(np.asarray(image), channels_first=False)
    try:
        return image if image.mode == "RGB" else image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot convert a PIL image of mode {image.mode!r} to RGB: {error}") from error


def _open(source: str) -> Image.Image:
    """URLs and data URIs through `load_image`; files by PIL itself (`load_image` would clip 16-bit files)."""
    try:
        if source.startswith(("http://", "https://", "data:image/")):
            return load_image(source)
        with Image.open(source) as image:
            image.load()  # read now: the file is closed on leaving the block
            return image
    except (OSError, ValueError) as error:  # missing file, not an image, truncated data
        raise ValueError(f"cannot read an image from {source!r}: {error}") from error


def to_rgb_pil_image(image) -> Image.Image:
    """Convert one input to an upright 8-bit RGB PIL image.

    PIL images are EXIF-transposed and converted (16-bit modes scaled by 255/65535, mode F read as floats in
    [0, 1]); arrays and tensors are (H, W), (H, W, C) or (C, H, W) with 1-4 channels (see `_to_uint8` for the
    dtypes; an ambiguous shape is channels-first for tensors, channels-last for arrays); paths and URLs are opened.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open(os.fspath(image))
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        tensor = tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor
        return _array_to_pil(to_numpy_array(tensor), channels_first=True)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, channels_first=False)
    raise ValueError(
        f"unsupported image type {type(image).__name__}: pass PIL images, numpy arrays, torch tensors or file paths"
    )


def _as_list(images) -> list:
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise ValueError("no images were given")
    return images


# ----- the two processors --------------------------------------------------------------------------------------

class _GlipImageSettings:
    """Settings and checks both backends share (the original's test transform)."""

    valid_kwargs = GlipImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]

    do_resize = True
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    resample = PILImageResampling.BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_pad = True
    size_divisibility = 32

    # What `GlipProcessor` copies to build the other backend with the same settings.
    setting_names = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std", "do_pad", "size_divisibility")

    def preprocess(self, images, **kwargs: Unpack[GlipImageProcessorKwargs]) -> BatchFeature:
        """Preprocess one image or a list of images; any constructor setting can be overridden per call."""
        kwargs.setdefault("return_tensors", "pt")
        return super().preprocess(images, **kwargs)

    def _validate_preprocess_kwargs(self, size=None, do_resize=None, **kwargs):
        super()._validate_preprocess_kwargs(size=size, do_resize=do_resize, **kwargs)
        if do_resize and (size.shortest_edge is None or set(dict(size)) - {"shortest_edge", "longest_edge"}):
            raise ValueError(f"size must be {{'shortest_edge': int, 'longest_edge': int (optional)}}, got {dict(size)}")

    def _resized_size(self, height: int, width: int, size) -> tuple[int, int]:
        return get_resize_output_size(height, width, size.shortest_edge, size.longest_edge)


class GlipImageProcessor(_GlipImageSettings, PilBackend):
    r"""
    GLIP image processor (PIL backend): shortest-edge resize capped by a longest edge (PIL bilinear on uint8, as the
    original), rescale to [0, 1], ImageNet normalisation, then zero-padding to a multiple of `size_divisibility`.

    Returns `pixel_values` (B, 3, H, W) float32, `pixel_mask` (B, H, W) int64 (1 on the image, 0 on padding),
    `image_sizes` (B, 2) int64 (resized height, width before padding) and `original_sizes` (B, 2) int64.
    """

    def _prepare_image_like_inputs(self, images, *args, device=None, **kwargs) -> list[Image.Image]:
        # The original resized PIL images: every input becomes one (the base class would make numpy arrays).
        if device is not None:
            raise ValueError(f"device={device!r} needs GlipImageProcessorFast (backend='torchvision'); "
                             "GlipImageProcessor runs PIL on the CPU")
        return [to_rgb_pil_image(image) for image in _as_list(images)]

    def resize(self, image: Image.Image, size, resample=PILImageResampling.BILINEAR, **kwargs) -> Image.Image:
        """Resize a PIL image with the original's rule; PIL antialiases bilinear downscaling, as the original did."""
        height, width = self._resized_size(image.height, image.width, size)
        return image.resize((width, height), resample=resample)

    def pad(self, images: list[np.ndarray], size_divisibility: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Zero-pad (C, H, W) arrays at the bottom/right to the batch maximum rounded up to `size_divisibility`."""
        height, width = padded_size([image.shape[1:] for image in images], size_divisibility)
        pixel_values = np.zeros((len(images), images[0].shape[0], height, width), dtype=np.float32)
        pixel_mask = np.zeros((len(images), height, width), dtype=np.int64)
        for index, image in enumerate(images):
            pixel_values[index, :, : image.shape[1], : image.shape[2]] = image
            pixel_mask[index, : image.shape[1], : image.shape[2]] = 1
        return pixel_values, pixel_mask

    def _preprocess(
        self, images: list[Image.Image], do_resize, size, resample, do_rescale, rescale_factor, do_normalize,
        image_mean, image_std, do_pad, size_divisibility, return_tensors=None, **kwargs,
    ) -> BatchFeature:
        original_sizes = [(image.height, image.width) for image in images]
        mean = np.asarray(image_mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(image_std, dtype=np.float32).reshape(-1, 1, 1)
        arrays = []
        for image in images:
            if do_resize:
                image = self.resize(image, size, resample)
            array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
            if do_rescale:
                array = array * np.float32(rescale_factor)
            if do_normalize:
                array = (array - mean) / std
            arrays.append(array.astype(np.float32))
        image_sizes = [array.shape[1:] for array in arrays]
        if not do_pad and len(set(image_sizes)) > 1:
            raise ValueError(f"images of different sizes {image_sizes} cannot be batched with do_pad=False")
        pixel_values, pixel_mask = self.pad(arrays, size_divisibility if do_pad else None)
        data = {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_sizes": np.asarray(image_sizes, dtype=np.int64),
            "original_sizes": np.asarray(original_sizes, dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


class GlipImageProcessorFast(_GlipImageSettings, BaseImageProcessorFast):
    r"""
    GLIP image processor (torchvision backend): the steps of [`GlipImageProcessor`] as torch operations on `device`
    (default: where uint8 (3, H, W) tensor inputs lie, else the CPU). Identical outputs without a resize; a resize
    uses torch's antialiased filter, within one grey level of PIL's.

    Returns `pixel_values` and `pixel_mask` on that device, `image_sizes` and `original_sizes` on the CPU.
    """

    def _prepare_image_like_inputs(self, images, *args, device=None, **kwargs) -> list[torch.Tensor]:
        return [_to_uint8_chw_tensor(image, device) for image in _as_list(images)]

    def resize(self, image: torch.Tensor, size, resample=PILImageResampling.BILINEAR, **kwargs) -> torch.Tensor:
        """Resize a float (3, H, W) image of 0-255 levels with the original's rule, rounded back to uint8 levels."""
        new_size = self._resized_size(*image.shape[1:], size)
        if new_size == tuple(image.shape[1:]):
            return image
        mode = _TORCH_RESAMPLE.get(PILImageResampling(resample))
        if mode is None:
            raise ValueError(f"GlipImageProcessorFast resizes with bilinear or bicubic filters, got resample={resample}")
        resized = F.interpolate(image[None], size=new_size, mode=mode, align_corners=False, antialias=True)[0]
        return resized.round_().clamp_(0, 255)  # as PIL's resize of a uint8 image returns whole levels

    def _preprocess(
        self, images: list[torch.Tensor], do_resize, size, resample, do_rescale, rescale_factor, do_normalize,
        image_mean, image_std, do_pad, size_divisibility, return_tensors=None, **kwargs,
    ) -> BatchFeature:
        original_sizes = [tuple(image.shape[1:]) for image in images]
        device = images[0].device
        mean = torch.tensor(image_mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        std = torch.tensor(image_std, dtype=torch.float32, device=device).view(-1, 1, 1)
        processed = []
        for image in images:
            pixels = image.float()
            if do_resize:
                pixels = self.resize(pixels, size, resample)
            if do_rescale:
                pixels = pixels * rescale_factor
            if do_normalize:
                pixels = (pixels - mean) / std
            processed.append(pixels)
        image_sizes = [tuple(pixels.shape[1:]) for pixels in processed]
        if not do_pad and len(set(image_sizes)) > 1:
            raise ValueError(f"images of different sizes {image_sizes} cannot be batched with do_pad=False")
        height, width = padded_size(image_sizes, size_divisibility if do_pad else None)
        pixel_values = torch.zeros(len(processed), 3, height, width, device=device)
        pixel_mask = torch.zeros(len(processed), height, width, dtype=torch.long, device=device)
        for index, pixels in enumerate(processed):
            pixel_values[index, :, : pixels.shape[1], : pixels.shape[2]] = pixels
            pixel_mask[index, : pixels.shape[1], : pixels.shape[2]] = 1
        data = {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.long),
            "original_sizes": torch.tensor(original_sizes, dtype=torch.long),
        }
        return BatchFeature(data=data)


def _to_uint8_chw_tensor(image, device) -> torch.Tensor:
    """A uint8 (3, H, W) tensor on `device`: such tensors are used as they are, anything else goes through PIL."""
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"empty image of shape {tuple(image.shape)}")
        return image if device is None else image.to(device)
    rgb = np.asarray(to_rgb_pil_image(image)).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device or "cpu")
