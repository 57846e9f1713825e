"""Model cards written by `save_pretrained` and the converter, and the converter's Hub upload without a network."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, bert_vocab_text_config, require_reference, tiny_config
from huggingface_hub import ModelCard

from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.model_card_glip import CARD_MARKER, RELEASED_VARIANTS, write_model_card
from glip_hf.processing_glip import load_tokenizer


def _tiny_folder(folder):
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config(text_config=bert_vocab_text_config())).eval()
    model.save_pretrained(folder)
    GlipProcessor(GlipImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}), load_tokenizer(),
                  candidate_threshold=0.0).save_pretrained(folder)
    return model


def test_save_pretrained_writes_a_card_with_hub_metadata_whose_snippet_runs(tmp_path):
    from PIL import Image

    model = _tiny_folder(tmp_path / "tiny-glip")
    card = ModelCard.load(tmp_path / "tiny-glip" / "README.md")
    assert card.data.pipeline_tag == "zero-shot-object-detection"
    assert card.data.library_name == "transformers"
    assert {"glip", "zero-shot-object-detection"} <= set(card.data.tags)
    assert f"{model.num_parameters():,} parameters" in card.text
    (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert 'from_pretrained("tiny-glip")' in snippet
    Image.new("RGB", (150, 130), (30, 120, 200)).save(tmp_path / "your_image.jpg")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensor(" in result.stdout


def test_a_readme_of_the_users_is_never_replaced(tmp_path):
    (tmp_path / "README.md").write_text("# my notes\n")
    _tiny_folder(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my notes\n"


def test_released_variant_card_states_data_licence_and_source(tmp_path):
    config = tiny_config()
    repo_id = "someone/glip-t-c"  # only written into the card's text; nothing is loaded from the Hub
    write_model_card(tmp_path, config, model_id=repo_id, variant="glip-t-c", parameters=123)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "mit"
    variant = RELEASED_VARIANTS["glip-t-c"]
    assert variant.title in card.text and variant.pretraining_data in card.text and variant.checkpoint in card.text
    assert f'from_pretrained("{repo_id}")' in card.text
    assert CARD_MARKER in card.text


def test_converter_writes_the_card(converted_reference_dir):
    card = ModelCard.load(converted_reference_dir / "README.md")
    assert card.data.pipeline_tag == "zero-shot-object-detection"
    assert "Parity with the original code" in card.text


def _convert(tmp_path, extra, environment):
    folder = require_reference("glip_tiny_random/original_checkpoint.pth") / "glip_tiny_random"
    command = [sys.executable, str(REPO_ROOT / "convert" / "convert_glip_to_hf.py"),
               "--checkpoint", str(folder / "original_checkpoint.pth"), "--config", str(folder / "original_config.yaml"),
               "--text-config", str(folder / "bert_config.json"), "--output-dir", str(tmp_path / "out"), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=300,
                          env={**os.environ, **environment})


def test_push_without_a_token_stops_before_converting(tmp_path):
    result = _convert(tmp_path, ["--push-to-hub", "someone/glip"],
                      {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home")})
    assert result.returncode == 2
    assert "no Hugging Face token" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("environment", [{"HF_HUB_OFFLINE": "1"}], ids=["offline"])
def test_push_without_a_network_keeps_the_folder_and_says_nothing_was_committed(tmp_path, environment):
    result = _convert(tmp_path, ["--push-to-hub", "someone/glip"],
                      {"HF_TOKEN": "hf_not_a_real_token", "HF_HOME": str(tmp_path / "hf-home"), **environment})
    assert result.returncode == 1
    assert "could not upload" in result.stderr and "nothing was committed" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "README.md").is_file()
