"""`glip-hf label`: a tiny random teacher labels a generated folder and generated `datasets` datasets; the output
trains through examples/finetune.py; two processes equal one; a killed run resumes without loss or duplicates;
corrupt images are reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, bert_vocab_text_config, tiny_config
from PIL import Image, ImageDraw

from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.labelling_glip import LabelRun, dataset_items, folder_items, label_corpus
from glip_hf.labelling_policy_glip import LabelPolicy, apply_policy
from glip_hf.processing_glip import load_tokenizer

CLASSES = ["red square", "blue circle"]
SIZES = [(128, 128), (128, 96), (96, 128), (128, 128), (112, 128), (128, 128), (96, 96)]


def shape_image(rng, width, height):
    image = Image.fromarray(rng.integers(90, 160, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(20, 45))
    x, y = (int(v) for v in rng.integers(0, min(width, height) - extent, 2))
    draw.rectangle((x, y, x + extent, y + extent), fill=(220, 40, 40))
    draw.ellipse((width - extent - 2, height - extent - 2, width - 2, height - 2), fill=(40, 60, 220))
    return image


def write_folder(root):
    """Images of several sizes in two sub-folders, one file that is no image and one truncated PNG."""
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(SIZES):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shape_image(rng, width, height).save(folder / f"{index}.png")
    (root / "a" / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    truncated = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config(text_config=bert_vocab_text_config(), anchor_sizes=[32, 64, 128, 256, 512]))
    with torch.no_grad():  # the focal prior (0.01) would keep an untrained head below every threshold
        for name, parameter in model.named_parameters():
            if name.endswith("logit_bias"):
                parameter.zero_()
    model.eval().save_pretrained(root / "model")
    processor = GlipProcessor(GlipImageProcessor(size={"shortest_edge": 160, "longest_edge": 224}), load_tokenizer(),
                              max_text_len=32)
    processor.save_pretrained(root / "model")
    return model, processor, root / "model"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def labelled(teacher, folder, tmp_path_factory):
    """The folder labelled once, shared by the tests that only read the output."""
    output = tmp_path_factory.mktemp("labelled") / "labels"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command-line processes of test_two_processes_equal_one, for equal rounding
    try:
        return output, label_corpus(make_run(teacher, output), folder_items(folder), "folder")
    finally:
        torch.set_num_threads(threads)


# Random weights without the prior score phrases near 0.5: a low threshold and a few boxes per image keep files small.
POLICY = LabelPolicy(threshold=0.2, max_boxes_per_image=4)


def make_run(teacher, output, **overrides):
    model, processor, _ = teacher
    options = dict(model=model, processor=processor, output=output, classes=CLASSES, policy=POLICY, batch_size=2,
                   shard_size=3, progress=False, extractor=None)
    options.update(overrides)
    return LabelRun(**options)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_folder_labels_odvg_coco_manifest_and_errors(folder, labelled):
    output, summary = labelled
    assert (summary.labelled, summary.failed, summary.skipped) == (len(SIZES), 2, 0) and summary.finalised
    records = lines(output / "labels.odvg.jsonl")
    assert [r["filename"] for r in records] == [item.filename for item in folder_items(folder)
                                                if "not_an" not in item.filename and "truncated" not in item.filename]
    for record in records:
        with Image.open(folder / record["filename"]) as image:
            assert (record["width"], record["height"]) == image.size
        instances = record["detection"]["instances"]
        assert 0 < len(instances) <= 4
        assert [i["score"] for i in instances] == sorted((i["score"] for i in instances), reverse=True)
        for instance in instances:
            assert instance["category"] == CLASSES[instance["label"]] and instance["score"] > 0.2
            x1, y1, x2, y2 = instance["bbox"]
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
    errors = lines(output / "errors.jsonl")
    assert {e["image"] for e in errors} == {"a/not_an_image.jpg", "b/truncated.png"}
    assert all(e["reason"] for e in errors)
    from pycocotools.coco import COCO

    coco = COCO(str(output / "coco.json"))
    assert len(coco.getImgIds()) == len(records) and len(coco.getAnnIds()) == summary.boxes
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["prompt"] == {"classes": CLASSES} and manifest["policy"]["threshold"] == 0.2
    assert manifest["glip_hf_version"]
    summary_file = json.loads((output / "summary.json").read_text())
    assert summary_file == {"images_labelled": len(SIZES), "boxes": summary.boxes, "images_failed": 2, "shards": 3}


def test_one_image_batches_equal_the_processor_path(teacher, folder, tmp_path):
    model, processor, _ = teacher
    output = tmp_path / "labels"
    label_corpus(make_run(teacher, output, batch_size=1), folder_items(folder / "a"), "folder")
    folder = folder / "a"
    record = lines(output / "labels.odvg.jsonl")[1]
    with Image.open(folder / record["filename"]) as image:
        image = image.convert("RGB")
    inputs = processor(images=image, text=CLASSES)
    with torch.no_grad():
        outputs = model(**{k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_mask", "input_ids",
                                                                     "attention_mask", "image_index")})
    processor.detections_per_image, kept = 0, processor.detections_per_image
    result = processor.post_process_grounded_object_detection(outputs, inputs, threshold=0.2)[0]
    processor.detections_per_image = kept
    expected = apply_policy(result, POLICY, CLASSES)
    found = record["detection"]["instances"]
    assert [i["label"] for i in found] == expected["labels"].tolist()
    torch.testing.assert_close(torch.tensor([i["score"] for i in found]), expected["scores"], atol=1e-4, rtol=0)
    exclusive = expected["boxes"] + torch.tensor([0, 0, 1, 1])
    exclusive = torch.minimum(exclusive, torch.tensor([image.width, image.height] * 2, dtype=exclusive.dtype))
    torch.testing.assert_close(torch.tensor([i["bbox"] for i in found]), exclusive, atol=6e-3, rtol=0)


def test_a_class_prompt_goes_through_the_text_tower_once(teacher, folder, labelled, tmp_path, monkeypatch):
    model, _, _ = teacher
    calls = []
    original = type(model.model).encode_text

    def counted(self, input_ids, *args, **kwargs):
        calls.append(input_ids.shape[0])
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(model.model), "encode_text", counted)
    output = tmp_path / "labels"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `labelled`, for equal rounding
    try:
        summary = label_corpus(make_run(teacher, output), folder_items(folder), "folder")
    finally:
        torch.set_num_threads(threads)
    # Three shards in batches of 2 images: the one-row class prompt goes through the text tower once for the run.
    assert len(summary.shards_written) == 3 and calls == [1]
    assert lines(output / "labels.odvg.jsonl") == lines(labelled[0] / "labels.odvg.jsonl")


def test_kill_and_rerun_loses_and_duplicates_nothing(teacher, folder, labelled, tmp_path, monkeypatch):
    straight = labelled[0]
    interrupted = tmp_path / "interrupted"
    from glip_hf import labelling_batch_glip

    original, calls = labelling_batch_glip.ShardLabeller._label_batch, []

    def dies_in_the_second_shard(self, batch, errors):
        calls.append(len(batch))
        if len(calls) == 3:  # shard 0 took two batches; the kill comes inside shard 1
            raise KeyboardInterrupt
        return original(self, batch, errors)

    monkeypatch.setattr(labelling_batch_glip.ShardLabeller, "_label_batch", dies_in_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        label_corpus(make_run(teacher, interrupted), folder_items(folder), "folder")
    monkeypatch.setattr(labelling_batch_glip.ShardLabeller, "_label_batch", original)
    assert sorted(p.name for p in (interrupted / "shards").iterdir()) == ["errors-00000.jsonl", "shard-00000.jsonl"]
    (interrupted / "shards" / ".shard-00001.jsonl.killed.tmp").write_text('{"half": ')  # what a SIGKILL leaves
    summary = label_corpus(make_run(teacher, interrupted), folder_items(folder), "folder")
    assert summary.skipped == 3 and summary.labelled + summary.failed == len(SIZES) + 2 - 3
    assert summary.shards_written == [1, 2]
    assert (interrupted / "labels.odvg.jsonl").read_text() == (straight / "labels.odvg.jsonl").read_text()
    assert (interrupted / "errors.jsonl").read_text() == (straight / "errors.jsonl").read_text()


def test_two_processes_equal_one(teacher, folder, labelled, tmp_path):
    _, _, model_dir = teacher
    command = [sys.executable, "-m", "glip_hf.cli", "label", "--model", str(model_dir), "--images", str(folder),
               "--classes", ". ".join(CLASSES), "--output", str(tmp_path / "two"), "--threshold", "0.2",
               "--max-boxes", "4", "--batch-size", "2", "--shard-size", "3"]
    environment = dict(os.environ, OMP_NUM_THREADS="1", WORLD_SIZE="2")
    workers = [subprocess.Popen(command, env=dict(environment, RANK=str(rank)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    # Shards 0 and 2 (4 + 1 readable images) went to process 0, shard 1 (2 readable, 1 corrupt) to process 1.
    assert "labelled 5 image(s)" in outputs[0][0] and "labelled 2 image(s)" in outputs[1][0]
    assert "failed 1" in outputs[0][0] and "failed 1" in outputs[1][0]
    one = labelled[0]
    for name in ("labels.odvg.jsonl", "coco.json", "errors.jsonl", "summary.json"):
        assert (tmp_path / "two" / name).read_text() == (one / name).read_text(), name


def write_dataset(root, with_bytes: bool):
    """A parquet dataset with image bytes and captions, or an imagefolder."""
    import datasets

    rng = np.random.default_rng(1)
    images = [shape_image(rng, w, h) for w, h in SIZES[:4]]
    captions = ["a red square next to a blue circle", "a blue circle on grey noise", "", "a small red square"]
    if with_bytes:
        dataset = datasets.Dataset.from_dict({"image": images, "caption": captions},
                                             features=datasets.Features({"image": datasets.Image(),
                                                                         "caption": datasets.Value("string")}))
        path = root / "pairs.parquet"
        dataset.to_parquet(str(path))
        return path
    folder = root / "imagefolder" / "train"
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(folder / f"{index}.png")
    return root / "imagefolder"


def test_parquet_captions_are_grounded_by_their_noun_phrases(teacher, tmp_path):
    path = write_dataset(tmp_path, with_bytes=True)
    output = tmp_path / "labels"
    run = make_run(teacher, output, classes=None, extractor="perceptron")
    summary = label_corpus(run, dataset_items(str(path), caption_column="caption"), "parquet")
    assert (summary.labelled, summary.failed) == (3, 1)
    assert lines(output / "errors.jsonl")[0]["reason"] == "empty caption"
    records = lines(output / "labels.odvg.jsonl")
    assert not (output / "coco.json").exists()
    for record in records:
        caption = record["grounding"]["caption"]
        assert os.path.isfile(record["filename"]) and record["filename"].startswith(str(output))
        for region in record["grounding"]["regions"]:
            (start, end), = region["tokens_positive"]
            assert caption[start:end] == region["phrase"]
    phrases = {region["phrase"] for region in records[0]["grounding"]["regions"]}
    assert phrases <= {"a red square", "a blue circle"} and phrases


def test_imagefolder_dataset_matches_the_folder(teacher, tmp_path):
    root = write_dataset(tmp_path, with_bytes=False)
    from_dataset, from_folder = tmp_path / "dataset", tmp_path / "folder"
    label_corpus(make_run(teacher, from_dataset), dataset_items(str(root)), "imagefolder")
    label_corpus(make_run(teacher, from_folder), folder_items(root), "folder")
    dataset_records, folder_records = lines(from_dataset / "labels.odvg.jsonl"), lines(from_folder / "labels.odvg.jsonl")
    assert [os.path.basename(r["filename"]) for r in dataset_records] == ["0.png", "1.png", "2.png", "3.png"]
    assert [r["detection"] for r in dataset_records] == [r["detection"] for r in folder_records]


def test_labels_train_through_finetune(teacher, folder, labelled, tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    import finetune

    _, _, model_dir = teacher
    output = labelled[0]
    metrics = finetune.main([
        "--model_name_or_path", str(model_dir), "--train_annotations", str(output / "labels.odvg.jsonl"),
        "--train_images", str(folder), "--data_format", "odvg", "--output_dir", str(tmp_path / "student"),
        "--min_sizes", "160", "--max_size", "224", "--per_device_train_batch_size", "2", "--max_steps", "2",
        "--logging_steps", "1", "--num_negatives", "1", "--report_to", "none", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0",
    ])
    losses = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(np.isfinite(losses)) and (tmp_path / "student" / "model.safetensors").is_file()


def test_a_folder_of_other_files_or_another_prompt_is_refused(teacher, folder, labelled, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        label_corpus(make_run(teacher, foreign), folder_items(folder), "folder")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"] and (foreign / "notes.txt").read_text() == "mine"
    before = sorted(p.name for p in labelled[0].iterdir())
    with pytest.raises(ValueError, match="another prompt"):
        label_corpus(make_run(teacher, labelled[0], classes=["tree"]), folder_items(folder), "folder")
    assert sorted(p.name for p in labelled[0].iterdir()) == before
    with pytest.raises(ValueError, match="not among the classes"):
        label_corpus(make_run(teacher, tmp_path / "x", policy=LabelPolicy(class_thresholds={"tree": 0.3})),
                     folder_items(folder), "folder")


def test_cli_errors_are_one_line(teacher, folder, tmp_path, capsys):
    from glip_hf import cli

    _, _, model_dir = teacher
    base = ["label", "--model", str(model_dir), "--output", str(tmp_path / "o")]
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text('{"tree": "high"}')
    cases = [
        (["--images", str(tmp_path / "missing"), "--classes", "tree"], "is not a folder"),
        (["--images", str(folder), "--classes", " . "], "no class name"),
        (["--images", str(folder), "--caption-column", "caption"], "needs --dataset"),
        (["--images", str(folder), "--classes", "tree", "--thresholds-file", str(thresholds)], "JSON object"),
        (["--dataset", str(tmp_path / "missing.parquet"), "--classes", "tree"], "missing.parquet"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(base + extra)
        assert str(exit_info.value.code).startswith("error: ") and message in str(exit_info.value.code)
        assert "\n" not in str(exit_info.value.code)
    assert not (tmp_path / "o").exists()
