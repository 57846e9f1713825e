"""Conversion of the original GLIP checkpoints (maskrcnn_benchmark layout + yacs YAML) to `GlipForGrounding`.

Kept next to the model so that the rename table and the module names it targets change together.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import json
import pickle
import re
from pathlib import Path

import torch
import yaml
from transformers import BertConfig

from .configuration_glip import GlipConfig, swin_backbone_config

# The original's defaults (maskrcnn_benchmark/config/defaults.py) for every key the conversion reads.
ORIGINAL_DEFAULTS = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "RPN_ARCHITECTURE": "RPN",
        "BACKBONE": {"CONV_BODY": "R-50-C4", "OUT_CHANNELS": 1024},
        "SWINT": {
            "EMBED_DIM": 96, "OUT_CHANNELS": (96, 192, 384, 768), "DEPTHS": (2, 2, 6, 2),
            "NUM_HEADS": (3, 6, 12, 24), "WINDOW_SIZE": 7, "MLP_RATIO": 4, "DROP_PATH_RATE": 0.2, "APE": False,
            "VERSION": "v1", "OUT_NORM": True, "LAYER_SCALE": 0,
        },
        "LANGUAGE_BACKBONE": {
            "MODEL_TYPE": "bert-base-uncased", "LANG_DIM": 768, "MAX_QUERY_LEN": 256, "N_LAYERS": 1,
        },
        "GROUP_NORM": {"NUM_GROUPS": 16, "EPSILON": 1e-5},
        "ATSS": {
            "INFERENCE_TH": 0.05, "NMS_TH": 0.6, "PRE_NMS_TOP_N": 1000, "TOPK": 9, "REG_LOSS_WEIGHT": 2.0,
            "DETECTIONS_PER_IMG": 100,
        },
        "DYHEAD": {
            "PRIOR_PROB": 0.01, "NUM_CONVS": 4, "CHANNELS": 128, "USE_DFCONV": False, "TOPK": 9, "SCORE_AGG": "MEAN",
            "LOG_SCALE": 0.0, "USE_GN": False, "USE_NSYNCBN": False, "USE_SYNCBN": False, "USE_DYFUSE": False,
            "USE_DYRELU": False, "CONV_FUNC": "", "COSINE_SCALE": -1.0,
            "FUSE_CONFIG": {
                "EARLY_FUSE_ON": False, "TYPE": "", "JOINT_EMB_SIZE": 256, "USE_TOKEN_LOSS": False,
                "TOKEN_GAMMA": 2.0, "TOKEN_ALPHA": 0.25, "USE_DOT_PRODUCT_TOKEN_LOSS": False,
                "USE_CONTRASTIVE_ALIGN_LOSS": False, "USE_LAYER_SCALE": True, "SEPARATE_BIDIRECTIONAL": False,
                "STABLE_SOFTMAX_2D": False, "USE_FUSED_FEATURES_DOT_PRODUCT": False,
                "CLAMP_MIN_FOR_UNDERFLOW": False, "CLAMP_MAX_FOR_OVERFLOW": False,
                "CLAMP_BERTATTN_MIN_FOR_UNDERFLOW": False, "CLAMP_BERTATTN_MAX_FOR_OVERFLOW": False,
                "CLAMP_DOT_PRODUCT": False, "MLM_LOSS": False, "USE_SHALLOW_CONTRASTIVE_LOSS": False,
                "USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": False, "ADD_LINEAR_LAYER": False,
            },
        },
        "RPN": {
            "USE_FPN": False, "ANCHOR_SIZES": (32, 64, 128, 256, 512), "ANCHOR_STRIDE": (16,),
            "ASPECT_RATIOS": (0.5, 1.0, 2.0), "OCTAVE": 2.0, "SCALES_PER_OCTAVE": 3,
        },
    },
    "INPUT": {
        "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
        "PIXEL_STD": [1.0, 1.0, 1.0], "TO_BGR255": True, "FORMAT": "",
    },
    "DATALOADER": {"SIZE_DIVISIBILITY": 0},
    "DATASETS": {"SEPARATION_TOKENS": " "},
}

# BGR, 0-255: exactly 255 x the ImageNet RGB mean/std reversed, which makes the input conversion a channel flip.
IMAGENET_BGR255_MEAN = [103.53, 116.28, 123.675]
IMAGENET_BGR255_STD = [57.375, 57.12, 58.395]

# Original key (regex, matched in full) -> our key. Applied to keys without the DDP "module." prefix.
SWIN = "model.vision_backbone.backbone."
RENAME_RULES = [
    (r"backbone\.body\.patch_embed\.proj\.(weight|bias)", SWIN + r"swin.embeddings.patch_embeddings.projection.\1"),
    (r"backbone\.body\.patch_embed\.norm\.(weight|bias)", SWIN + r"swin.embeddings.norm.\1"),
    (r"backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.(\w+)", SWIN + r"swin.encoder.layers.\1.blocks.\2.layernorm_before.\3"),
    (r"backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.(\w+)", SWIN + r"swin.encoder.layers.\1.blocks.\2.layernorm_after.\3"),
    (r"backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(\w+)", SWIN + r"swin.encoder.layers.\1.blocks.\2.attention.{q,k,v}_proj.\3"),
    (r"backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(\w+)", SWIN + r"swin.encoder.layers.\1.blocks.\2.attention.o_proj.\3"),
    (r"backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
     SWIN + r"swin.encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    (r"backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc\d)\.(\w+)", SWIN + r"swin.encoder.layers.\1.blocks.\2.mlp.\3.\4"),
    (r"backbone\.body\.layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)", SWIN + r"swin.encoder.layers.\1.downsample.\2.\3"),
    # norm1..norm3 normalise the stride 8/16/32 outputs, transformers' stage2..stage4.
    (r"backbone\.body\.norm(\d)\.(\w+)", SWIN + r"hidden_states_norms.stage{\1+1}.\2"),
    (r"backbone\.fpn\.fpn_inner(\d)\.(\w+)", r"model.vision_backbone.fpn.inner_blocks.{\1-2}.0.\2"),
    (r"backbone\.fpn\.fpn_layer(\d)\.(\w+)", r"model.vision_backbone.fpn.layer_blocks.{\1-2}.0.\2"),
    (r"backbone\.fpn\.top_blocks\.(p6|p7)\.(\w+)", r"model.vision_backbone.fpn.extra_blocks.\1.\2"),
    (r"language_backbone\.body\.model\.(.+)", r"model.text_backbone.\1"),
    (r"rpn\.head\.(bbox_pred|centerness)\.(\w+)", r"head.\1.\2"),
    (r"rpn\.head\.scales\.(\d+)\.scale", r"head.scales.\1.scale"),
    (r"rpn\.head\.dot_product_projection_text\.(\w+)", r"head.text_projection.\1"),
    (r"rpn\.head\.log_scale", r"head.log_scale"),
    (r"rpn\.head\.bias_lang", r"head.text_bias"),
    (r"rpn\.head\.bias0", r"head.logit_bias"),
]

# Inside DyHead layer k; the tower index of each part is derived from the config (see `_tower_parts`).
TOWER_RULES = {
    "fusion": [
        (r"b_attn\.gamma_v", "fusion.vision_gamma"),
        (r"b_attn\.gamma_l", "fusion.text_gamma"),
        (r"b_attn\.layer_norm_v\.(\w+)", r"fusion.vision_layer_norm.\1"),
        (r"b_attn\.layer_norm_l\.(\w+)", r"fusion.text_layer_norm.\1"),
        (r"b_attn\.attn\.v_proj\.(\w+)", r"fusion.attention.vision_query_proj.\1"),
        (r"b_attn\.attn\.l_proj\.(\w+)", r"fusion.attention.text_key_proj.\1"),
        (r"b_attn\.attn\.values_v_proj\.(\w+)", r"fusion.attention.vision_value_proj.\1"),
        (r"b_attn\.attn\.values_l_proj\.(\w+)", r"fusion.attention.text_value_proj.\1"),
        (r"b_attn\.attn\.out_v_proj\.(\w+)", r"fusion.attention.vision_out_proj.\1"),
        (r"b_attn\.attn\.out_l_proj\.(\w+)", r"fusion.attention.text_out_proj.\1"),
    ],
    "text_layer": [
        (r"attention\.self\.(query|key|value)\.(\w+)", r"text_layer.\1.\2"),
        (r"attention\.output\.dense\.(\w+)", r"text_layer.attention_output.\1"),
        (r"attention\.output\.LayerNorm\.(\w+)", r"text_layer.attention_layer_norm.\1"),
        (r"intermediate\.dense\.(\w+)", r"text_layer.intermediate.\1"),
        (r"output\.dense\.(\w+)", r"text_layer.output.\1"),
        (r"output\.LayerNorm\.(\w+)", r"text_layer.output_layer_norm.\1"),
    ],
    "dyconv": [
        # DyConv.0 convolves the coarser level, DyConv.1 the level itself, DyConv.2 the finer level.
        (r"DyConv\.0\.conv\.(\w+)", r"dyconv.conv_from_coarser.conv.\1"),
        (r"DyConv\.0\.bn\.(\w+)", r"dyconv.conv_from_coarser.norm.\1"),
        (r"DyConv\.1\.conv\.(\w+)", r"dyconv.conv_same.conv.\1"),
        (r"DyConv\.1\.bn\.(\w+)", r"dyconv.conv_same.norm.\1"),
        (r"DyConv\.2\.conv\.(\w+)", r"dyconv.conv_from_finer.conv.\1"),
        (r"DyConv\.2\.bn\.(\w+)", r"dyconv.conv_from_finer.norm.\1"),
        (r"AttnConv\.1\.(\w+)", r"dyconv.scale_attention.\1"),
        (r"relu\.fc\.0\.(\w+)", r"dyconv.activation.squeeze.\1"),
        (r"relu\.fc\.2\.(\w+)", r"dyconv.activation.expand.\1"),
        (r"offset\.(\w+)", r"dyconv.offset_conv.\1"),
    ],
}

# Original keys with nothing to load into, and why.
IGNORED_KEYS = [
    (r"rpn\.head\.cls_logits\.\w+", "80-class logits that GLIP never uses for scores (its loss is multiplied by 0)"),
    (r"rpn\.anchor_generator\.cell_anchors\.\d+", "buffer: anchors are recomputed from the config"),
    (r".*\.relative_position_index", "buffer: recomputed from the window size"),
    (r"language_backbone\.body\.model\.embeddings\.position_ids", "legacy buffer saved by transformers < 4.31"),
]

FIRST_CONV = SWIN + "swin.embeddings.patch_embeddings.projection.weight"


class ConversionError(ValueError):
    """The checkpoint does not match the architecture its YAML describes."""


def _literal(value):
    """yacs decodes string values of a YAML file as Python literals ("(2, 2, 6, 2)" -> tuple)."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _literal(value)
    return merged


