"""ODinW after `examples/finetune.py` with each transfer mode: fine-tuning evaluates with the dataset's prompt
through the `glip_detection` evaluate module, and `glip-hf evaluate --benchmark odinw` on the saved model reports
the same AP."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO_ROOT
from evaluation_data import save_tiny_model, write_coco, write_odinw

from glip_hf import cli
from glip_hf.evaluation.odinw import odinw_suite

sys.path.insert(0, str(REPO_ROOT / "examples"))
import finetune  # noqa: E402

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def odinw_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("odinw_finetune")
    pothole = next(dataset for dataset in odinw_suite("odinw_35") if dataset.name == "pothole")
    odinw = write_odinw(root / "odinw", [pothole])
    train = write_coco(root / "odinw" / pothole.train["images"], 2, seed=7, category_names=["pothole"],
                       annotation_name="annotations_without_background.json")
    return root, save_tiny_model(root / "model"), odinw, pothole, train


@pytest.mark.parametrize("mode", ["full", "prompt", "linear_probe"])
def test_finetuned_model_evaluates_on_odinw_as_during_training(odinw_workspace, tmp_path, capsys, mode):
    _, model, odinw, pothole, train = odinw_workspace
    output = tmp_path / mode
    metrics = finetune.main([
        "--model_name_or_path", str(model), "--train_annotations", str(train), "--train_images", str(train.parent),
        "--eval_annotations", str(odinw / pothole.test["annotations"]), "--eval_images",
        str(odinw / pothole.test["images"]), "--odinw_dataset", "odinw_35/pothole", "--output_dir", str(output),
        "--transfer_mode", mode, "--min_sizes", "128", "--max_size", "160", "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1", "--learning_rate", "1e-3",
        "--num_negatives", "0", "--report_to", "none", "--seed", "0", "--dataloader_num_workers", "0",
        "--disable_tqdm", "true",
    ])
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(output), "--benchmark", "odinw", "--odinw-suite", "odinw_35",
                     "--annotations", str(odinw), "--datasets", "pothole"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["evaluated"] == 1
    assert evaluated["datasets"]["pothole"]["AP50"] == pytest.approx(metrics["after"]["eval_AP50"], abs=1e-9)
    assert evaluated["AP"] == pytest.approx(metrics["after"]["eval_AP"], abs=1e-9)
