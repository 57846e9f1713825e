"""GLIP as a teacher: label a corpus of images with boxes, in resumable shards that train directly.

`label_corpus` reads a folder tree of images or a `datasets` dataset (streamed, images left undecoded until their
batch), cuts it into shards of `shard_size` consecutive images and writes, per shard, one ODVG jsonl file (the
format `examples/finetune.py --data_format odvg` reads) and its errors file, each atomically (temporary file, then
rename). Memory holds one shard's undecoded images (paths, or a dataset's encoded bytes) and one decoded batch,
whatever the size of the corpus. A finished shard is never redone, so a rerun after a kill redoes at most the shard that was running. With
several processes (`accelerate launch` or torchrun, read from RANK / WORLD_SIZE) process r takes shards r, r + N, ...;
batches never cross a shard, so every image is labelled in the same batch whatever the number of processes and the
union of the outputs equals a one-process run box for box. The process that writes the last shard merges them into
`labels.odvg.jsonl`, `coco.json` (class prompts) and `errors.jsonl`, next to `manifest.json` (model, prompt,
policy, package version) written when the run starts.

Boxes are written in the conventions of the readers: ODVG [x1, y1, x2, y2] ending at x + w (Open-GroundingDino's,
the default of `odvg_examples`), COCO [x, y, w, h], from the model's inclusive pixel indices.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .labelling_batch_glip import ShardLabeller, box_count, round_values
from .labelling_policy_glip import LabelPolicy, apply_policy
from .noun_phrases_glip import noun_phrase_spans

IMAGE_EXTENSIONS = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
SHARD_PATTERN = "shard-{:05d}.jsonl"
ERRORS_PATTERN = "errors-{:05d}.jsonl"


@dataclass
class CorpusItem:
    """One image of the corpus: its position, the name written to the labels, where to read it, its caption."""

    index: int
    filename: str
    source: object  # a path, or a datasets {"bytes", "path"} dict
    caption: str | None = None


@dataclass
class LabelSummary:
    labelled: int = 0  # images labelled by this run
    skipped: int = 0  # images of shards finished by an earlier run
    failed: int = 0  # images that could not be read (or whose caption had no phrase), listed in the errors
    boxes: int = 0
    shards_written: list = field(default_factory=list)
    finalised: bool = False


# ----- corpora -----------------------------------------------------------------------------------------------------

def folder_items(root: str | os.PathLike) -> Iterator[CorpusItem]:
    """Image files under `root` (recursively, sorted by path, so every process sees the same order)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--images {root} is not a folder")
    return _walk_images(root)


def _walk_images(root: Path) -> Iterator[CorpusItem]:
    index = 0
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(directory) / name
                yield CorpusItem(index, path.relative_to(root).as_posix(), path)
                index += 1


def _load_streaming_dataset(path_or_name: str, split: str):
    import datasets

    path = Path(path_or_name)
    if path.is_file():
        builder = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix)
        if builder is None:
            raise ValueError(f"--dataset {path}: a file must be .parquet, .json(l) or .csv")
        return datasets.load_dataset(builder, data_files=str(path), split=split, streaming=True)
    return datasets.load_dataset(path_or_name, split=split, streaming=True)


def dataset_items(path_or_name: str, split: str = "train", image_column: str = "image",
                  caption_column: str | None = None) -> Iterator[CorpusItem]:
    """Rows of a `datasets` dataset (imagefolder, parquet, any local dataset with an image column), streamed.

    The image column is cast to undecoded `Image(decode=False)` so that a corrupt image reaches the errors file
    instead of stopping the stream, and so that only a batch's images are ever decoded.
    """
    import datasets

    stream = _load_streaming_dataset(path_or_name, split)
    columns = stream.column_names or list((stream.features or {}).keys())
    for column in [image_column] + ([caption_column] if caption_column else []):
        if columns and column not in columns:
            raise ValueError(f"--dataset {path_or_name} has no column {column!r}; columns: {columns}")
    if isinstance((stream.features or {}).get(image_column), datasets.Image):
        stream = stream.cast_column(image_column, datasets.Image(decode=False))
    return _dataset_rows(stream, image_column, caption_column)


def _dataset_rows(stream, image_column, caption_column) -> Iterator[CorpusItem]:
    for index, row in enumerate(stream):
        image = row[image_column]
        if isinstance(image, str):
            image = {"path": image, "bytes": None}
        yield CorpusItem(index, _dataset_filename(image, index), image,
                         row[caption_column] if caption_column else None)


def _dataset_filename(image, index: int) -> str:
    path = image.get("path") if isinstance(image, dict) else None
    if path and os.path.isfile(path) and not (isinstance(image, dict) and image.get("bytes")):
        return os.path.abspath(path)
    return f"images/{index:09d}.png"  # bytes only: saved under the output folder when its shard is written


