"""Training: loss parity with the original, gradient flow per transfer mode, images without boxes, and a real
learning check (a tiny model overfits generated images)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import bert_vocab_text_config, require_reference, tiny_config
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import BertConfig

from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.conversion_glip import convert_checkpoint
from glip_hf.processing_glip import load_tokenizer
from glip_hf.training_glip import LINEAR_PROBE_PARAMETERS, parameter_groups, set_transfer_mode


@pytest.fixture(scope="module")
def reference_loss():
    root = require_reference("glip_tiny_random/loss.safetensors")
    folder = root / "glip_tiny_random"
    model = convert_checkpoint(folder / "original_checkpoint.pth", folder / "original_config.yaml",
                               BertConfig.from_json_file(str(folder / "bert_config.json")))
    return model, load_file(folder / "inputs.safetensors"), load_file(folder / "loss.safetensors")


def _reference_labels(loss):
    return [{"boxes": loss["loss.gt_boxes_xyxy_resized"], "token_map": loss["loss.positive_map_binary"]}]


def test_every_loss_term_matches_the_original(reference_loss):
    model, inputs, loss = reference_loss
    with torch.no_grad():
        outputs = model(inputs["images.tensors"].flip(1), inputs["grounding.input_ids"],
                        inputs["grounding.attention_mask"], labels=_reference_labels(loss))
    for term in ("loss_dot_product_token", "loss_reg", "loss_centerness"):
        ours, theirs = outputs.loss_dict[term].item(), loss[f"loss.{term}"].item()
        assert abs(ours - theirs) / abs(theirs) < 1e-4, (term, ours, theirs)
    assert abs(outputs.loss.item() - loss["loss.total"].item()) / loss["loss.total"].item() < 1e-4
    assert int(outputs.loss_dict["num_positive_anchors"]) == int((loss["loss.atss.cls_labels"] > 0).sum())


def test_atss_assignment_matches_the_original(reference_loss):
    model, inputs, loss = reference_loss
    with torch.no_grad():
        outputs = model(inputs["images.tensors"].flip(1), inputs["grounding.input_ids"],
                        inputs["grounding.attention_mask"])
    sizes = [h * w for h, w in outputs.spatial_shapes.tolist()]
    matched, regression, tokens = model.loss_function.assign(outputs.anchors[0], sizes, _reference_labels(loss), 256)
    positive = matched[0] >= 0
    assert torch.equal(positive, loss["loss.atss.cls_labels"] > 0)
    torch.testing.assert_close(regression[0][positive], loss["loss.atss.reg_targets"][positive])
    assert torch.equal(tokens[0][positive].to(torch.uint8), loss["loss.atss.token_labels"][positive])
    # The original marks negatives on token 255, a padding token its loss masks out; ours leaves them all-zero.
    assert tokens[0][~positive].sum() == 0


def _batch(batch_size=2, size=256, boxes_per_image=(2, 0), seed=0):
    generator = torch.Generator().manual_seed(seed)
    text_length = 10
    labels = []
    for count in boxes_per_image[:batch_size]:
        corners = torch.rand(count, 2, generator=generator) * size * 0.5
        boxes = torch.cat([corners, corners + 40 + torch.rand(count, 2, generator=generator) * 60], dim=1)
        token_map = torch.zeros(count, text_length)
        for row in range(count):
            token_map[row, 1 + row] = 1
        labels.append({"boxes": boxes, "token_map": token_map})
    input_ids = torch.randint(5, 1000, (batch_size, text_length), generator=generator)
    return {"pixel_values": torch.randn(batch_size, 3, size, size, generator=generator), "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids), "labels": labels}


def _randomized_model(**overrides):
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config(**overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0, 0.05)
    return model.train()


@pytest.mark.parametrize("mode", ["full", "prompt", "linear_probe"])
def test_gradient_reaches_exactly_the_trainable_parameters(mode):
    model = _randomized_model()
    trainable = set(set_transfer_mode(model, mode))
    model.train()  # as Trainer does every step
    model.zero_grad(set_to_none=True)
    model(**_batch()).loss.backward()
    with_gradient = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_gradient == trainable
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if mode == "full":
        assert trainable == {name for name, _ in model.named_parameters()}
    elif mode == "prompt":
        assert trainable == {"model.prompt_embeddings"}
        assert float(model.model.prompt_embeddings.grad.abs().sum()) > 0
    else:
        assert trainable and all(name.startswith(LINEAR_PROBE_PARAMETERS) for name in trainable)
        assert not model.model.vision_backbone.training and not model.model.text_backbone.training


def test_text_tower_gets_its_own_learning_rate():
    model = _randomized_model()
    groups = parameter_groups(model, learning_rate=1e-4, text_learning_rate=1e-5, weight_decay=0.05)
    text_parameters = {id(p) for p in model.model.text_backbone.parameters()}
    for group in groups:
        in_text = {id(p) in text_parameters for p in group["params"]}
        assert len(in_text) == 1
        assert group["lr"] == (1e-5 if in_text.pop() else 1e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("boxes_per_image", [(2, 0), (0, 0)])
def test_images_without_boxes_train_without_nan(boxes_per_image):
    model = _randomized_model()
    outputs = model(**_batch(boxes_per_image=boxes_per_image))
    assert torch.isfinite(outputs.loss)
    assert outputs.loss_dict["loss_dot_product_token"] > 0  # negatives still teach
    if boxes_per_image == (0, 0):
        assert outputs.loss_dict["loss_reg"] == 0 and outputs.loss_dict["loss_centerness"] == 0
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_labels_must_match_the_batch():
    model = _randomized_model()
    batch = _batch()
    batch["labels"] = batch["labels"][:1]
    with pytest.raises(ValueError, match="labels has 1 entries for a batch of 2"):
        model(**batch)
    batch = _batch()
    batch["labels"][0]["token_map"] = batch["labels"][0]["token_map"][:1]
    with pytest.raises(ValueError, match="2 boxes but 1 token_map rows"):
        model(**batch)


# ----- learning check ----------------------------------------------------------------------------------------

SHAPES = {"red square": (220, 40, 40), "blue circle": (40, 60, 220)}
IMAGE_SIZE = 128


def _synthetic_image(rng, size=IMAGE_SIZE):
    """Noise background with one red square and one blue circle at random places; boxes in the original's
    inclusive pixel convention."""
    image = Image.fromarray(rng.integers(90, 160, (size, size, 3), dtype=np.uint8))
    draw, boxes = ImageDraw.Draw(image), []
    for name, colour in SHAPES.items():
        extent = int(rng.integers(size // 5, size // 2.5))
        x, y = (int(v) for v in rng.integers(0, size - extent, 2))
        box = (x, y, x + extent - 1, y + extent - 1)
        (draw.rectangle if name == "red square" else draw.ellipse)(box, fill=colour)
        boxes.append(box)
    return image, boxes


def _coco_ground_truth(samples, phrases):
    from pycocotools.coco import COCO

    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": i, "width": IMAGE_SIZE, "height": IMAGE_SIZE} for i in range(len(samples))],
        "categories": [{"id": j + 1, "name": phrase} for j, phrase in enumerate(phrases)],
        # pycocotools treats annotation id 0 as "unmatched": ids start at 1.
        "annotations": [{"id": 10 * i + j + 1, "image_id": i, "category_id": j + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "area": (x2 - x1 + 1) * (y2 - y1 + 1)}
                        for i, (_, boxes) in enumerate(samples) for j, (x1, y1, x2, y2) in enumerate(boxes)],
    }
    ground_truth.createIndex()
    return ground_truth


def test_a_tiny_model_learns_to_ground_generated_shapes():
    from glip_hf.evaluation_glip import coco_evaluate, pack_detections, packed_to_coco_results

    rng = np.random.default_rng(0)
    samples = [_synthetic_image(rng) for _ in range(4)]
    phrases = ["red square", "blue circle"]
    processor = GlipProcessor(GlipImageProcessor(size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}),
                              load_tokenizer(), max_text_len=32)
    inputs = processor(images=[image for image, _ in samples], text=["a red square and a blue circle."] * 4,
                       phrases=[phrases] * 4)
    labels = [{"boxes": torch.tensor(boxes, dtype=torch.float32), "token_map": inputs["token_maps"][i]}
              for i, (_, boxes) in enumerate(samples)]
    torch.manual_seed(0)
    text_config = bert_vocab_text_config()
    # Objects of 25-50 px on 128 px images: anchors half GLIP's default sizes.
    model = GlipForGrounding(tiny_config(text_config=text_config, anchor_sizes=[32, 64, 128, 256, 512])).train()
    steps = 200
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=steps, pct_start=0.1)
    batch = {k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    start, history = time.time(), []
    for _ in range(steps):
        outputs = model(**batch, labels=labels)
        optimizer.zero_grad()
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append({k: float(v.detach()) for k, v in outputs.loss_dict.items()})
    assert time.time() - start < 120
    # Token and box losses fall by more than an order of magnitude. The centerness BCE cannot: its targets are
    # fractions, so it is bounded below by their entropy (about 0.63 here).
    learnable = [h["loss_dot_product_token"] + h["loss_reg"] for h in history]
    assert np.mean(learnable[-5:]) < np.mean(learnable[:5]) / 10, (learnable[:5], learnable[-5:])
    assert history[-1]["loss"] < history[0]["loss"] / 4

    model.eval()
    with torch.no_grad():
        outputs = model(**batch)
    results = processor.post_process_grounded_object_detection(outputs, inputs)
    coco_results = packed_to_coco_results(pack_detections(results, 100), list(range(4)), {0: 1, 1: 2})
    metrics = coco_evaluate(_coco_ground_truth(samples, phrases), coco_results)
    assert metrics["AP"] > 0.9, metrics