YACS_KEYS_FILE = Path(__file__).parent / "data" / "original_yacs_keys.json"
KIND_DESCRIPTIONS = {
    "bool": "True or False", "int": "an integer", "float": "a float (write 2.0, not 2)", "str": "a string",
    "sequence": "a list or tuple",
}


@functools.cache
def original_yacs_keys() -> dict:
    """The original defaults' tree: key -> sub-tree, or the kind of its value ("bool", "int", "float", "str",
    "sequence"; "none": a None default, any value; "open": a node that takes any keys)."""
    return json.loads(YACS_KEYS_FILE.read_text(encoding="utf-8"))["keys"]


def _kind_matches(value, kind: str) -> bool:
    # yacs compares exact types (an int is no float, a bool no int); tuples and lists convert into each other.
    if kind == "none":
        return True
    if kind == "sequence":
        return isinstance(value, (list, tuple))
    return type(value) is {"bool": bool, "int": int, "float": float, "str": str}[kind]


def check_yaml_keys(tree: dict, path, schema: dict | None = None, prefix: str = "") -> None:
    """Raise `ConversionError` naming the file and the key for a key the original does not define or a value of
    another type than its default, as yacs' `merge_from_file` does."""
    schema = original_yacs_keys() if schema is None else schema
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConversionError(f"{path}: unknown key {name} (the original's config has no such setting){hint}")
        kind = schema[key]
        if kind == "open":
            continue
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise ConversionError(f"{path}: {name} must be a section of settings, got {value!r}")
            check_yaml_keys(value, path, kind, name + ".")
            continue
        decoded = _literal(value)
        if isinstance(decoded, dict) or not _kind_matches(decoded, kind):
            raise ConversionError(f"{path}: {name} must be {KIND_DESCRIPTIONS[kind]}, got {value!r}")


