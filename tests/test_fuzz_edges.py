"""Property-based fuzz of the user-facing entry points: 10,500 random inputs to the processor, the image processor,
the post-processing and the CLI's argument handling. Every call either succeeds or raises the documented
`ValueError` / `TypeError` (on the CLI: argparse's exit 2 or `CliError`) with a message; nothing else escapes."""

from __future__ import annotations

import contextlib
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from glip_hf import GlipImageProcessor, GlipProcessor
from glip_hf.cli import CliError, build_parser, check_device, output_stems
from glip_hf.processing_glip import load_tokenizer


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def documented_or_result(function, *args, **kwargs):
    """The call's result, or None after a documented error; any other exception fails the test."""
    try:
        return function(*args, **kwargs)
    except (ValueError, TypeError) as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        return None


@pytest.fixture(scope="module")
def processor():
    image_processor = GlipImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    return GlipProcessor(image_processor, load_tokenizer(), max_text_len=24)


# Every code point, lone surrogates included, plus words that make real prompts.
any_text = st.one_of(
    st.text(st.characters(), max_size=30),
    st.lists(st.sampled_from(list("ab .,[]_()") + ["[SEP]", "cat", "man", "woman"]), max_size=8).map("".join),
)
prompt = st.one_of(
    any_text, st.lists(any_text, max_size=5), st.lists(st.one_of(any_text, st.lists(any_text, max_size=3)), max_size=3),
    st.integers(), st.binary(max_size=10), st.dictionaries(any_text, st.integers(), max_size=2), st.none(),
    st.floats(), st.tuples(any_text, any_text),
)
phrase = st.one_of(any_text, st.tuples(st.integers(-3, 40), st.integers(-3, 40)), st.tuples(st.floats(), st.integers()),
                   st.booleans(), st.lists(st.integers(), max_size=3))
phrases = st.one_of(st.none(), any_text, st.lists(phrase, max_size=4), st.lists(st.lists(phrase, max_size=2),
                                                                                max_size=3), st.integers())


@fuzz(3000)
@given(text=prompt, phrases=phrases, match=st.sampled_from(["word", "substring", "regex"]))
def test_processor_text_fuzz(processor, text, phrases, match):
    inputs = documented_or_result(processor, text=text, phrases=phrases, phrase_match=match)
    if inputs is not None:
        assert inputs["input_ids"].shape[1] <= processor.max_text_len
        assert inputs["token_maps"].shape[:2] == inputs["label_ids"].shape
        assert all(row.any() for row, labels in zip(inputs["token_maps"].flatten(0, 1), inputs["label_ids"].flatten())
                   if labels >= 0)


image_array = st.builds(
    lambda shape, dtype, scale: np.asarray(np.random.default_rng(sum(shape)).random(shape) * scale).astype(dtype),
    st.lists(st.integers(0, 70), min_size=0, max_size=4).map(tuple),
    st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.int8]),
    st.sampled_from([1.0, 255.0, 65535.0, -2.0]),
)
picture = st.one_of(
    image_array, image_array.map(torch.from_numpy),
    st.builds(lambda w, h, mode: Image.new(mode, (w, h)), st.integers(1, 300), st.integers(1, 300),
              st.sampled_from(["RGB", "L", "RGBA", "I;16", "F", "P", "1", "CMYK"])),
    st.sampled_from(["no/such/file.png", 3, None]),
)


@fuzz(1500)
@given(images=st.one_of(picture, st.lists(picture, max_size=3)), text=prompt)
def test_processor_image_fuzz(processor, images, text):
    inputs = documented_or_result(processor, images=images, text=text)
    if inputs is not None and "pixel_values" in inputs:
        assert inputs["pixel_values"].shape[0] == len(inputs["image_sizes"]) == len(inputs["text_labels"])
        assert torch.isfinite(inputs["pixel_values"]).all()


@pytest.fixture(scope="module")
def batches(processor):
    images = [Image.new("RGB", (40, 30)), Image.new("RGB", (20, 60))]
    return [processor(images=images[0], text=["cat", "dog"]),
            processor(images=images, text=["a cat", ["dog", "bird", "fish"]]),
            processor(images=images, text=["a man and a woman", "tree"], phrases=[["a man", "a woman"], None])]


size_entry = st.one_of(st.integers(-5, 500), st.floats(allow_nan=True), st.booleans(), any_text)
target_sizes = st.one_of(
    st.none(), st.lists(size_entry, max_size=3), st.lists(st.lists(size_entry, max_size=3), max_size=3),
    st.lists(st.lists(st.integers(1, 500), min_size=2, max_size=2), min_size=1, max_size=2),
    st.integers(), any_text,
)
probability = st.one_of(st.floats(), st.integers(-2, 2), st.booleans(), st.none(), any_text)


@fuzz(2500)
@given(data=st.data(), sizes=target_sizes, threshold=probability, candidate=probability,
       rows=st.one_of(st.none(), st.integers(1, 4)), length=st.one_of(st.none(), st.integers(1, 12)),
       corrupt=st.sampled_from([None, math.nan, math.inf, -math.inf]))
def test_post_processing_fuzz(batches, processor, data, sizes, threshold, candidate, rows, length, corrupt):
    inputs = batches[data.draw(st.integers(0, len(batches) - 1))]
    rows = inputs["input_ids"].shape[0] if rows is None else rows
    length = inputs["input_ids"].shape[1] if length is None else length
    levels = data.draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=3))
    anchors = sum(h * w for h, w in levels)
    generator = torch.Generator().manual_seed(rows * 100 + length)
    corners = torch.rand(rows, anchors, 2, generator=generator) * 80
    outputs = SimpleNamespace(
        logits=torch.randn(rows, anchors, length, generator=generator) * 3,
        centerness=torch.randn(rows, anchors, generator=generator),
        pred_boxes=torch.cat((corners, corners + torch.rand(rows, anchors, 2, generator=generator) * 30), -1),
        spatial_shapes=torch.tensor(levels),
    )
    if corrupt is not None:
        outputs.logits[0, 0, 0] = corrupt
    kwargs = {"threshold": threshold} if threshold is not None else {}
    results = documented_or_result(processor.post_process_grounded_object_detection, outputs, inputs,
                                   target_sizes=sizes, candidate_threshold=candidate, **kwargs)
    if results is not None:
        assert len(results) == len(inputs["image_sizes"])
        for result, names in zip(results, inputs["text_labels"]):
            assert torch.isfinite(result["boxes"]).all() and (result["boxes"] >= 0).all()
            assert ((result["scores"] >= 0) & (result["scores"] <= 1)).all()
            assert all(0 <= label < len(names) for label in result["labels"].tolist())


argument = st.one_of(
    st.sampled_from(["detect", "--model", "--image", "--prompt", "--threshold", "--output-dir", "--device", "-h",
                     "nan", "inf", "-1", "0.5", "1", "2", "cpu", "cuda", "cuda:7", "meta", "mps", "x.png", ".", "",
                     "a/x.png", "b/x.png", "a/x.jpg"]),
    st.text(st.characters(), max_size=8),
)


@fuzz(3500)
@given(argv=st.lists(argument, max_size=12))
def test_cli_argument_fuzz(argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_info:
            assert exit_info.code in (0, 2)  # --help, or argparse's one-line usage error
            return
    assert 0.0 <= args.threshold <= 1.0
    for check in (lambda: check_device(args.device), lambda: output_stems(args.image, args.output_dir)):
        try:
            check()
        except CliError as error:
            assert str(error).strip()
