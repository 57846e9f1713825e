"""GlipImageProcessor: parity with the original test transform, the resize rule, batching, input kinds, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_reference
from PIL import Image

from glip_hf.image_processing_glip import GlipImageProcessor, GlipImageProcessorFast, get_resize_output_size


SMALL = {"shortest_edge": 48, "longest_edge": 80}


def random_rgb(height=30, width=44, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def sixteen_bit(image: np.ndarray) -> np.ndarray:
    """16-bit values that round (v / 257) back to `image`; the -128 catches truncation or a /256 scale."""
    return np.maximum(image.astype(np.int64) * 257 - 128, 0).astype(np.uint16)


def process(image, **kwargs) -> dict:
    return GlipImageProcessor(size=SMALL, **kwargs)(image)


def assert_same_output(actual, expected):
    for key in ("pixel_values", "pixel_mask", "image_sizes", "original_sizes"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


# --- parity with the original's preprocessed tensor ------------------------------------------------------------


def test_parity_with_original_transform():
    from safetensors.torch import load_file

    reference = require_reference("glip_tiny_random/inputs.safetensors")
    tensors = load_file(str(reference / "glip_tiny_random" / "inputs.safetensors"))
    processor = GlipImageProcessor(size={"shortest_edge": 300, "longest_edge": 512})
    inputs = processor(tensors["image_uint8_hwc_rgb"].numpy())

    assert inputs["image_sizes"].tolist() == [[300, 300]]
    assert inputs["original_sizes"].tolist() == [[512, 512]]
    assert inputs["pixel_values"].shape == (1, 3, 320, 320) and inputs["pixel_values"].dtype == torch.float32
    expected = tensors["images.tensors"].flip(1)  # the original is BGR
    max_diff = (inputs["pixel_values"] - expected).abs().max().item()
    assert max_diff < 1e-5, max_diff
    assert inputs["pixel_values"][..., 300:, :].abs().max() == 0
    assert inputs["pixel_values"][..., :, 300:].abs().max() == 0
    expected_mask = torch.zeros(1, 320, 320, dtype=torch.int64)
    expected_mask[:, :300, :300] = 1
    assert inputs["pixel_mask"].dtype == torch.int64 and torch.equal(inputs["pixel_mask"], expected_mask)


# --- resize rule ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "shortest", "longest", "expected"),
    [
        (512, 512, 300, 512, (300, 300)),
        (2048, 512, 800, 1333, (1332, 333)),  # max_size branch: short side round(1333 * 512 / 2048) = 333
        (500, 2000, 800, 1333, (333, 1332)),  # max_size branch, landscape
        (1000, 800, 800, 1333, (1000, 800)),  # short side already at the target: size kept
        (800, 800, 800, 1333, (800, 800)),
        (480, 640, 800, 1333, (800, 1066)),  # 1066.67 truncated
        (500, 333, 800, 1333, (1201, 800)),  # 1201.2 truncated
        (100, 50, 800, None, (1600, 800)),  # no longest-edge cap
        (100, 60, 64, None, (106, 64)),  # 106.67 truncated, not rounded
        (50, 100, 300, 512, (256, 512)),  # cap gives exactly 256 = round(512 * 50 / 100)
    ],
)
def test_resize_rule(height, width, shortest, longest, expected):
    assert get_resize_output_size(height, width, shortest, longest) == expected


def test_resize_through_processor_uses_defaults():
    processor = GlipImageProcessor()
    assert dict(processor.size) == {"shortest_edge": 800, "longest_edge": 1333}
    inputs = processor(Image.fromarray(random_rgb(24, 96)), return_tensors="np")  # 1:4 hits the longest-edge cap
    assert isinstance(inputs["pixel_values"], np.ndarray)
    assert inputs["image_sizes"].tolist() == [[333, 1332]]
    assert inputs["pixel_values"].shape == (1, 3, 352, 1344)
    assert GlipImageProcessor(size=40)(random_rgb(20, 100))["image_sizes"].tolist() == [[40, 200]]  # int: no cap


def test_resize_is_pil_bilinear_on_uint8():
    image = Image.fromarray(random_rgb(30, 44))
    inputs = process(image, do_normalize=False, do_pad=False)
    expected = np.asarray(image.resize((70, 48), Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(inputs["pixel_values"][0].numpy(), expected, rtol=0, atol=1e-7)


# --- batching and padding ---------------------------------------------------------------------------------------


def test_batch_pads_to_common_multiple_of_32():
    first, second = random_rgb(30, 44, seed=1), random_rgb(60, 20, seed=2)
    batch = process([first, second])
    assert batch["image_sizes"].tolist() == [[48, 70], [81, 27]]
    assert batch["pixel_values"].shape == (2, 3, 96, 96)
    for index, image in enumerate((first, second)):
        alone = process(image)
        height, width = batch["image_sizes"][index].tolist()
        block = batch["pixel_values"][index, :, :height, :width]
        torch.testing.assert_close(block, alone["pixel_values"][0, :, :height, :width], rtol=0, atol=0)
        assert batch["pixel_values"][index, :, height:].abs().max() == 0
        assert batch["pixel_values"][index, :, :, width:].abs().max() == 0
        assert batch["pixel_mask"][index].sum() == height * width
        assert batch["pixel_mask"][index, :height, :width].all()


def test_padding_options():
    image = random_rgb(30, 44)
    assert process(image, size_divisibility=0)["pixel_values"].shape == (1, 3, 48, 70)
    assert process(image, size_divisibility=64)["pixel_values"].shape == (1, 3, 64, 128)
    unpadded = process(image, do_pad=False)
    assert unpadded["pixel_values"].shape == (1, 3, 48, 70) and unpadded["pixel_mask"].all()


# --- input kinds ------------------------------------------------------------------------------------------------


def test_rgb_input_kinds_agree(tmp_path):
    rgb = random_rgb()
    expected = process(Image.fromarray(rgb))
    Image.fromarray(rgb).save(tmp_path / "image.png")
    kinds = {
        "numpy_hwc": rgb,
        "numpy_chw": rgb.transpose(2, 0, 1).copy(),
        "numpy_float": rgb / 255.0,
        "numpy_uint16": sixteen_bit(rgb),
        "numpy_int64": rgb.astype(np.int64),
        "torch_chw_uint8": torch.from_numpy(rgb).permute(2, 0, 1),
        "torch_hwc_uint8": torch.from_numpy(rgb),
        "torch_chw_float": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
        "torch_chw_half": (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255).half(),
        "str_path": str(tmp_path / "image.png"),
        "pathlib": tmp_path / "image.png",
        "rgba_pil": Image.fromarray(np.dstack([rgb, random_rgb(seed=5)[..., 0]]), mode="RGBA"),
        "rgba_numpy": np.dstack([rgb, random_rgb(seed=5)[..., 0]]),
    }
    for name, image in kinds.items():
        try:
            assert_same_output(process(image), expected)
        except AssertionError as error:
            raise AssertionError(f"input kind {name}") from error


def test_grey_input_kinds_agree():
    grey = random_rgb()[..., 0]
    expected = process(Image.fromarray(np.dstack([grey] * 3)))
    kinds = {
        "L": Image.fromarray(grey, mode="L"),
        "LA": Image.fromarray(np.dstack([grey, grey[::-1]]), mode="LA"),
        "I;16": Image.fromarray(sixteen_bit(grey)),
        "I": Image.fromarray(sixteen_bit(grey).astype(np.int32), mode="I"),
        "F": Image.fromarray(grey.astype(np.float32) / 255, mode="F"),
        "numpy_2d": grey,
        "numpy_hw1": grey[:, :, None],
        "torch_1hw": torch.from_numpy(grey)[None],
    }
    for name, image in kinds.items():
        try:
            assert_same_output(process(image), expected)
        except AssertionError as error:
            raise AssertionError(f"input kind {name}") from error
    assert kinds["I;16"].mode == "I;16"
    raw = process(kinds["L"], do_normalize=False)["pixel_values"][0]
    assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])
    white = process(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), do_normalize=False, do_pad=False)
    assert torch.equal(white["pixel_values"], torch.ones(1, 3, 48, 48))


def test_ambiguous_shapes_follow_the_type_convention():
    def original_size(image):
        return process(image, do_resize=False)["original_sizes"].tolist()

    assert original_size(torch.zeros(2, 8, dtype=torch.uint8)) == [[2, 8]]  # 2-D is (H, W) whatever its size
    assert original_size(np.zeros((3, 5, 3), dtype=np.uint8)) == [[3, 5]]  # numpy: channels last
    assert original_size(torch.zeros(3, 5, 3, dtype=torch.uint8)) == [[5, 3]]  # torch: channels first


def test_palette_image_matches_its_rgb_conversion():
    palette = Image.fromarray(random_rgb()).convert("P")
    assert palette.mode == "P"
    assert_same_output(process(palette), process(palette.convert("RGB")))


@pytest.mark.parametrize(
    ("orientation", "transpose"), [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)]
)
def test_exif_orientation_is_applied(tmp_path, orientation, transpose):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(random_rgb(30, 44)).save(path, exif=exif)
    with Image.open(path) as stored:
        # The decoded pixels rotated by hand; fromarray drops the EXIF tag, which would otherwise rotate them again.
        upright = Image.fromarray(np.asarray(stored.convert("RGB").transpose(transpose)))
    assert upright.size == (30, 44)
    expected = process(upright)
    assert expected["original_sizes"].tolist() == [[44, 30]]
    assert_same_output(process(path), expected)
    with Image.open(path) as opened:
        assert_same_output(process(opened), expected)


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((1, 3, 8, 8), dtype=np.uint8), "2-D .* or 3-D"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "channel axis"),
        (np.zeros((0, 8, 3), dtype=np.uint8), "empty image"),
        (Image.new("RGB", (0, 4)), "empty image"),
        (np.full((8, 8, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan, dtype=np.float32), r"\[0, 1\]"),
        (np.full((8, 8, 3), 300, dtype=np.int32), "unsupported image dtype"),
        (np.zeros((8, 8, 3), dtype=np.complex64), "unsupported image dtype"),
        ({"pixels": 1}, "unsupported image type dict"),
        ([], "no images"),
    ],
)
def test_bad_inputs_raise(image, message):
    with pytest.raises(ValueError, match=message):
        process(image)


def test_bad_files_and_settings_raise(tmp_path):
    (tmp_path / "not_an_image.jpg").write_text("hello")
    with pytest.raises(ValueError, match="cannot read an image from .*not_an_image.jpg"):
        process(tmp_path / "not_an_image.jpg")
    with pytest.raises(ValueError, match="cannot read an image from .*missing.png"):
        process(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="do_pad=False"):
        process([random_rgb(30, 44), random_rgb(44, 30)], do_pad=False)
    with pytest.raises(ValueError, match="shortest_edge"):
        GlipImageProcessor(size={"height": 32, "width": 32})(random_rgb())


# --- serialisation ----------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    processor = GlipImageProcessor(
        size={"shortest_edge": 300, "longest_edge": 512}, size_divisibility=64, resample=Image.BICUBIC,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25], do_pad=True,
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads(Path(tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 300, "longest_edge": 512}
    assert saved["size_divisibility"] == 64 and saved["resample"] == Image.BICUBIC
    assert saved["image_processor_type"] == "GlipImageProcessor"

    loaded = GlipImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = random_rgb(50, 70)
    assert_same_output(loaded(image), processor(image))
    assert loaded(image)["pixel_values"].shape == (1, 3, 320, 448)


def test_fast_processor_matches_the_pil_one():
    """The torchvision backend runs where the images lie: identical without a resize, one grey level with."""
    processor, fast_processor = GlipImageProcessor(), GlipImageProcessorFast()
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    for height, width in [(800, 1333), (480, 640)]:
        image = base.resize((width, height), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
        exact = processor([image, image])
        fast = fast_processor([tensor, image], device="cpu")
        for key in ("pixel_mask", "image_sizes", "original_sizes"):
            assert torch.equal(fast[key].cpu(), exact[key]), key
        levels = (fast["pixel_values"] - exact["pixel_values"]) * torch.tensor(processor.image_std).view(1, 3, 1, 1)
        tolerance = 1e-5 if (height, width) == (800, 1333) else 1.01 / 255
        assert levels.abs().max() <= tolerance, (height, width, float(levels.abs().max()))
    assert fast_processor(tensor)["pixel_values"].device == tensor.device
    with pytest.raises(ValueError, match="empty image"):
        fast_processor(torch.zeros(3, 0, 5, dtype=torch.uint8), device="cpu")
    with pytest.raises(ValueError, match="needs GlipImageProcessorFast"):
        processor(image, device="cpu")
    with pytest.raises(ValueError, match="bilinear or bicubic"):
        GlipImageProcessorFast(resample=Image.NEAREST)(image)


def test_fast_processor_saves_and_loads_with_the_same_settings(tmp_path):
    fast = GlipImageProcessorFast(size={"shortest_edge": 300, "longest_edge": 512}, size_divisibility=64)
    fast.save_pretrained(tmp_path)
    loaded = GlipImageProcessorFast.from_pretrained(tmp_path)
    image = random_rgb(50, 70)
    assert_same_output(loaded(image), fast(image))
    # The same settings through the PIL backend: the same shapes, pixels within one grey level.
    exact = GlipImageProcessor.from_pretrained(tmp_path)
    assert exact(image)["pixel_values"].shape == loaded(image)["pixel_values"].shape == (1, 3, 320, 448)