def load_original_yaml(path: str | Path) -> dict:
    """Read an original GLIP YAML, check it as yacs would, and merge it over the original's defaults.

    Raises `ConversionError` naming the file for unreadable or invalid YAML, a top level that is not a mapping, an
    unknown key or a value whose type differs from the original default's.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConversionError(f"{path} is not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"cannot read the YAML file {path}: {error}") from None
    if not isinstance(content, dict):
        raise ConversionError(f"{path} must hold a mapping of settings (MODEL: ..., INPUT: ...), got "
                              f"{type(content).__name__}")
    check_yaml_keys(content, path)
    return _merge(ORIGINAL_DEFAULTS, content)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def _check_supported(cfg: dict) -> None:
    model, dyhead = cfg["MODEL"], cfg["MODEL"]["DYHEAD"]
    fuse = dyhead["FUSE_CONFIG"]
    _require(model["RPN_ARCHITECTURE"] == "VLDYHEAD", f"only the VLDYHEAD head is supported, got {model['RPN_ARCHITECTURE']}")
    _require(model["BACKBONE"]["CONV_BODY"] == "SWINT-FPN-RETINANET",
             f"only the SWINT-FPN-RETINANET backbone is supported, got {model['BACKBONE']['CONV_BODY']}")
    _require(model["SWINT"]["VERSION"] == "v1" and not model["SWINT"]["APE"] and not model["SWINT"]["LAYER_SCALE"],
             "only Swin v1 without absolute position embedding or layer scale is supported")
    _require(model["LANGUAGE_BACKBONE"]["MODEL_TYPE"] == "bert-base-uncased",
             f"only a BERT text tower is supported, got {model['LANGUAGE_BACKBONE']['MODEL_TYPE']}")
    _require(model["LANGUAGE_BACKBONE"]["N_LAYERS"] == 1, "only LANGUAGE_BACKBONE.N_LAYERS = 1 is supported")
    _require(fuse["USE_DOT_PRODUCT_TOKEN_LOSS"], "only the dot-product token head is supported")
    _require(not fuse["EARLY_FUSE_ON"] or fuse["TYPE"] == "MHA-B", f"only MHA-B fusion is supported, got {fuse['TYPE']}")
    for flag in ("SEPARATE_BIDIRECTIONAL", "STABLE_SOFTMAX_2D", "ADD_LINEAR_LAYER", "USE_CONTRASTIVE_ALIGN_LOSS",
                 "USE_TOKEN_LOSS", "MLM_LOSS", "USE_SHALLOW_CONTRASTIVE_LOSS", "USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS"):
        _require(not fuse[flag], f"FUSE_CONFIG.{flag} = True is not supported")
    _require(not dyhead["CONV_FUNC"] and not dyhead["USE_NSYNCBN"] and not dyhead["USE_SYNCBN"],
             "only GroupNorm or no norm in the DyHead is supported")
    _require(dyhead["COSINE_SCALE"] <= 0, "DYHEAD.COSINE_SCALE is not supported")
    _require(dyhead["SCORE_AGG"] == "MEAN", f"only SCORE_AGG MEAN is supported, got {dyhead['SCORE_AGG']}")
    _require(model["RPN"]["USE_FPN"], "RPN.USE_FPN must be True")
    inputs = cfg["INPUT"]
    _require(inputs["TO_BGR255"] and not inputs["FORMAT"] and
             all(abs(a - b) < 1e-6 for a, b in zip(inputs["PIXEL_MEAN"] + inputs["PIXEL_STD"],
                                                   IMAGENET_BGR255_MEAN + IMAGENET_BGR255_STD)),
             "the YAML's pixel normalisation is not the ImageNet one GLIP releases use; it cannot be folded into a "
             f"channel flip (PIXEL_MEAN={inputs['PIXEL_MEAN']}, PIXEL_STD={inputs['PIXEL_STD']})")


def config_from_original(cfg: dict, text_config: BertConfig | None = None) -> GlipConfig:
    """Build the `GlipConfig` a merged original YAML describes. `text_config` defaults to bert-base-uncased's dims."""
    _check_supported(cfg)
    model = cfg["MODEL"]
    swin, dyhead, rpn, atss = model["SWINT"], model["DYHEAD"], model["RPN"], model["ATSS"]
    fuse = dyhead["FUSE_CONFIG"]
    text_config = text_config or BertConfig()
    lang_dim = model["LANGUAGE_BACKBONE"]["LANG_DIM"]
    _require(text_config.hidden_size == lang_dim,
             f"LANG_DIM {lang_dim} differs from the text tower's hidden size {text_config.hidden_size}; pass the BERT "
             "config the checkpoint was trained with (--text-config)")
    _require(not fuse["EARLY_FUSE_ON"] or fuse["JOINT_EMB_SIZE"] == dyhead["CHANNELS"],
             f"FUSE_CONFIG.JOINT_EMB_SIZE ({fuse['JOINT_EMB_SIZE']}) must equal DYHEAD.CHANNELS ({dyhead['CHANNELS']})")
    backbone_config = swin_backbone_config(
        embed_dim=swin["EMBED_DIM"], depths=list(swin["DEPTHS"]), num_heads=list(swin["NUM_HEADS"]),
        window_size=swin["WINDOW_SIZE"], mlp_ratio=float(swin["MLP_RATIO"]), drop_path_rate=swin["DROP_PATH_RATE"],
    )
    return GlipConfig(
        backbone_config=backbone_config,
        text_config=text_config,
        fpn_channels=model["BACKBONE"]["OUT_CHANNELS"],
        head_channels=dyhead["CHANNELS"],
        num_dyhead_layers=dyhead["NUM_CONVS"],
        early_fusion=fuse["EARLY_FUSE_ON"],
        fused_features_dot_product=fuse["USE_FUSED_FEATURES_DOT_PRODUCT"],
        fusion_clamp_min=fuse["CLAMP_MIN_FOR_UNDERFLOW"],
        fusion_clamp_max=fuse["CLAMP_MAX_FOR_OVERFLOW"],
        text_layer_clamp_min=fuse["CLAMP_BERTATTN_MIN_FOR_UNDERFLOW"],
        text_layer_clamp_max=fuse["CLAMP_BERTATTN_MAX_FOR_OVERFLOW"],
        clamp_dot_product=fuse["CLAMP_DOT_PRODUCT"],
        use_dyrelu=dyhead["USE_DYRELU"],
        use_deformable_conv=dyhead["USE_DFCONV"],
        use_group_norm=dyhead["USE_GN"],
        use_scale_aware_attention=dyhead["USE_DYFUSE"],
        group_norm_num_groups=model["GROUP_NORM"]["NUM_GROUPS"],
        group_norm_eps=model["GROUP_NORM"]["EPSILON"],
        anchor_sizes=list(rpn["ANCHOR_SIZES"]),
        anchor_strides=list(rpn["ANCHOR_STRIDE"]),
        anchor_aspect_ratios=list(rpn["ASPECT_RATIOS"]),
        anchor_octave_base=rpn["OCTAVE"],
        anchor_scales_per_octave=rpn["SCALES_PER_OCTAVE"],
        max_text_len=model["LANGUAGE_BACKBONE"]["MAX_QUERY_LEN"],
        prior_prob=dyhead["PRIOR_PROB"],
        log_scale_init=dyhead["LOG_SCALE"],
        atss_topk=atss["TOPK"],
        box_loss_weight=atss["REG_LOSS_WEIGHT"],
        focal_alpha=fuse["TOKEN_ALPHA"],
        focal_gamma=fuse["TOKEN_GAMMA"],
        legacy_upsampled_offset_reinterpretation=True,
    )


