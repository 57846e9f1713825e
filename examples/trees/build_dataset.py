"""Build a small COCO-format "tree" detection dataset from the aerial photos that ship in the `deepforest` wheel.

    pip install --no-deps deepforest==2.1.0        # only its data folder is read; deepforest is never imported
    python examples/trees/build_dataset.py --output-dir data/trees [--tile-size 400] [--small]

writes

    output_dir/images/*.png     the tiles, named <source>_x<x0>_y<y0>.png (x0, y0: the tile's corner in the source)
    output_dir/train.json       COCO detection JSONs (one category {"id": 1, "name": "tree"}), which
    output_dir/heldout.json     examples/finetune.py reads with --train_annotations / --eval_annotations
    output_dir/stats.json       tiles and boxes per split, dropped boxes, each tile's source and pixel window

Sources: the four Pascal-VOC annotated images of deepforest's `data/` folder, 951 boxes in all:

    OSBS_029.xml                                  400 x 400    61 boxes "Tree"
    SOAP_061.xml                                  400 x 400    37 boxes "Alive" / "Dead" (all trees)
    2019_YELL_2_528000_4978000_image_crop2.xml   2299 x 2472  574 boxes "Tree"
    2019_YELL_2_541000_4977000_image_crop.xml    1249 x 1035  279 boxes "Tree"

Every label becomes the one category "tree" (id 1).

Boxes. VOC's xmin, ymin, xmax, ymax are 1-based inclusive pixel indices (here: boxes touching the left / top border
start at 1, never 0, and boxes touching the right / bottom border end at exactly the width / height). As
maskrcnn_benchmark's VOC reader does, 1 is subtracted to get 0-based inclusive boxes [x1, y1, x2, y2] covering
(x2 - x1 + 1) x (y2 - y1 + 1) pixels, the convention of `glip_hf.data_glip`; COCO's bbox is then
[x1, y1, x2 - x1 + 1, y2 - y1 + 1].

Tiling. Each image is cut into a grid of non-overlapping tiles of `tile_size` pixels starting at the top-left corner;
the last row and column of tiles are smaller, and a tile less than half of `tile_size` wide or high is dropped with
its strip of pixels (a 400 x 400 image gives one tile at the default size). A box is clipped to each tile it overlaps
and kept in that tile when at least `min_visible` of its pixels lie inside (still inclusive, in tile coordinates);
a box kept in no tile is dropped and counted in stats.json: `dropped_partial` (it crosses tile borders and no tile
holds `min_visible` of it) or `dropped_outside` (it lies in no kept tile: in a dropped edge strip). With
`min_visible` <= 0.5 a box cut exactly in half is kept in both tiles (`kept_twice`), so a source's annotations number
`kept + kept_twice`, and `kept + dropped_partial + dropped_outside` is its box count.

Split (deterministic, and no pixel of a source image is in both splits):
  * OSBS_029: every tile in train; SOAP_061: every tile held out (a whole image no training tile has seen);
  * each other (large) image: the right-most k columns of its tile grid are held out, the other columns train,
    k = round(heldout_fraction * columns) clamped to [1, columns - 1] (round half up; 0 columns when
    heldout_fraction is 0). The held-out block is one contiguous vertical band, so the split boundary is one straight
    line; tiles never overlap, so train and held-out pixel windows are disjoint. A tree cut by that line may appear
    clipped on both sides (when `min_visible` <= 0.5), but no image region is shared.

Small variant (`small=True` / `--small`, for CI): tile size 256 unless given, then only `train_tiles` (4) training and
`heldout_tiles` (2) held-out tiles are written, drawn with `random.Random(seed)` among each split's full-size tiles
holding at least `min_boxes` (3) boxes. `seed` only picks this subset; the full build does not depend on it. The
tiles are still cut from the same grid and split, so the small variant keeps the no-shared-region guarantee.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from PIL import Image

CATEGORY = {"id": 1, "name": "tree"}
DEFAULT_TILE_SIZE = 400
SMALL_TILE_SIZE = 256
SMALL_TRAIN_TILES = 4
SMALL_HELDOUT_TILES = 2
SMALL_MIN_BOXES = 3

# (VOC file, split rule): "train" / "heldout" put the whole image in that split, "columns" holds out its right-most
# tile columns. Sources are processed in this order; it fixes tile order and image / annotation ids.
SOURCES = (
    ("OSBS_029.xml", "train"),
    ("SOAP_061.xml", "heldout"),
    ("2019_YELL_2_528000_4978000_image_crop2.xml", "columns"),
    ("2019_YELL_2_541000_4977000_image_crop.xml", "columns"),
)
SPLITS = ("train", "heldout")
VOC_OFFSET = 1  # VOC pixel indices are 1-based


def deepforest_data_dir(data_dir=None) -> Path:
    """The `data/` folder of the installed deepforest wheel (found without importing deepforest), or `data_dir`.

    Raises FileNotFoundError, with the install command, when it is missing.
    """
    if data_dir is None:
        spec = importlib.util.find_spec("deepforest")  # a top-level name: finds, does not execute, the package
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("the deepforest wheel is not installed; its example images are the tree data: "
                                    "pip install --no-deps deepforest==2.1.0")
        data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    data_dir = Path(data_dir)
    missing = [name for name, _ in SOURCES if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir} lacks {missing}; expected deepforest==2.1.0's data folder "
                                "(pip install --no-deps deepforest==2.1.0)")
    return data_dir


@dataclass
class Source:
    name: str  # the file stem, e.g. "OSBS_029"
    image_path: Path
    width: int
    height: int
    boxes: list  # 0-based inclusive [x1, y1, x2, y2]
    labels: list  # the VOC labels, all mapped to "tree"
    rule: str


def read_voc(xml_path: Path, rule: str) -> Source:
    """One VOC file: its image (the XML's <filename>, else <stem>.png next to it), size and 0-based inclusive boxes."""
    root = ElementTree.parse(xml_path).getroot()
    image_path = xml_path.parent / (root.findtext("filename") or "")
    if not image_path.is_file():
        image_path = xml_path.with_suffix(".png")
    width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    boxes, labels = [], []
    for obj in root.iter("object"):
        box = [round(float(obj.findtext(f"bndbox/{key}"))) - VOC_OFFSET for key in ("xmin", "ymin", "xmax", "ymax")]
        # Clamp to the image as `clip_boxes_inclusive` would; none of the shipped boxes needs it.
        box = [min(max(box[0], 0), width - 1), min(max(box[1], 0), height - 1),
               min(max(box[2], 0), width - 1), min(max(box[3], 0), height - 1)]
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{xml_path.name}: empty box {box}")
        boxes.append(box)
        labels.append(obj.findtext("name"))
    return Source(xml_path.stem, image_path, width, height, boxes, labels, rule)


@dataclass
class Tile:
    source: str
    row: int
    column: int
    x0: int
    y0: int
    width: int
    height: int
    split: str = ""
    boxes: list = field(default_factory=list)  # inclusive xyxy in tile coordinates
    clipped: int = 0  # boxes cut by the tile border

    @property
    def file_name(self) -> str:
        return f"{self.source}_x{self.x0:04d}_y{self.y0:04d}.png"


def tile_starts(length: int, tile_size: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles along one side; a last tile shorter than half of `tile_size` is dropped."""
    starts = []
    for start in range(0, length, tile_size):
        size = min(tile_size, length - start)
        if 2 * size >= tile_size:
            starts.append((start, size))
    return starts


def heldout_columns(columns: int, heldout_fraction: float) -> int:
    """Number of right-most tile columns held out of a large image."""
    if heldout_fraction <= 0 or columns < 2:
        return 0
    return min(max(int(heldout_fraction * columns + 0.5), 1), columns - 1)


def tile_source(source: Source, tile_size: int, heldout_fraction: float, min_visible: float):
    """Cut one source into split tiles with their clipped boxes; return (tiles, per-source stats)."""
    columns, rows = tile_starts(source.width, tile_size), tile_starts(source.height, tile_size)
    held = heldout_columns(len(columns), heldout_fraction) if source.rule == "columns" else 0
    tiles = []
    for row, (y0, tile_height) in enumerate(rows):
        for column, (x0, tile_width) in enumerate(columns):
            if source.rule == "columns":
                split = "heldout" if column >= len(columns) - held else "train"
            else:
                split = source.rule
            tiles.append(Tile(source.name, row, column, x0, y0, tile_width, tile_height, split))
    placements = [0] * len(source.boxes)
    touched = [False] * len(source.boxes)
    for index, (x1, y1, x2, y2) in enumerate(source.boxes):
        area = (x2 - x1 + 1) * (y2 - y1 + 1)
        for tile in tiles:
            cx1, cy1 = max(x1, tile.x0), max(y1, tile.y0)
            cx2, cy2 = min(x2, tile.x0 + tile.width - 1), min(y2, tile.y0 + tile.height - 1)
            if cx2 < cx1 or cy2 < cy1:
                continue
            touched[index] = True
            visible = (cx2 - cx1 + 1) * (cy2 - cy1 + 1)
            if visible < min_visible * area:
                continue
            tile.boxes.append([cx1 - tile.x0, cy1 - tile.y0, cx2 - tile.x0, cy2 - tile.y0])
            tile.clipped += visible < area
            placements[index] += 1
    stats = {
        "file": source.image_path.name,
        "width": source.width, "height": source.height,
        "labels": sorted(set(source.labels)),
        "rule": {"train": "whole image in train", "heldout": "whole image held out",
                 "columns": f"right-most {held} of {len(columns)} tile columns held out"}[source.rule],
        "grid": {"rows": len(rows), "columns": len(columns), "heldout_columns": held},
        "covered_window_xywh": [0, 0, sum(size for _, size in columns), sum(size for _, size in rows)],
        "boxes": len(source.boxes),
        "kept": sum(count > 0 for count in placements),
        "kept_twice": sum(count > 1 for count in placements),
        "clipped_annotations": sum(tile.clipped for tile in tiles),
        "dropped_partial": sum(count == 0 and hit for count, hit in zip(placements, touched)),
        "dropped_outside": sum(not hit for hit in touched),
        "annotations": sum(placements),
    }
    stats["dropped"] = stats["dropped_partial"] + stats["dropped_outside"]
    return tiles, stats


def select_small(tiles: list[Tile], tile_size: int, train_tiles: int, heldout_tiles: int, min_boxes: int,
                 seed: int) -> list[Tile]:
    """The CI subset: per split, `random.Random(seed)` draws among full-size tiles with >= `min_boxes` boxes."""
    rng = random.Random(seed)
    chosen = []
    for split, count in (("train", train_tiles), ("heldout", heldout_tiles)):
        pool = [t for t in tiles if t.split == split and len(t.boxes) >= min_boxes
                and t.width == tile_size and t.height == tile_size]
        if len(pool) < count:  # fall back to any tile of the split
            pool = [t for t in tiles if t.split == split]
        chosen += rng.sample(pool, min(count, len(pool)))
    order = {id(tile): index for index, tile in enumerate(tiles)}
    return sorted(chosen, key=lambda tile: order[id(tile)])


def coco_json(tiles: list[Tile]) -> dict:
    """COCO detection index of `tiles` (image and annotation ids from 1: pycocotools treats id 0 as unmatched)."""
    images, annotations = [], []
    for image_id, tile in enumerate(tiles, start=1):
        images.append({"id": image_id, "file_name": tile.file_name, "width": tile.width, "height": tile.height})
        for x1, y1, x2, y2 in tile.boxes:
            width, height = x2 - x1 + 1, y2 - y1 + 1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY["id"],
                                "bbox": [x1, y1, width, height], "area": width * height, "iscrowd": 0})
    return {"info": {"description": "trees from deepforest's example images, tiled (examples/trees)"},
            "images": images, "annotations": annotations, "categories": [dict(CATEGORY)]}


def build_tree_dataset(output_dir, tile_size: int | None = None, heldout_fraction: float = 0.25,
                       min_visible: float = 0.5, seed: int = 0, *, small: bool = False, data_dir=None,
                       train_tiles: int = SMALL_TRAIN_TILES, heldout_tiles: int = SMALL_HELDOUT_TILES,
                       min_boxes: int = SMALL_MIN_BOXES) -> dict:
    """Write the tiles, train.json, heldout.json and stats.json into `output_dir`; return the stats.

    `tile_size` defaults to 400 (256 with `small`). `data_dir`: deepforest's data folder, found when None.
    `train_tiles`, `heldout_tiles`, `min_boxes`: the `small` subset. See the module docstring for the rules.
    """
    started = time.perf_counter()
    tile_size = int(tile_size or (SMALL_TILE_SIZE if small else DEFAULT_TILE_SIZE))
    if tile_size < 2:
        raise ValueError(f"tile_size must be at least 2, got {tile_size}")
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if not 0 < min_visible <= 1:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
    data_dir = deepforest_data_dir(data_dir)
    output_dir = Path(output_dir)
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    sources = [read_voc(data_dir / name, rule) for name, rule in SOURCES]
    tiles, source_stats = [], {}
    for source in sources:
        source_tiles, source_stats[source.name] = tile_source(source, tile_size, heldout_fraction, min_visible)
        tiles += source_tiles
    written = select_small(tiles, tile_size, train_tiles, heldout_tiles, min_boxes, seed) if small else tiles

    by_source = {source.name: source for source in sources}
    for name in dict.fromkeys(tile.source for tile in written):
        with Image.open(by_source[name].image_path) as opened:
            image = opened.convert("RGB")
        for tile in (t for t in written if t.source == name):
            crop = image.crop((tile.x0, tile.y0, tile.x0 + tile.width, tile.y0 + tile.height))
            crop.save(image_dir / tile.file_name, optimize=False)

    splits, tile_records = {}, []
    for split in SPLITS:
        split_tiles = [tile for tile in written if tile.split == split]
        index = coco_json(split_tiles)
        (output_dir / f"{split}.json").write_text(json.dumps(index))
        splits[split] = {"tiles": len(split_tiles), "boxes": len(index["annotations"]),
                         "empty_tiles": sum(not tile.boxes for tile in split_tiles),
                         "sources": sorted({tile.source for tile in split_tiles})}
        for image_id, tile in enumerate(split_tiles, start=1):
            tile_records.append({"file_name": tile.file_name, "split": split, "image_id": image_id,
                                 "source": tile.source, "window_xywh": [tile.x0, tile.y0, tile.width, tile.height],
                                 "grid": [tile.row, tile.column], "boxes": len(tile.boxes),
                                 "clipped_boxes": tile.clipped})
    def total(key):
        return sum(stats[key] for stats in source_stats.values())

    stats = {
        "output_dir": str(output_dir),
        "data_dir": str(data_dir),
        "settings": {"tile_size": tile_size, "heldout_fraction": heldout_fraction, "min_visible": min_visible,
                     "seed": seed, "small": small, "box_convention": "VOC 1-based inclusive -> 0-based inclusive"},
        "category": dict(CATEGORY),
        "splits": splits,
        "source_boxes": total("boxes"),
        "dropped_boxes": total("dropped"),
        "dropped_partial": total("dropped_partial"),
        "dropped_outside": total("dropped_outside"),
        "kept_twice": total("kept_twice"),
        # boxes of the full tiling in tiles the small variant leaves out (0 for the full build)
        "unselected_annotations": total("annotations") - sum(split["boxes"] for split in splits.values()),
        "sources": source_stats,
        "tiles": tile_records,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (output_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def summary(stats: dict) -> str:
    settings = stats["settings"]
    lines = [(f"tree dataset in {stats['output_dir']} (tile {settings['tile_size']}"
              f"{', small' if settings['small'] else ''}) from {stats['source_boxes']} source boxes, "
              f"{stats['seconds']:.1f} s")]
    for split, info in stats["splits"].items():
        lines.append(f"  {split:8s} {info['tiles']:3d} tiles {info['boxes']:4d} boxes "
                     f"({info['empty_tiles']} tiles without boxes) from {', '.join(info['sources'])}")
    lines.append(f"  dropped  {stats['dropped_boxes']} boxes ({stats['dropped_partial']} under min_visible in every "
                 f"tile, {stats['dropped_outside']} in dropped edge strips); {stats['kept_twice']} kept in two tiles")
    if settings["small"]:
        lines.append(f"  small subset: {stats['unselected_annotations']} boxes in tiles not written")
    for name, info in stats["sources"].items():
        lines.append(f"  {name}: {info['width']}x{info['height']}, {info['boxes']} boxes, {info['rule']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="folder to write images/, train.json, heldout.json, "
                                                            "stats.json into")
    parser.add_argument("--tile-size", type=int, default=None,
                        help=f"tile side in pixels (default {DEFAULT_TILE_SIZE}, {SMALL_TILE_SIZE} with --small)")
    parser.add_argument("--heldout-fraction", type=float, default=0.25,
                        help="share of each large image's tile columns held out (right-most)")
    parser.add_argument("--min-visible", type=float, default=0.5,
                        help="keep a box cut by a tile border when at least this share of it is inside")
    parser.add_argument("--seed", type=int, default=0, help="picks the --small subset")
    parser.add_argument("--small", action="store_true",
                        help=f"CI-sized: {SMALL_TRAIN_TILES} train and {SMALL_HELDOUT_TILES} held-out tiles")
    parser.add_argument("--data-dir", default=None, help="deepforest's data folder (default: found in the "
                                                         "installed wheel)")
    args = parser.parse_args(argv)
    try:
        stats = build_tree_dataset(args.output_dir, args.tile_size, args.heldout_fraction, args.min_visible,
                                   args.seed, small=args.small, data_dir=args.data_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(summary(stats))
    return stats


if __name__ == "__main__":
    main()
