"""What GLIP-T's training forward keeps for the backward, by stage: the activation memory of a training step.

    python benchmarks/training_memory.py [--device cpu] [--size 800x1333] [--batch 1] [--bf16]

Counts the distinct storages that autograd saves (parameters excepted) while the forward with labels runs, and
charges each to the innermost watched module running when it was saved. Exact on any device, so it runs on a CPU
too, where a GPU's peak memory cannot be measured (on CPU, autocast keeps the deformable convs' product in
float32, as the model does there; under CUDA autocast it is bf16).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from bench_inference import parse_size
from bench_training import glip_batch
from common import device_description, glip_tiny, test_image, write_results

from glip_hf.deform_conv_glip import ModulatedDeformConv2d
from glip_hf.fusion_glip import GlipDyConv, GlipFusionBlock, GlipTextLayer

OUTSIDE = "loss, anchors and the rest"


class SavedTensorLedger:
    """Attributes the storages autograd saves to the innermost running module of `stages` (module -> name)."""

    def __init__(self, model, stages: dict):
        self.running, self.bytes_by_storage = [], {}
        self.parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
        self.handles = []
        for module, name in stages.items():
            self.handles.append(module.register_forward_pre_hook(lambda _module, _args, name=name: self._enter(name)))
            self.handles.append(module.register_forward_hook(lambda _module, _args, _output: self._leave()))

    def _enter(self, name):
        self.running.append(name)

    def _leave(self):
        self.running.pop()

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters and storage.data_ptr() not in self.bytes_by_storage:
            self.bytes_by_storage[storage.data_ptr()] = (storage.nbytes(), self.running[-1] if self.running else OUTSIDE)
        return tensor

    def by_stage(self) -> dict:
        totals = collections.Counter()
        for nbytes, stage in self.bytes_by_storage.values():
            totals[stage] += nbytes
        return dict(totals.most_common())


def stages_of(model) -> dict:
    stages = {model.model.vision_backbone: "vision tower + FPN", model.model.text_backbone: "text tower",
              model.head: "head"}
    kinds = {GlipFusionBlock: "fusion blocks", GlipTextLayer: "DyHead text layers", GlipDyConv: "DyConv (the rest)",
             ModulatedDeformConv2d: "DyConv deformable convs"}
    stages.update({module: kinds[type(module)] for module in model.modules() if type(module) in kinds})
    return stages


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="800x1333")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--output", type=Path, default=Path("results/training_memory.json"))
    args = parser.parse_args(argv)
    height, width = parse_size(args.size)
    model, processor = glip_tiny(args.device)
    model.train()
    batch, labels = glip_batch(processor, [test_image(height, width, seed) for seed in range(args.batch)],
                               args.device)
    ledger = SavedTensorLedger(model, stages_of(model))
    with torch.autograd.graph.saved_tensors_hooks(ledger.pack, lambda tensor: tensor), \
            torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=args.bf16):
        model(**batch, labels=labels)
    by_stage = {stage: nbytes / 2**30 for stage, nbytes in ledger.by_stage().items()}
    total = sum(by_stage.values())
    for stage, gib in by_stage.items():
        print(f"{stage:26s} {gib:7.2f} GiB {gib / total:5.0%}")
    print(f"{'kept for the backward':26s} {total:7.2f} GiB ({args.batch} image(s) of {height}x{width}, "
          f"bf16 {'on' if args.bf16 else 'off'})")
    results = {"device": device_description(args.device), "image": f"{height}x{width}", "batch": args.batch,
               "bf16": args.bf16, "saved_gib_by_stage": by_stage, "saved_gib": total}
    write_results(args.output, results)
    return results


if __name__ == "__main__":
    main()
