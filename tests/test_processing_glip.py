"""End-to-end detection on the converted reference model: processor, post-processing parity with the original,
long class lists in chunks, mixed-prompt batches, Auto classes and remote code, the pipeline and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, require_reference
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    pipeline,
)

from glip_hf import (
    GlipConfig, GlipForGrounding, GlipImageProcessor, GlipImageProcessorFast, GlipModel, GlipProcessor,
)
from glip_hf.postprocessing_glip import phrase_scores, post_process_grounding

DET_NAMES = ["person", "helmet", "flag", "space_shuttle", "name tag"]
GROUNDING_CAPTION = "a woman in an orange space suit next to a helmet and a space shuttle."
GROUNDING_PHRASES = ["a woman", "a helmet", "a space shuttle"]


@pytest.fixture(scope="module")
def glip(converted_reference_dir):
    model = GlipForGrounding.from_pretrained(converted_reference_dir).eval()
    return model, GlipProcessor.from_pretrained(converted_reference_dir)


@pytest.fixture(scope="module")
def reference_data():
    root = require_reference("glip_tiny_random/outputs.safetensors")
    folder = root / "glip_tiny_random"
    return load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


def _sorted(boxes, scores, labels):
    order = torch.argsort(scores, descending=True, stable=True)
    return boxes[order], scores[order], labels[order]


def _assert_same_detections(result, outputs, caption):
    """Same labels, scores within 1e-4, boxes within 0.01 px, compared as sorted sets (the original's order is
    implementation-defined)."""
    ours = _sorted(result["boxes"], result["scores"], result["labels"] + 1)  # the original's labels are 1-based
    theirs = _sorted(outputs[f"{caption}.detections.boxes"], outputs[f"{caption}.detections.scores"],
                     outputs[f"{caption}.detections.labels"])
    assert len(ours[1]) == len(theirs[1])
    assert torch.equal(ours[2], theirs[2])
    assert (ours[1] - theirs[1]).abs().max() < 1e-4
    assert (ours[0] - theirs[0]).abs().max() < 1e-2


def _run(model, processor, image, text, phrases=None, threshold=0.0):
    inputs = processor(images=image, text=text, phrases=phrases)
    with torch.no_grad():
        outputs = model(**inputs)
    return inputs, outputs, processor.post_process_grounded_object_detection(outputs, inputs, threshold=threshold)


@pytest.mark.parametrize("caption", ["det", "grounding"])
def test_post_processing_reproduces_the_original_detections(glip, reference_data, caption):
    model, _ = glip
    inputs, outputs = reference_data
    with torch.no_grad():
        result = model(inputs["images.tensors"].flip(1), inputs[f"{caption}.input_ids"],
                       inputs[f"{caption}.attention_mask"])
    scores = phrase_scores(result.logits, inputs[f"{caption}.positive_map_binary"])
    detections = post_process_grounding(
        scores, result.centerness, result.pred_boxes, result.spatial_shapes, torch.tensor([[300, 300]]),
        target_sizes=torch.tensor([[512, 512]]),
    )[0]
    _assert_same_detections(detections, outputs, caption)


def test_processor_path_reproduces_the_original_detections(glip, reference_data, astronaut_image):
    model, processor = glip
    inputs, outputs = reference_data
    det_inputs, _, det = _run(model, processor, astronaut_image, DET_NAMES)
    assert det_inputs["input_ids"][0].tolist() == inputs["det.input_ids"][0, :13].tolist()
    assert det_inputs["image_sizes"].tolist() == [[300, 300]] and det_inputs["pixel_values"].shape[-2:] == (320, 320)
    _assert_same_detections(det[0], outputs, "det")
    assert det[0]["text_labels"][0] in {"person", "helmet", "flag", "space shuttle", "name tag"}
    _, _, grounding = _run(model, processor, astronaut_image, GROUNDING_CAPTION, GROUNDING_PHRASES)
    _assert_same_detections(grounding[0], outputs, "grounding")


def test_threshold_keeps_only_higher_scores(glip, astronaut_image):
    model, processor = glip
    _, _, (everything,) = _run(model, processor, astronaut_image, DET_NAMES)
    cut = float(everything["scores"].median())
    _, _, (kept,) = _run(model, processor, astronaut_image, DET_NAMES, threshold=cut)
    assert 0 < len(kept["scores"]) < len(everything["scores"]) and bool((kept["scores"] > cut).all())
    assert len(kept["text_labels"]) == len(kept["labels"])


def _relative_error(ours, theirs):
    return ((ours - theirs).norm() / theirs.norm()).item()


def test_long_class_lists_are_chunked_with_one_vision_pass(glip, astronaut_image):
    model, processor = glip
    names = DET_NAMES + ["rocket", "glove", "sky", "badge", "microphone", "window", "suit"]
    processor.max_text_len, processor.detections_per_image = 16, 10_000
    try:
        inputs = processor(images=astronaut_image, text=names)
        rows = inputs["input_ids"].shape[0]
        assert rows > 1 and inputs["image_index"].tolist() == [0] * rows
        calls = []
        hook = model.model.vision_backbone.register_forward_hook(lambda *args: calls.append(1))
        with torch.no_grad():
            outputs = model(**inputs)
        hook.remove()
        assert len(calls) == 1 and outputs.logits.shape[0] == rows
        merged = processor.post_process_grounded_object_detection(outputs, inputs)[0]

        by_hand = []
        for row in range(rows):
            # The chunk's own prompt, tokenised alone, is the row's caption.
            chunk = [names[i] for i in inputs["label_ids"][row].tolist() if i >= 0]
            alone = processor(text=chunk)
            length = alone["input_ids"].shape[1]
            assert inputs["input_ids"][row, :length].tolist() == alone["input_ids"][0].tolist()
            # Running the row by hand gives the same outputs (float32 rounding of the batched kernels aside).
            with torch.no_grad():
                single = model(inputs["pixel_values"], inputs["input_ids"][row:row + 1],
                               inputs["attention_mask"][row:row + 1])
            assert _relative_error(outputs.logits[row], single.logits[0]) < 1e-4
            assert _relative_error(outputs.pred_boxes[row], single.pred_boxes[0]) < 1e-4
            # Post-processing the row alone and shifting its labels gives the merged detections of that chunk.
            (part,) = post_process_grounding(
                phrase_scores(outputs.logits[row:row + 1], inputs["token_maps"][row:row + 1]),
                outputs.centerness[row:row + 1], outputs.pred_boxes[row:row + 1], outputs.spatial_shapes,
                inputs["image_sizes"], inputs["original_sizes"], label_ids=inputs["label_ids"][row:row + 1],
                detections_per_image=10_000,
            )
            by_hand.append((part["boxes"], part["scores"], part["labels"]))
        hand = _sorted(*(torch.cat(parts) for parts in zip(*by_hand)))
        ours = _sorted(merged["boxes"], merged["scores"], merged["labels"])
        assert torch.equal(ours[2], hand[2]) and torch.equal(ours[1], hand[1]) and torch.equal(ours[0], hand[0])
        cleaned = [name.replace("_", " ") for name in names]
        assert merged["text_labels"] == [cleaned[i] for i in merged["labels"].tolist()]
    finally:
        processor.max_text_len, processor.detections_per_image = 256, 100


def test_mixed_prompt_batch_equals_single_runs(glip, astronaut_image):
    model, processor = glip
    flipped = astronaut_image.transpose(0)  # same size, so the padded canvas is the same as alone
    prompts = [DET_NAMES[:3], GROUNDING_CAPTION]
    phrases = [None, GROUNDING_PHRASES]
    inputs = processor(images=[astronaut_image, flipped], text=prompts, phrases=phrases)
    with torch.no_grad():
        outputs = model(**inputs)
    batch = processor.post_process_grounded_object_detection(outputs, inputs, threshold=0.0)
    for image, prompt, phrase_list, result in zip([astronaut_image, flipped], prompts, phrases, batch):
        _, _, (single,) = _run(model, processor, image, prompt, phrase_list)
        ours, alone = _sorted(result["boxes"], result["scores"], result["labels"]), _sorted(
            single["boxes"], single["scores"], single["labels"])
        assert torch.equal(ours[2], alone[2])
        torch.testing.assert_close(ours[1], alone[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours[0], alone[0], atol=1e-2, rtol=0)
    assert batch[1]["text_labels"] and set(batch[1]["text_labels"]) <= set(GROUNDING_PHRASES)


def test_auto_classes_resolve_glip(converted_reference_dir):
    assert isinstance(AutoConfig.from_pretrained(converted_reference_dir), GlipConfig)
    assert isinstance(AutoModel.from_pretrained(converted_reference_dir), GlipModel)
    assert isinstance(AutoModelForZeroShotObjectDetection.from_pretrained(converted_reference_dir), GlipForGrounding)
    assert isinstance(AutoProcessor.from_pretrained(converted_reference_dir), GlipProcessor)
    # Each backend has its class; the processor keeps the bit-exact PIL one unless another backend is asked for.
    exact = AutoImageProcessor.from_pretrained(converted_reference_dir, backend="pil")
    fast = AutoImageProcessor.from_pretrained(converted_reference_dir, backend="torchvision")
    assert type(exact) is GlipImageProcessor and type(fast) is GlipImageProcessorFast
    assert dict(fast.size) == dict(exact.size) and fast.size_divisibility == exact.size_divisibility
    assert type(AutoProcessor.from_pretrained(converted_reference_dir).image_processor) is GlipImageProcessor
    loaded = AutoProcessor.from_pretrained(converted_reference_dir, backend="torchvision")
    assert type(loaded.image_processor) is GlipImageProcessorFast


REMOTE_CODE_SCRIPT = """
import sys, json
sys.modules["glip_hf"] = None  # make sure the package cannot be imported
import torch
from PIL import Image
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
model = AutoModelForZeroShotObjectDetection.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = processor(images=Image.open(sys.argv[2]), text=["person", "helmet", "flag"])
with torch.no_grad():
    outputs = model(**inputs)
