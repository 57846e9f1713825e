"""The released package: `python -m build` gives an sdist and a wheel, and the wheel alone (no source tree) runs
the Python API and `glip-hf detect` on a tiny saved model with its bundled vocabulary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, bert_vocab_text_config, tiny_config

import glip_hf
from glip_hf import GlipForGrounding, GlipImageProcessor, GlipProcessor
from glip_hf.processing_glip import load_tokenizer

VOCAB = "glip_hf/data/bert-base-uncased-vocab.txt"
SKIPPED = {".git", ".venv", ".venv-latest", "outputs", "build", "dist", ".pytest_cache", ".ruff_cache", "__pycache__"}


def _copy_sources(target: Path) -> Path:
    """The repository without virtual environments, outputs or build leftovers, so the build cannot pick them up."""
    def ignore(folder, names):
        return [name for name in names if name in SKIPPED or name.endswith(".egg-info")]

    shutil.copytree(REPO_ROOT, target, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    sources = _copy_sources(root / "src")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(root / "dist"), str(sources)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (root / "dist").glob("glip_hf-*.whl")
    (sdist,) = (root / "dist").glob("glip_hf-*.tar.gz")
    return wheel, sdist


def test_wheel_carries_the_vocabulary_and_complete_metadata(distributions):
    wheel, _ = distributions
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        vocab_lines = archive.read(VOCAB).decode().splitlines()
    assert len(vocab_lines) == 30522
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)
    assert metadata["Name"] == "glip-hf"
    assert metadata["Version"] == glip_hf.__version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    classifiers = metadata.get_all("Classifier")
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert {"train", "eval", "demo", "dev"} <= set(metadata.get_all("Provides-Extra"))
    assert any(requirement.startswith("transformers") for requirement in metadata.get_all("Requires-Dist"))


def test_sdist_carries_the_sources_licence_and_vocabulary(distributions):
    _, sdist = distributions
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "pyproject.toml", "README.md", f"src/{VOCAB}", "src/glip_hf/cli.py"} <= names


def _fresh_venv_with(wheel: Path, root: Path) -> Path:
    """A new virtual environment holding only the wheel; the heavy dependencies (torch, transformers, ...) are
    reached through a path entry to this interpreter's site-packages, whose own .pth files (the editable install of
    the source tree) are not processed from there."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    Path(site_packages, "host_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _tiny_model_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    model = GlipForGrounding(tiny_config(text_config=bert_vocab_text_config())).eval()
    processor = GlipProcessor(GlipImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}), load_tokenizer(),
                              candidate_threshold=0.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_installed_wheel_runs_the_api_and_the_cli_without_the_source_tree(distributions, tmp_path):
    from PIL import Image

    wheel, _ = distributions
    venv = _fresh_venv_with(wheel, tmp_path)
    model_dir = _tiny_model_folder(tmp_path / "tiny-glip")
    image_path = tmp_path / "photo.png"
    Image.new("RGB", (120, 90), (90, 140, 60)).save(image_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    script = textwrap.dedent(f"""
        import json, glip_hf
        from PIL import Image
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        model = AutoModelForZeroShotObjectDetection.from_pretrained({str(model_dir)!r}).eval()
        processor = AutoProcessor.from_pretrained({str(model_dir)!r})
        inputs = processor(images=Image.open({str(image_path)!r}), text=["tree", "house"])
        results = processor.post_process_grounded_object_detection(model(**inputs), inputs, threshold=0.0)
        print(json.dumps({{"file": glip_hf.__file__, "version": glip_hf.__version__,
                          "vocab": processor.tokenizer.vocab_size, "found": len(results[0]["scores"])}}))
    """)
    api = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=work, env=environment,
                         capture_output=True, text=True, check=False)
    assert api.returncode == 0, api.stderr[-3000:]
    report = json.loads(api.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(venv), report["file"]
    assert report["version"] == glip_hf.__version__ and report["vocab"] == 30522
    assert report["found"] > 0

    version = subprocess.run([str(venv / "bin" / "glip-hf"), "--version"], cwd=work, env=environment,
                             capture_output=True, text=True, check=False)
    assert version.stdout.strip() == f"glip-hf {glip_hf.__version__}"
    detect = subprocess.run(
        [str(venv / "bin" / "glip-hf"), "detect", "--model", str(model_dir), "--image", str(image_path),
         "--prompt", "tree. house.", "--threshold", "0", "--output-dir", str(work / "out")],
        cwd=work, env=environment, capture_output=True, text=True, check=False,
    )
    assert detect.returncode == 0, detect.stderr[-3000:]
    written = json.loads((work / "out" / "photo.json").read_text())
    assert written["prompt"] == "tree. house." and len(written["detections"]) > 0
    assert {detection["label"] for detection in written["detections"]} <= {"tree", "house"}
