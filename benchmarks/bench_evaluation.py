"""Wall time of `glip-hf evaluate` on generated images with the tests' tiny random GLIP (about 1.5M parameters):
the evaluation machinery (reading images, batching, prompts, post-processing, gathering, scoring) rather than a
full-size model.

    python bench_evaluation.py --images 100 --benchmark coco [--batch-size 4] [--output results/evaluation_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' dataset and tiny-model generators

from evaluation_data import save_tiny_model, write_coco, write_lvis  # noqa: E402

from glip_hf import cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--benchmark", choices=("coco", "lvis"), default="coco")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = save_tiny_model(root / "model")
        if args.benchmark == "coco":
            annotations = write_coco(root / "data", args.images)
        else:
            annotations = write_lvis(root / "data", args.images)
        start = time.perf_counter()
        code = cli.main(["evaluate", "--model", str(model), "--benchmark", args.benchmark, "--annotations",
                         str(annotations), "--images", str(annotations.parent), "--batch-size", str(args.batch_size),
                         "--device", args.device, "--output", str(root / "metrics.json")])
        seconds = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    import torch

    result = {
        "benchmark": args.benchmark, "images": args.images, "batch_size": args.batch_size, "device": args.device,
        "threads": torch.get_num_threads(), "seconds": round(seconds, 2),
        "images_per_second": round(args.images / seconds, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