result = processor.post_process_grounded_object_detection(outputs, inputs)[0]
print(json.dumps({"scores": result["scores"].tolist(), "labels": result["labels"].tolist()}))
"""


def test_saved_folder_loads_with_remote_code_without_the_package(glip, converted_reference_dir, astronaut_image,
                                                                  tmp_path):
    model, processor = glip
    image_path = tmp_path / "astronaut.png"
    astronaut_image.save(image_path)
    # As many threads as this process, for equal rounding.
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run([sys.executable, "-c", REMOTE_CODE_SCRIPT, str(converted_reference_dir), str(image_path)],
                            capture_output=True, text=True, check=False, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    _, _, (local,) = _run(model, processor, astronaut_image, ["person", "helmet", "flag"])
    assert remote["labels"] == local["labels"].tolist()
    torch.testing.assert_close(torch.tensor(remote["scores"]), local["scores"], atol=1e-6, rtol=0)


def test_pipeline_gives_the_processor_path_boxes(glip, converted_reference_dir, astronaut_image):
    model, processor = glip
    detector = pipeline("zero-shot-object-detection", model=str(converted_reference_dir))
    threshold = 0.2
    found = detector(astronaut_image, candidate_labels=["person", "helmet", "flag"], threshold=threshold)
    _, _, (expected,) = _run(model, processor, astronaut_image, ["person", "helmet", "flag"], threshold=threshold)
    assert len(found) == len(expected["scores"]) > 0
    order = torch.argsort(expected["scores"], descending=True, stable=True)
    for item, index in zip(found, order.tolist()):
        assert item["label"] == expected["text_labels"][index]
        assert abs(item["score"] - expected["scores"][index].item()) < 1e-6
        assert list(item["box"].values()) == expected["boxes"][index].int().tolist()


def test_cli_writes_a_picture_and_the_python_api_detections(glip, converted_reference_dir, astronaut_image, tmp_path):
    model, processor = glip
    image_path = tmp_path / "astronaut.jpg"
    astronaut_image.save(image_path, quality=95)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "glip_hf.cli", "detect", "--model", str(converted_reference_dir),
               "--image", str(image_path), "--prompt", "person. helmet. flag.", "--threshold", "0.2",
               "--output-dir", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image

    with Image.open(output / "astronaut.png") as picture:
        assert picture.size == astronaut_image.size
    written = json.loads((output / "astronaut.json").read_text())
    with Image.open(image_path) as reloaded:
        _, _, (expected,) = _run(model, processor, reloaded.convert("RGB"), "person. helmet. flag.", threshold=0.2)
    assert [d["label"] for d in written["detections"]] == expected["text_labels"]
    assert [d["score"] for d in written["detections"]] == pytest.approx(expected["scores"].tolist(), abs=1e-5)
    for detection, box in zip(written["detections"], expected["boxes"].tolist()):
        assert detection["box"] == pytest.approx(box, abs=0.01)


@pytest.mark.parametrize("arguments, message", [
    (["--model", "MISSING", "--prompt", "person."], "not a GLIP model folder"),
    (["--prompt", " . "], "prompt is empty"),
    (["--prompt", "person.", "--image", "NOT_AN_IMAGE"], "cannot read an image"),
])
def test_cli_explains_bad_input(converted_reference_dir, astronaut_image, tmp_path, arguments, message):
    image_path = tmp_path / "a.png"
    astronaut_image.save(image_path)
    defaults = {"--model": str(converted_reference_dir), "--image": str(image_path), "--prompt": "person."}
    options = dict(zip(arguments[::2], arguments[1::2]))
    options = {key: options.get(key, value) for key, value in defaults.items()}
    if options["--model"] == "MISSING":
        options["--model"] = str(tmp_path / "missing")
    if options["--image"] == "NOT_AN_IMAGE":
        (tmp_path / "bad.jpg").write_text("not an image")
        options["--image"] = str(tmp_path / "bad.jpg")
    command = [sys.executable, "-m", "glip_hf.cli", "detect", "--output-dir", str(tmp_path / "out")]
    for key, value in options.items():
        command += [key, value]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and message in result.stderr


ADJECTIVES = ["red", "blue", "green", "small", "large", "old", "new", "wooden", "metal", "plastic", "striped",
              "round", "square", "tall", "short", "bright", "dark", "heavy", "light", "soft", "hard", "wet", "dry",
              "hot", "cold", "empty", "full", "open", "closed", "broken", "clean", "dirty", "quiet", "loud", "young",
              "white", "black", "yellow", "purple", "orange"]
NOUNS = ["cup", "chair", "table", "lamp", "door", "window", "bottle", "bag", "shoe", "hat", "coat", "box", "ball",
         "car", "truck", "boat", "bird", "dog", "cat", "horse", "tree", "flower", "book", "phone", "clock", "bench",
         "fence", "sign", "kite", "bowl", "spoon"]


def test_an_lvis_size_vocabulary_runs_in_chunks_with_global_labels(glip, astronaut_image):
    model, processor = glip
    names = [f"{adjective} {noun}" for adjective in ADJECTIVES for noun in NOUNS][:1203]
    inputs = processor(images=astronaut_image, text=names)
    rows = inputs["input_ids"].shape[0]
    assert inputs["input_ids"].shape[1] <= 256
    # About 3 tokens per name with its separator: the rows are as full as greedy packing allows.
    assert rows == len(processor.chunk_class_names(names)) and rows <= -(-3 * len(names) // 254) + 1
    with torch.no_grad():
        outputs = model(**inputs)
    (result,) = processor.post_process_grounded_object_detection(outputs, inputs)
    assert len(result["labels"]) == processor.detections_per_image
    assert int(result["labels"].max()) < len(names) and result["labels"].unique().numel() > 1
    assert result["text_labels"] == [names[i] for i in result["labels"].tolist()]
