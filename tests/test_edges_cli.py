"""`glip-hf detect` at the edges: no input or foreign file is ever overwritten, output names never collide, a bad
image is reported while the others are processed, bad options and damaged model folders give one "error:" line,
and the picture written is the image the boxes refer to (EXIF orientation, 16-bit PNG)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import bert_vocab_text_config, tiny_config
from PIL import Image

from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.cli import main
from glip_hf.processing_glip import load_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    GlipForGrounding(tiny_config(text_config=bert_vocab_text_config())).save_pretrained(folder)
    image_processor = GlipImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    GlipProcessor(image_processor, load_tokenizer(), max_text_len=32).save_pretrained(folder)
    return folder


def _photo(path, width=48, height=32, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def detect(model_dir, *images, output=None, extra=(), capsys=None):
    argv = ["detect", "--model", str(model_dir), "--prompt", "cat. dog.", "--image", *map(str, images)]
    if output is not None:
        argv += ["--output-dir", str(output)]
    code = main(argv + list(extra))
    captured = capsys.readouterr() if capsys is not None else None
    return code, captured


def test_an_input_is_never_overwritten(model_dir, tmp_path, capsys, monkeypatch):
    photo = _photo(tmp_path / "x.png")
    before = photo.read_bytes()
    monkeypatch.chdir(tmp_path)  # `--output-dir .` from the photo's folder names the photo itself
    code, captured = detect(model_dir, "x.png", output=".", capsys=capsys)
    assert code == 2 and "would overwrite an input image" in captured.err
    assert photo.read_bytes() == before
    assert not (tmp_path / "x.json").exists()


def test_same_names_in_two_folders_keep_their_relative_paths(model_dir, tmp_path, capsys):
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    first = _photo(tmp_path / "d1" / "x.png", seed=1)
    second = _photo(tmp_path / "d2" / "x.png", width=40, seed=2)
    code, _ = detect(model_dir, first, second, output=tmp_path / "out", capsys=capsys)
    assert code == 0
    for source, folder, width in ((first, "d1", 48), (second, "d2", 40)):
        record = json.loads((tmp_path / "out" / folder / "x.json").read_text())
        assert record["image"] == str(source) and record["image_size"] == [width, 32]
        assert (tmp_path / "out" / folder / "x.png").is_file()


def test_a_double_suffix_keeps_its_own_name_and_true_collisions_are_refused(model_dir, tmp_path, capsys):
    plain, double = _photo(tmp_path / "y.png"), _photo(tmp_path / "y.jpg.png", seed=3)
    code, _ = detect(model_dir, plain, double, output=tmp_path / "out", capsys=capsys)
    assert code == 0
    assert json.loads((tmp_path / "out" / "y.json").read_text())["image"] == str(plain)
    assert json.loads((tmp_path / "out" / "y.jpg.json").read_text())["image"] == str(double)

    other = _photo(tmp_path / "y.jpg", seed=4)
    code, captured = detect(model_dir, plain, other, output=tmp_path / "second", capsys=capsys)
    assert code == 2 and "would both write" in captured.err
    assert not (tmp_path / "second").exists()  # refused before anything is written


def test_files_detect_did_not_write_are_kept_and_its_own_are_replaced(model_dir, tmp_path, capsys):
    photo = _photo(tmp_path / "x.png")
    output = tmp_path / "out"
    output.mkdir()
    foreign = _photo(output / "x.png", seed=9)
    kept = foreign.read_bytes()
    code, captured = detect(model_dir, photo, output=output, capsys=capsys)
    assert code == 2 and "was not written by glip-hf detect" in captured.err and foreign.read_bytes() == kept

    foreign.unlink()
    assert detect(model_dir, photo, output=output, capsys=capsys)[0] == 0
    code, _ = detect(model_dir, photo, output=output, extra=["--threshold", "0.9"], capsys=capsys)  # a re-run
    assert code == 0 and json.loads((output / "x.json").read_text())["threshold"] == 0.9


def test_a_failing_image_is_reported_and_the_others_are_processed(model_dir, tmp_path, capsys):
    first, last = _photo(tmp_path / "a.png"), _photo(tmp_path / "c.png", seed=5)
    broken = tmp_path / "b.png"
    broken.write_text("not a picture")
    code, captured = detect(model_dir, first, tmp_path / "missing.png", broken, last, output=tmp_path / "out",
                            capsys=capsys)
    assert code == 1
    assert (tmp_path / "out" / "a.json").is_file() and (tmp_path / "out" / "c.json").is_file()
    assert "missing.png" in captured.err and "b.png" in captured.err
    assert "2 of 4 image(s) failed" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "inf", "half"])
def test_threshold_outside_zero_one_is_refused(model_dir, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        detect(model_dir, _photo(tmp_path / "x.png"), output=tmp_path / "out", extra=["--threshold", value])
    assert exit_info.value.code == 2
    assert "--threshold" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [("nonsense", "is not a torch device"),
                                             ("cuda", "no CUDA GPU is available")])
def test_unusable_devices_are_named(model_dir, tmp_path, capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, captured = detect(model_dir, _photo(tmp_path / "x.png"), output=tmp_path / "out",
                            extra=["--device", device], capsys=capsys)
    assert code == 2 and message in captured.err and "Traceback" not in captured.err


def test_an_output_dir_that_is_a_file_is_refused(model_dir, tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("my notes")
    code, captured = detect(model_dir, _photo(tmp_path / "x.png"), output=blocker, capsys=capsys)
    assert code == 2 and "a file is in the way" in captured.err and blocker.read_text() == "my notes"


@pytest.mark.parametrize("damage", ["no weights", "empty", "truncated"])
def test_a_damaged_model_folder_is_one_error_line(model_dir, tmp_path, capsys, damage):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
    else:
        weights.write_bytes(b"" if damage == "empty" else weights.read_bytes()[: weights.stat().st_size // 2])
    code, captured = detect(folder, _photo(tmp_path / "x.png"), output=tmp_path / "out", capsys=capsys)
    assert code == 2 and f"cannot load the model folder {folder}" in captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1


def test_non_finite_outputs_are_an_error_not_zero_detections(model_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    model = GlipForGrounding.from_pretrained(folder)
    with torch.no_grad():
        model.head.centerness.weight.fill_(math.nan)  # what damaged bytes decode to
    model.save_pretrained(folder)
    code, captured = detect(folder, _photo(tmp_path / "x.png"), output=tmp_path / "out", capsys=capsys)
    assert code == 1 and "non-finite" in captured.err and "0 detection(s)" not in captured.out


def test_the_picture_is_upright_as_a_viewer_shows_it(model_dir, tmp_path, capsys):
    stored = np.random.default_rng(7).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display", as phones write
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "phone.jpg") as opened:
        from PIL import ImageOps

        upright = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    code, _ = detect(model_dir, tmp_path / "phone.jpg", output=tmp_path / "out", extra=["--threshold", "1"],
                     capsys=capsys)
    assert code == 0
    record = json.loads((tmp_path / "out" / "phone.json").read_text())
    assert record["image_size"] == [32, 48]  # width, height after the rotation: the frame the boxes are in
    with Image.open(tmp_path / "out" / "phone.png") as written:
        assert np.array_equal(np.asarray(written.convert("RGB")), upright)


def test_a_16_bit_png_is_drawn_as_its_grey_levels(model_dir, tmp_path, capsys):
    levels = np.full((32, 48), 30000, dtype=np.uint16)
    levels[:, 24:] = 60000
    Image.fromarray(levels).save(tmp_path / "scan.png")
    code, _ = detect(model_dir, tmp_path / "scan.png", output=tmp_path / "out", extra=["--threshold", "1"],
                     capsys=capsys)
    assert code == 0
    with Image.open(tmp_path / "out" / "scan.png") as written:
        pixels = np.asarray(written.convert("RGB"))
    assert (pixels[:, :24] == round(30000 / 257)).all() and (pixels[:, 24:] == round(60000 / 257)).all()


def test_boxes_are_outlined_where_the_detections_put_them():
    from glip_hf.cli import draw_detections

    image = Image.fromarray(np.full((64, 80, 3), 128, dtype=np.uint8))
    drawn = np.asarray(draw_detections(image, [{"box": [10.0, 20.0, 50.0, 60.0], "label": "cat", "label_id": 0,
                                               "score": 0.5}]))
    changed = np.any(drawn != 128, axis=-1)
    assert drawn.shape == (64, 80, 3)
    assert changed[40, 10] and changed[40, 50] and changed[60, 30]  # left, right and bottom edges
    assert not changed[40, 30] and not changed[5, 70]  # inside the box and far outside stay as they were
