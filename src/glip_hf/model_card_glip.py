"""Model cards for saved GLIP folders, and uploading a folder to the Hugging Face Hub in one commit.

`save_pretrained` and the converter write `README.md` with Hub metadata. A README that glip-hf did not write is
left alone: the card only replaces one carrying `CARD_MARKER`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CARD_MARKER = "<!-- model card written by glip-hf -->"
ORIGINAL_REPOSITORY = "https://github.com/microsoft/GLIP"
PAPER = "https://arxiv.org/abs/2112.03857"
TAGS = ["glip", "glip-hf", "zero-shot-object-detection", "open-vocabulary-detection", "phrase-grounding",
        "custom_code"]


@dataclass(frozen=True)
class ReleasedVariant:
    """A checkpoint of the original release, described as its model zoo describes it."""

    title: str
    checkpoint: str
    config: str
    pretraining_data: str
    coco_zero_shot_ap: str


# Pre-training data and COCO val2017 zero-shot AP as in microsoft/GLIP's README ("Model Zoo"), released under MIT.
RELEASED_VARIANTS = {
    "glip-t-a": ReleasedVariant("GLIP-T (A)", "glip_a_tiny_o365.pth", "glip_A_Swin_T_O365.yaml", "Objects365", "42.9"),
    "glip-t-b": ReleasedVariant("GLIP-T (B)", "glip_tiny_model_o365.pth", "glip_Swin_T_O365.yaml", "Objects365",
                                "44.9"),
    "glip-t-c": ReleasedVariant("GLIP-T (C)", "glip_tiny_model_o365_goldg.pth", "glip_Swin_T_O365_GoldG.yaml",
                                "Objects365, GoldG (Flickr30k, Visual Genome and GQA grounding data)", "46.7"),
    "glip-t": ReleasedVariant("GLIP-T", "glip_tiny_model_o365_goldg_cc_sbu.pth", "glip_Swin_T_O365_GoldG.yaml",
                              "Objects365, GoldG, CC3M, SBU captions (pseudo-labelled)", "46.6"),
    "glip-l": ReleasedVariant("GLIP-L", "glip_large_model.pth", "glip_Swin_L.yaml",
                              "FourODs (Objects365, OpenImages, Visual Genome, ImageNetBoxes), GoldG, CC3M+12M, SBU",
                              "51.4"),
}
RELEASE_LICENSE = "mit"

PARITY = (
    "`tests/test_parity_original.py` converts a random-weight checkpoint written by the original code and compares "
    "every intermediate tensor for a detection prompt and a grounding caption: each module fed the original's own "
    "inputs agrees to < 1e-6 relative error, the end-to-end token logits to about 1e-4, and the detections are the "
    "same (labels equal, scores within 1e-4, boxes within 0.01 px)."
)


def variant_from_checkpoint_name(path: str | os.PathLike | None) -> str | None:
    """The released variant a checkpoint file name belongs to, or None for any other name."""
    if path is None:
        return None
    name = Path(path).name
    return next((key for key, variant in RELEASED_VARIANTS.items() if variant.checkpoint == name), None)


def _front_matter(variant: ReleasedVariant | None) -> str:
    lines = ["---", "library_name: transformers", "pipeline_tag: zero-shot-object-detection"]
    if variant is not None:
        lines.append(f"license: {RELEASE_LICENSE}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in TAGS]
    lines.append("---")
    return "\n".join(lines)


def _architecture(config) -> str:
    backbone = config.backbone or getattr(config.backbone_config, "model_type", "transformers backbone")
    text = config.text_config
    return (f"vision backbone `{backbone}`, text tower BERT ({text.num_hidden_layers} layers, hidden "
            f"{text.hidden_size}), {config.num_dyhead_layers} fusion DyHead layers, ATSS grounding head")


def _usage(model_id: str) -> str:
    return f'''```python
import glip_hf  # registers GLIP with transformers (pip install glip-hf)
from PIL import Image
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

model = AutoModelForZeroShotObjectDetection.from_pretrained("{model_id}").eval()
processor = AutoProcessor.from_pretrained("{model_id}")
image = Image.open("your_image.jpg")
inputs = processor(images=image, text=["person", "bicycle"])
outputs = model(**inputs)
results = processor.post_process_grounded_object_detection(outputs, inputs, threshold=0.3)
print(results[0]["text_labels"], results[0]["scores"], results[0]["boxes"])
```'''


def model_card_text(config, model_id: str, variant: str | None = None, parameters: int | None = None) -> str:
    """The README.md of a saved folder: Hub metadata, what the model is, parity with the original, usage."""
    released = RELEASED_VARIANTS.get(variant) if variant else None
    size = f" ({parameters:,} parameters)" if parameters else ""
    if released is not None:
        about = (f"# {released.title}\n\n{released.title} from [GLIP]({PAPER}) (Li et al., CVPR 2022), converted "
                 f"with [glip-hf](https://pypi.org/project/glip-hf/) from the original release "
                 f"(`{released.checkpoint}` with `{released.config}`, {ORIGINAL_REPOSITORY}){size}.\n\n"
                 f"- Pre-training data, as the original states it: {released.pretraining_data}.\n"
                 f"- Zero-shot COCO val2017 AP reported by the original: {released.coco_zero_shot_ap}.\n"
                 f"- Licence: MIT, as the original release.\n")
    else:
        about = (f"# GLIP model\n\nA [GLIP]({PAPER}) grounded detector saved with "
                 f"[glip-hf](https://pypi.org/project/glip-hf/){size}. It is not one of the original's released "
                 f"checkpoints: say here what it was trained on.\n")
    return "\n\n".join([
        _front_matter(released), CARD_MARKER, about,
        f"## Architecture\n\n{_architecture(config)}. Inputs: RGB images normalised with the ImageNet mean/std, "
        f"padded to a multiple of 32; prompts of up to {config.max_text_len} tokens.",
        f"## Parity with the original code\n\n{PARITY}",
        f"## Usage\n\n{_usage(model_id)}\n\nOr `glip-hf detect --model {model_id} --image your_image.jpg "
        f"--prompt \"person. bicycle.\"`.",
    ]) + "\n"


def write_model_card(folder: str | os.PathLike, config, model_id: str | None = None, variant: str | None = None,
                     parameters: int | None = None) -> Path | None:
    """Write `folder/README.md`; returns None (and writes nothing) when a README not written by glip-hf is there."""
    path = Path(folder) / "README.md"
    if path.exists() and CARD_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        return None
    text = model_card_text(config, model_id or Path(folder).resolve().name, variant, parameters)
    path.write_text(text, encoding="utf-8")
    return path


class HubUploadError(RuntimeError):
    """The folder could not be uploaded; nothing was committed to the repository."""


def require_hub_token(token: str | None = None) -> str:
    """The token to upload with; a clear error before any work when there is none."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubUploadError("no Hugging Face token: run `hf auth login` or set HF_TOKEN; nothing was uploaded")
    return token


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None,
                       private: bool | None = None, commit_message: str = "Upload GLIP model (glip-hf)") -> str:
    """Upload a saved folder as ONE commit (all files or none), after checking the token; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=require_hub_token(token))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    except Exception as error:  # network, HTTP and auth errors come from several libraries; all mean "not uploaded"
        raise HubUploadError(
            f"could not upload {folder} to {repo_id}: {type(error).__name__}: {error}. The upload is a single commit, "
            "so nothing was committed to the repository; the local folder is complete"
        ) from None
    return str(commit)
