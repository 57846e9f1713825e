"""examples/finetune.py end to end on a generated COCO-format dataset: train + COCO AP evaluation, exact resume,
and a two-process `accelerate launch` run on the gloo backend."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, bert_vocab_text_config, free_port, tiny_config
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.processing_glip import load_tokenizer

sys.path.insert(0, str(REPO_ROOT / "examples"))
import finetune  # noqa: E402

SIZE = 128
CATEGORIES = [{"id": 1, "name": "red square"}, {"id": 2, "name": "blue circle"}]


def write_shapes_coco(folder, count, seed):
    """PNG images with a red square and a blue circle, and their COCO detection JSON (ids start at 1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        image = Image.fromarray(rng.integers(90, 160, (SIZE, SIZE, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for category, colour in ((1, (220, 40, 40)), (2, (40, 60, 220))):
            extent = int(rng.integers(SIZE // 5, SIZE // 2.5))
            x, y = (int(v) for v in rng.integers(0, SIZE - extent, 2))
            (draw.rectangle if category == 1 else draw.ellipse)((x, y, x + extent - 1, y + extent - 1), fill=colour)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, extent, extent], "area": extent * extent, "iscrowd": 0})
        image.save(folder / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": SIZE, "height": SIZE})
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    data = write_shapes_coco(root / "data", 6, seed=0)
    torch.manual_seed(0)
    text_config = bert_vocab_text_config()
    model = GlipForGrounding(tiny_config(text_config=text_config, anchor_sizes=[32, 64, 128, 256, 512]))
    model.save_pretrained(root / "model")
    GlipProcessor(GlipImageProcessor(size={"shortest_edge": SIZE, "longest_edge": SIZE}), load_tokenizer(),
                  max_text_len=32).save_pretrained(root / "model")
    return root, data


def arguments(root, data, output, *extra):
    return [
        "--model_name_or_path", str(root / "model"), "--train_annotations", str(data),
        "--train_images", str(data.parent), "--output_dir", str(output), "--min_sizes", str(SIZE),
        "--max_size", str(SIZE), "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
        "--learning_rate", "2e-3", "--num_negatives", "0", "--report_to", "none", "--seed", "0",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true", *extra,
    ]


def test_finetune_trains_evaluates_and_saves(workspace, tmp_path):
    root, data = workspace
    output = tmp_path / "run"
    metrics = finetune.main(arguments(
        root, data, output, "--eval_annotations", str(data), "--eval_images", str(data.parent), "--do_eval",
        "--max_steps", "6", "--logging_steps", "2", "--text_learning_rate", "1e-4", "--ema_decay", "0.9",
    ))
    for stage in ("before", "after"):
        assert {"eval_AP", "eval_AP50", "eval_AP75"} <= set(metrics[stage])
    logged = [entry for entry in metrics["log_history"] if "loss" in entry]
    assert logged and {"loss_dot_product_token", "loss_reg", "loss_centerness"} <= set(logged[0])
    written = json.loads((output / "metrics.json").read_text())
    assert written["after"]["eval_AP"] == metrics["after"]["eval_AP"]
    reloaded = GlipForGrounding.from_pretrained(output)
    assert GlipProcessor.from_pretrained(output).max_text_len == 32
    initial = GlipForGrounding.from_pretrained(root / "model")
    assert not torch.equal(reloaded.head.bbox_pred.weight, initial.head.bbox_pred.weight)


@pytest.mark.parametrize("mode", ["prompt", "linear_probe"])
def test_finetune_transfer_modes_change_only_their_parameters(workspace, tmp_path, mode):
    root, data = workspace
    finetune.main(arguments(root, data, tmp_path / mode, "--max_steps", "2", "--transfer_mode", mode))
    before = load_file(root / "model" / "model.safetensors")
    after = load_file(tmp_path / mode / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    if mode == "prompt":
        assert set(after) - set(before) == {"model.prompt_embeddings"} and not changed
    else:
        assert changed and all(name.startswith("head.") for name in changed)


def test_resume_from_checkpoint_continues_exactly(workspace, tmp_path):
    root, data = workspace
    common = ("--max_steps", "6", "--save_steps", "3", "--save_strategy", "steps", "--ema_decay", "0.9")
    finetune.main(arguments(root, data, tmp_path / "straight", *common))
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", interrupted / "checkpoint-3")
    finetune.main(arguments(root, data, interrupted, *common, "--resume_from_checkpoint",
                            str(interrupted / "checkpoint-3")))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_process_accelerate_launch(workspace, tmp_path):
    root, data = workspace
    accelerate = shutil.which("accelerate", path=str(REPO_ROOT / ".venv" / "bin")) or shutil.which(
        "accelerate", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert accelerate, "accelerate is not installed next to this Python"
    output = tmp_path / "ddp"
    # accelerate's multi-process launcher is `--multi_gpu`; without a GPU the script trains on CPU over gloo.
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO_ROOT / "examples" / "finetune.py"),
               *arguments(root, data, output, "--max_steps", "3", "--eval_annotations", str(data),
                          "--eval_images", str(data.parent), "--ddp_backend", "gloo")]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train"]["train_samples_per_second"] > 0 and "eval_AP" in metrics["after"]
    assert metrics["world_size"] == 2