def processor_from_original(cfg: dict, tokenizer_path=None):
    """The `GlipProcessor` of a merged original YAML: test-time resize, padding, text length and post-processing."""
    from .image_processing_glip import GlipImageProcessor
    from .processing_glip import GlipProcessor, load_tokenizer

    inputs, atss = cfg["INPUT"], cfg["MODEL"]["ATSS"]
    image_processor = GlipImageProcessor(
        size={"shortest_edge": int(inputs["MIN_SIZE_TEST"]), "longest_edge": int(inputs["MAX_SIZE_TEST"])},
        size_divisibility=int(cfg["DATALOADER"]["SIZE_DIVISIBILITY"]),
    )
    return GlipProcessor(
        image_processor, load_tokenizer(tokenizer_path),
        max_text_len=cfg["MODEL"]["LANGUAGE_BACKBONE"]["MAX_QUERY_LEN"], candidate_threshold=atss["INFERENCE_TH"],
        pre_nms_top_n=atss["PRE_NMS_TOP_N"], nms_threshold=atss["NMS_TH"],
        detections_per_image=atss["DETECTIONS_PER_IMG"], separator=cfg["DATASETS"]["SEPARATION_TOKENS"],
    )


def _substitute(template: str, match: re.Match) -> str:
    """Fill \\N groups, then evaluate "{\\N+k}" / "{\\N-k}" index arithmetic."""
    name = match.expand(template)
    return re.sub(r"\{(\d+)([+-]\d+)\}", lambda m: str(int(m.group(1)) + int(m.group(2))), name)


