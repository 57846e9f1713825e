"""Shared test helpers: the reference fixture location and a tiny random GLIP config."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig

from glip_hf import GlipConfig, GlipForGrounding
from glip_hf.head_glip import Scale

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("GLIP_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))
# The longest test files, started first so that parallel workers (`make test` runs two) finish together.
LONGEST_FILES_FIRST = ("test_export_glip.py", "test_demo_trees.py")


def pytest_configure(config):
    """Under pytest-xdist, each worker takes its share of the cores: more threads than cores slow OpenMP down."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
        os.environ["OMP_NUM_THREADS"] = threads  # for the command-line runs the tests start
        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def free_port() -> int:
    """A TCP port nothing listens on now, for a launcher's rendezvous (parallel tests must not share one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_reference(*relative_paths: str) -> Path:
    """Path of the reference data; skip (or fail under CI=true) when a file is missing."""
    for relative in relative_paths:
        path = REFERENCE_DIR / relative
        if not path.exists():
            message = (
                f"reference fixture {path} is missing; set GLIP_REFERENCE_DIR to the folder with the original GLIP's "
                "outputs (../shared/reference)"
            )
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
    return REFERENCE_DIR


def tiny_config(**overrides) -> GlipConfig:
    """A GLIP-T-shaped model small enough for CPU tests (about 1.5M parameters)."""
    kwargs = dict(
        backbone_config=dict(
            model_type="swin", embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=7,
            drop_path_rate=0.0, out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64,
        ),
        fpn_channels=32,
        head_channels=32,
        num_dyhead_layers=2,
        fusion_embed_dim=64,
        fusion_num_heads=4,
        fusion_attention_dropout=0.0,
        group_norm_num_groups=8,
        max_text_len=32,
    )
    kwargs.update(overrides)
    return GlipConfig(**kwargs)


def randomize_weights_(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Overwrite every parameter with seeded random values (norm weights and scales around 1, the rest around 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator, dtype=param.dtype) * std
                around_one = isinstance(module, Scale) or (
                    isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and name == "weight"
                )
                param.copy_(noise + 1.0 if around_one else noise)
    return model


def build(model_class=GlipForGrounding, seed: int = 0, randomize: bool = True, **config_overrides):
    """A tiny model in eval mode with seeded (and by default randomised) weights."""
    torch.manual_seed(seed)
    model = model_class(tiny_config(**config_overrides))
    if randomize:
        randomize_weights_(model, seed=seed)
    return model.eval()


def expected_spatial_shapes(height: int, width: int) -> list[list[int]]:
    """P3 at stride 8, then every level halves with ceil (stride-2 convs with padding 1)."""
    shapes = [[height // 8, width // 8]]
    for _ in range(5 - 1):
        shapes.append([math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)])
    return shapes


@pytest.fixture
def no_network(monkeypatch):
    """Make any socket connection fail loudly, so a hidden download attempt shows up as an error."""

    def refuse(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def bert_vocab_text_config() -> BertConfig:
    """A 1-layer 32-d BERT with the full bert-base-uncased vocabulary, for tests that tokenise real text."""
    return BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64,
    )


@pytest.fixture
def tiny_glip_config() -> GlipConfig:
    return tiny_config()


def tiny_inputs(batch_size=2, height=256, width=256, text_length=12, vocab_size=1000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
    input_ids = torch.randint(5, vocab_size, (batch_size, text_length), generator=generator)
    input_ids[:, 0] = 1
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


ONNX_RTOL = 1e-4  # exported graphs against PyTorch, relative (norm of the difference over the norm)


def relative_error(ours, reference) -> float:
    """||ours - reference|| / ||reference||, in float64."""
    ours, reference = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-30))


def run_onnx(path, inputs: dict) -> list:
    """The outputs of an ONNX file run by ONNX Runtime's CPU provider on these tensors."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})


@pytest.fixture(scope="session")
def converted_reference_dir(tmp_path_factory) -> Path:
    """The reference checkpoint converted with the command-line converter into a complete folder (session-wide)."""
    import subprocess
    import sys

    root = require_reference("glip_tiny_random/original_checkpoint.pth")
    folder = root / "glip_tiny_random"
    output = tmp_path_factory.mktemp("converted") / "glip-tiny-random"
    command = [
        sys.executable, str(REPO_ROOT / "convert" / "convert_glip_to_hf.py"),
        "--checkpoint", str(folder / "original_checkpoint.pth"), "--config", str(folder / "original_config.yaml"),
        "--text-config", str(folder / "bert_config.json"), "--output-dir", str(output),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="session")
def astronaut_image():
    """The fixture's photo (skimage astronaut, 512x512 RGB) as a PIL image."""
    from PIL import Image
    from safetensors.torch import load_file

    root = require_reference("glip_tiny_random/inputs.safetensors")
    pixels = load_file(root / "glip_tiny_random" / "inputs.safetensors")["image_uint8_hwc_rgb"]
    return Image.fromarray(pixels.numpy())