def shards(items: Iterator[CorpusItem], shard_size: int) -> Iterator[tuple[int, list[CorpusItem]]]:
    current, shard = [], 0
    for item in items:
        current.append(item)
        if len(current) == shard_size:
            yield shard, current
            current, shard = [], shard + 1
    if current:
        yield shard, current


# ----- files -------------------------------------------------------------------------------------------------------

def write_atomically(path: Path, lines: Iterator[str] | list[str]) -> None:
    """Write `lines` to a temporary file in the same folder, then rename it over `path` (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            for line in lines:
                file.write(line)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_lines(path: Path) -> Iterator[dict]:
    with open(path) as file:
        for line in file:
            if line.strip():
                yield json.loads(line)


def check_or_write_manifest(output: Path, manifest: dict) -> None:
    """A new output folder gets the manifest; a rerun (or another process of the run) must label with the same
    model, prompt and policy. Processes starting together may all write it: the renames are atomic, the content equal."""
    path = output / "manifest.json"
    if not path.is_file():
        # Another process of this run may be writing the manifest right now: its temporary file is not foreign.
        foreign = [entry.name for entry in output.iterdir() if not entry.name.startswith(".manifest.json.")] \
            if output.exists() else []
        if foreign:
            raise ValueError(f"--output {output} is not empty and holds no manifest.json of a labelling run; "
                             "give a new or empty folder (nothing in it is overwritten)")
        write_atomically(path, [json.dumps(manifest, indent=2)])
    previous = json.loads(path.read_text())
    changed = [key for key in ("model", "prompt", "policy", "shard_size", "source")
               if previous.get(key) != manifest.get(key)]
    if changed:
        raise ValueError(f"{output} holds labels made with another {', '.join(changed)}; give a new --output "
                         "folder (its files are kept as they are)")


# ----- records -----------------------------------------------------------------------------------------------------

def write_coco(path: Path, records: Callable[[], Iterator[dict]], classes: list[str]) -> None:
    """COCO detection JSON of the merged records (image ids from 1 in corpus order, category ids = class + 1)."""

    def lines():
        yield '{"categories": ' + json.dumps([{"id": i + 1, "name": n} for i, n in enumerate(classes)])
        yield ', "images": ['
        for image_id, record in enumerate(records(), start=1):
            entry = {"id": image_id, "file_name": record["filename"], "width": record["width"],
                     "height": record["height"]}
            yield ("" if image_id == 1 else ", ") + json.dumps(entry)
        yield '], "annotations": ['
        count = 0
        for image_id, record in enumerate(records(), start=1):
            for instance in record["detection"]["instances"]:
                x1, y1, x2, y2 = instance["bbox"]
                count += 1
                annotation = {"id": count, "image_id": image_id, "category_id": instance["label"] + 1,
                              "bbox": round_values([x1, y1, x2 - x1, y2 - y1]),
                              "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0, "score": instance["score"]}
                yield ("" if count == 1 else ", ") + json.dumps(annotation)
        yield "]}\n"

    write_atomically(path, lines())


def finalise(output: Path, shard_count: int, classes: list[str] | None) -> bool:
    """Merge the shards once all exist (whichever process finishes last); False while some are missing."""
    shard_dir = output / "shards"
    paths = [shard_dir / SHARD_PATTERN.format(shard) for shard in range(shard_count)]
    if not all(path.is_file() for path in paths):
        return False

    def records():
        for path in paths:
            yield from _read_lines(path)

    write_atomically(output / "labels.odvg.jsonl", (json.dumps(record) + "\n" for record in records()))
    errors = [shard_dir / ERRORS_PATTERN.format(shard) for shard in range(shard_count)]
    write_atomically(output / "errors.jsonl", (json.dumps(error) + "\n" for path in errors if path.is_file()
                                               for error in _read_lines(path)))
    if classes is not None:
        write_coco(output / "coco.json", records, classes)
        write_atomically(output / "label_map.json", [json.dumps({str(i): n for i, n in enumerate(classes)})])
    images = boxes = 0
    for record in records():
        images += 1
        boxes += box_count(record)
    failed = sum(1 for path in errors if path.is_file() for _ in _read_lines(path))
    write_atomically(output / "summary.json", [json.dumps(
        {"images_labelled": images, "boxes": boxes, "images_failed": failed, "shards": shard_count}, indent=2)])
    return True


# ----- the run -----------------------------------------------------------------------------------------------------

def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process as `accelerate launch` / torchrun set them; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class LabelRun:
    """What a labelling run needs besides its corpus (see `label_corpus`)."""

    model: object
    processor: object
    output: Path
    classes: list[str] | None = None
    policy: LabelPolicy = field(default_factory=LabelPolicy)
    batch_size: int = 8
    shard_size: int = 1000
    device: str = "cpu"
    bf16: bool = False
    extractor: object = "perceptron"  # captions' noun phrases (used when `classes` is None): a backend name or callable
    progress: bool = True


def label_corpus(run: LabelRun, items: Iterator[CorpusItem], source: str, rank: int | None = None,
                 world_size: int | None = None) -> LabelSummary:
    """Label `items` into `run.output`; see the module docstring. `source` names the corpus in the manifest."""
    from tqdm.auto import tqdm

    if run.classes is None and run.extractor is None:
        raise ValueError("Give class names, or captions with a noun-phrase extractor")
    if run.batch_size < 1 or run.shard_size < 1:
        raise ValueError(f"batch size and shard size must be >= 1, got {run.batch_size} and {run.shard_size}")
    if rank is None or world_size is None:
        rank, world_size = distributed_rank()
    output = Path(run.output)
    check_or_write_manifest(output, manifest_for(run, source))
    labeller = ShardLabeller(run, noun_phrase_spans)
    summary, shard_count = LabelSummary(), 0
    bar = tqdm(desc=f"labelling (process {rank}/{world_size})" if world_size > 1 else "labelling", unit="image",
               disable=not run.progress, dynamic_ncols=True)
    for shard, members in shards(items, run.shard_size):
        shard_count = shard + 1
        if shard % world_size != rank:
            continue
        shard_path = output / "shards" / SHARD_PATTERN.format(shard)
        if shard_path.is_file():
            summary.skipped += len(members)
            continue
        records, errors = labeller.label_shard(members, bar)
        write_atomically(output / "shards" / ERRORS_PATTERN.format(shard), [json.dumps(e) + "\n" for e in errors])
        write_atomically(shard_path, [json.dumps(record) + "\n" for record in records])
        summary.labelled += len(records)
        summary.failed += len(errors)
        summary.boxes += sum(box_count(record) for record in records)
        summary.shards_written.append(shard)
    bar.close()
    summary.finalised = finalise(output, shard_count, run.classes)
    return summary


def label(model, processor, output, *, images=None, dataset=None, split: str = "train", image_column: str = "image",
          classes: list[str] | None = None, caption_column: str | None = None, **options) -> LabelSummary:
    """The Python form of `glip-hf label`: a folder (`images`) or a `datasets` dataset (`dataset`, `split`,
    `image_column`), labelled with `classes` or with the noun phrases of `caption_column`. `options` are the other
    `LabelRun` fields (policy, batch_size, shard_size, device, bf16, extractor, progress)."""
    if (images is None) == (dataset is None):
        raise ValueError("Give exactly one corpus: images=FOLDER or dataset=PATH_OR_NAME")
    if (classes is None) == (caption_column is None):
        raise ValueError("Give exactly one prompt: classes=[...] or caption_column=NAME")
    if caption_column is not None and images is not None:
        raise ValueError("caption_column needs a dataset (a folder of images has no captions)")
    if images is not None:
        items, source = folder_items(images), f"folder {Path(images).resolve()}"
    else:
        items = dataset_items(dataset, split, image_column, caption_column)
        source = f"dataset {dataset} split {split} column {image_column}"
    run = LabelRun(model=model, processor=processor, output=Path(output), classes=classes, **options)
    return label_corpus(run, items, source)


def manifest_for(run: LabelRun, source: str) -> dict:
    from . import __version__

    config = getattr(run.model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(run.model, "name_or_path", None)
    return {
        "model": str(name) if name else type(run.model).__name__,
        "prompt": {"classes": run.classes} if run.classes is not None else {
            "caption_noun_phrases": run.extractor if isinstance(run.extractor, str) else getattr(
                run.extractor, "__name__", repr(run.extractor))},
        "policy": asdict(run.policy),
        "shard_size": run.shard_size,
        "batch_size": run.batch_size,  # recorded, not enforced: a rerun may change it (its shards then batch otherwise)
        "device": str(run.device), "bf16": run.bf16,
        "source": source,
        "glip_hf_version": __version__,
        "box_format": {"odvg": "[x1, y1, x2, y2], x2 = x + w (pixels of the stored image)", "coco": "[x, y, w, h]"},
    }


__all__ = [
    "CorpusItem",
    "LabelPolicy",
    "LabelRun",
    "LabelSummary",
    "apply_policy",
    "dataset_items",
    "folder_items",
    "label",
    "label_corpus",
    "write_atomically",
]