def _tower_parts(config: GlipConfig) -> list[tuple[int, str]]:
    """(layer index, part) for each module of the original's `dyhead_tower`, in order."""
    parts = []
    for layer, has_text in enumerate(config.has_text_layer):
        if config.early_fusion:
            # Without a text layer the original puts a parameter-free DummyLayer in its place.
            parts += [(layer, "fusion"), (layer, "text_layer" if has_text else "dummy")]
        parts.append((layer, "dyconv"))
    return parts


def rename_key(key: str, config: GlipConfig) -> str | None:
    """Our key for an original key (without "module."), or None when the key is ignored.

    Raises `ConversionError` for a key no rule covers. Fused Swin qkv keys come back with a literal "{q,k,v}".
    """
    if any(re.fullmatch(pattern, key) for pattern, _ in IGNORED_KEYS):
        return None
    tower = re.fullmatch(r"rpn\.head\.dyhead_tower\.(\d+)\.(.+)", key)
    if tower:
        parts = _tower_parts(config)
        index = int(tower.group(1))
        if index >= len(parts):
            raise ConversionError(f"{key}: the config has only {len(parts)} DyHead tower modules")
        layer, part = parts[index]
        for pattern, template in TOWER_RULES.get(part, []):
            match = re.fullmatch(pattern, tower.group(2))
            if match:
                return f"model.layers.{layer}." + _substitute(template, match)
        raise ConversionError(f"{key}: tower module {index} is a {part} in this config and has no such weight")
    for pattern, template in RENAME_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return _substitute(template, match)
    raise ConversionError(f"{key}: no rename rule covers this key")


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The `model` state dict of a released file (or a bare state dict), without the DDP "module." prefix."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"checkpoint {path} does not exist") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        # Empty and truncated files, and anything weights_only refuses to unpickle.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"cannot read the checkpoint {path} (empty, truncated or not a PyTorch file): "
                              f"{reason}") from None
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ConversionError(f"{path} holds no state dict (expected a dict with a 'model' entry)")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def convert_state_dict(original: dict[str, torch.Tensor], config: GlipConfig) -> dict[str, torch.Tensor]:
    """Rename every original weight to our layout; split fused Swin qkv; flip the first conv to RGB input.

    Raises `ConversionError` listing every key that cannot be converted.
    """
    converted, problems = {}, []
    for key, tensor in original.items():
        try:
            new_key = rename_key(key, config)
        except ConversionError as error:
            problems.append(str(error))
            continue
        if new_key is None:
            continue
        if "{q,k,v}" in new_key:
            for name, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                converted[new_key.replace("{q,k,v}", name)] = chunk.clone()
        else:
            converted[new_key] = tensor
    if problems:
        raise ConversionError("unexpected keys in the checkpoint:\n  " + "\n  ".join(problems))
    if FIRST_CONV in converted:
        # The original normalises BGR images with BGR-ordered ImageNet statistics x 255; ours takes RGB with the
        # standard statistics, so both see the same numbers once the input channels are reversed.
        converted[FIRST_CONV] = converted[FIRST_CONV].flip(1).contiguous()
    return converted


def check_against_model(converted: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Raise `ConversionError` listing every missing, unexpected or mis-shaped key, all at once."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(converted)
        if tuple(converted[k].shape) != tuple(expected[k])
    )
    sections = [(title, items) for title, items in (
        ("missing from the checkpoint", missing), ("not in the model", unexpected), ("mis-shaped", mis_shaped),
    ) if items]
    if sections:
        lines = [f"{title} ({len(items)}):\n  " + "\n  ".join(items) for title, items in sections]
        raise ConversionError(
            "The checkpoint does not match the architecture of its YAML (is it the right variant?)\n" + "\n".join(lines)
        )


def convert_checkpoint(checkpoint_path, yaml_path, text_config: BertConfig | None = None):
    """Load an original checkpoint + YAML and return a `GlipForGrounding` (eval mode) holding its weights."""
    from transformers.initialization import no_init_weights

    from .modeling_glip import GlipForGrounding

    config = config_from_original(load_original_yaml(yaml_path), text_config)
    converted = convert_state_dict(load_original_checkpoint(checkpoint_path), config)
    with no_init_weights():  # every weight is overwritten below
        model = GlipForGrounding(config)
    check_against_model(converted, model)
    model.load_state_dict(converted, strict=True)
    return model.eval()
