"""GLIP in transformers form: outputs, the pre-trained model base, `GlipModel` and `GlipForGrounding`."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, BertModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .box_ops_glip import GlipBoxCoder
from .configuration_glip import GlipConfig
from .deform_conv_glip import ModulatedDeformConv2d
from .fusion_glip import GlipDyHeadLayer, GlipFusionBlock
from .head_glip import GlipAnchorGenerator, GlipGroundingHead, Scale
from .loading_glip import ClearLoadingErrorsMixin
from .loss_glip import GlipLoss
from .model_card_glip import write_model_card
from .speed_glip import prompt_rows_per_pass
from .vision_glip import (
    GlipVisionBackbone,
    flatten_levels,
    load_pretrained_backbone_weights,
    load_tower_weights,
    pretrained_backbone_config,
)


@dataclass
class GlipModelOutput(ModelOutput):
    """
    Outputs of [`GlipModel`]. A = number of anchors (locations of P3..P7), T = text length.

    Args:
        vision_features (`list[torch.FloatTensor]`): the DyHead tower's output per level, each (B, C, H_l, W_l).
        text_features (`torch.FloatTensor` of shape (B, T, D)): the text features the token logits are scored
            with (fused ones when `fused_features_dot_product`, else the text tower's masked output).
        text_mask (`torch.LongTensor` of shape (B, T)): 1 on real tokens.
        spatial_shapes (`torch.LongTensor` of shape (5, 2)): (H_l, W_l) of P3..P7.
        backbone_features (`tuple(torch.FloatTensor)`): C3, C4, C5 from the vision backbone.
        fpn_features (`tuple(torch.FloatTensor)`): P3..P7.
        text_encoder_hidden_states (`tuple(torch.FloatTensor)`, when `output_hidden_states`): embeddings and every
            layer of the text tower, each (B, T, D).
        vision_hidden_states (`tuple(torch.FloatTensor)`, when `output_hidden_states`): the flattened (B, A, C)
            visual features entering the DyHead, then after each DyHead layer.
        text_hidden_states (`tuple(torch.FloatTensor)`, when `output_hidden_states`): the (B, T, D) text entering
            the DyHead, then after each DyHead layer.
        fusion_vision_hidden_states, fusion_text_hidden_states (`tuple(torch.FloatTensor)`, when
            `output_hidden_states` and early fusion is on): the outputs of each layer's cross-attention block.
    """

    vision_features: list | None = None
    text_features: torch.FloatTensor | None = None
    text_mask: torch.LongTensor | None = None
    spatial_shapes: torch.LongTensor | None = None
    backbone_features: tuple | None = None
    fpn_features: tuple | None = None
    text_encoder_hidden_states: tuple | None = None
    vision_hidden_states: tuple | None = None
    text_hidden_states: tuple | None = None
    fusion_vision_hidden_states: tuple | None = None
    fusion_text_hidden_states: tuple | None = None


@dataclass
class GlipGroundingOutput(GlipModelOutput):
    """
    Outputs of [`GlipForGrounding`]: those of [`GlipModel`] and the head's. A = number of anchors over P3..P7 (in
    that order), T = text length.

    Args:
        loss (`torch.FloatTensor`, when `labels` are given): the total training loss.
        loss_dict (`dict[str, torch.Tensor]`, when `labels` are given): its terms `loss_dot_product_token`,
            `loss_reg`, `loss_centerness`, and `num_positive_anchors`.
        logits (`torch.FloatTensor` of shape (B, A, T)): token logits; sigmoid gives the token probabilities.
        pred_boxes (`torch.FloatTensor` of shape (B, A, 4)): decoded boxes, absolute xyxy pixels of the padded input.
        centerness (`torch.FloatTensor` of shape (B, A)): centerness logits.
        box_regression (`torch.FloatTensor` of shape (B, A, 4)): the raw (dx, dy, dw, dh) before decoding.
        anchors (`torch.FloatTensor` of shape (B, A, 4)): the anchors, xyxy pixels of the padded input.
        Other fields: as in [`GlipModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    centerness: torch.FloatTensor | None = None
    box_regression: torch.FloatTensor | None = None
    anchors: torch.FloatTensor | None = None


# What GlipProcessor and the training collators return besides model inputs (for post-processing and evaluation):
# `model(**inputs)` accepts and ignores these; any other unexpected keyword argument is an error.
NON_MODEL_INPUT_KEYS = frozenset({"image_sizes", "original_sizes", "token_maps", "label_ids", "text_labels",
                                  "image_ids"})


def _check_extra_inputs(method: str, extra_inputs: dict) -> None:
    unexpected = sorted(set(extra_inputs) - NON_MODEL_INPUT_KEYS)
    if unexpected:
        raise TypeError(f"{method} got unexpected keyword arguments {unexpected}")


# The original's initialisation of leaf layers, by where they sit (module-name patterns); other Linear and Conv2d
# layers draw N(0, init_std).
LEAF_INIT_RULES = (
    (re.compile(r"(^|\.)fusion\.attention\."), "xavier"),
    (re.compile(r"(^|\.)text_layer\."), "text"),
    (re.compile(r"(^|\.)vision_backbone\.fpn\."), "kaiming_uniform"),
    # Deformable offsets start at zero: a plain conv with 0.5 modulation (DCNv2 practice).
    (re.compile(r"(^|\.)offset_conv$"), "zeros"),
)


class _BertWithoutPooler(BertModel):
    """BERT without its pooler, GLIP's text tower: a checkpoint's pooler weights are expected to go unused."""

    _keys_to_ignore_on_load_unexpected = [r"^pooler\."]


def _own_cpu_memory_(model: nn.Module) -> None:
    """Give every CPU parameter and buffer memory of its own.

    transformers loads safetensors weights as views into a copy-on-write map of the file: a later in-place rewrite
    of that file (`cp`, `shutil.copyfile`) then changes the loaded weights, and the views start at the file's byte
    offsets rather than on 64-byte boundaries, which changes the CPU kernels' summation order. Shared parameters stay
    shared: each Parameter object is visited once.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


class GlipPreTrainedModel(ClearLoadingErrorsMixin, PreTrainedModel):
    config: GlipConfig
    config_class = GlipConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # `attn_implementation` ("eager": the original's arithmetic with its clamps; "sdpa", the default: fused kernels,
    # the cross-attention folded on CPU, see `speed_glip`) covers the DyHead and the BERT text tower.
    _supports_sdpa = True
    _no_split_modules = ["GlipDyHeadLayer"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        _own_cpu_memory_(model)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, plus a `README.md` model card (never replacing a README of the user's)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(save_directory, self.config, parameters=self.num_parameters())

    @classmethod
    def from_vision_text_pretrained(cls, vision_name_or_path: str, text_name_or_path: str, *,
                                    vision_weights_file=None, vision_backbone_kwargs: dict | None = None,
                                    **config_overrides):
        """A GLIP whose vision and text towers start from pretrained checkpoints; the FPN, the DyHead and the head
        start from GLIP's initialisation. The paper starts from an ImageNet Swin and bert-base-uncased.

        Args:
            vision_name_or_path: a transformers backbone checkpoint, Hub id or folder (Swin, ConvNeXt, ResNet, ...;
                its last three stages feed the FPN), or "timm/<model name>" for a timm model (its last three
                feature levels).
            text_name_or_path: a BERT checkpoint, Hub id or folder.
            vision_weights_file: for a timm model, a local weights file of the full timm model (else the Hub).
            vision_backbone_kwargs: fields of the backbone config (`out_features`, `out_indices`,
                `freeze_batch_norm_2d`, ...).
            config_overrides: `GlipConfig` fields (sizes of the pyramid and the DyHead, anchors, ...).
        """
        text_config = AutoConfig.from_pretrained(text_name_or_path)
        if text_config.model_type != "bert":
            raise ValueError(f"text_name_or_path {text_name_or_path!r} holds a {text_config.model_type!r} model; "
                             "GLIP's text tower is a BERT model")
        backbone_config = pretrained_backbone_config(vision_name_or_path, **(vision_backbone_kwargs or {}))
        model = cls(GlipConfig(backbone_config=backbone_config, text_config=text_config, **config_overrides))
        base = getattr(model, cls.base_model_prefix, model)
        load_pretrained_backbone_weights(base.vision_backbone.backbone, vision_name_or_path, vision_weights_file)
        text = _BertWithoutPooler.from_pretrained(text_name_or_path, add_pooling_layer=False)
        load_tower_weights(base.text_backbone, text.state_dict(), text_name_or_path)
        return model

    def _leaf_init_rule(self, module: nn.Module) -> str:
        # transformers calls `_init_weights` only on modules with parameters of their own (for code outside its
        # package), so rules of leaves inside our blocks are looked up by the leaf's name.
        names = self.__dict__.setdefault("_module_names", {})
        if module not in names:
            names.clear()
            names.update((child, name) for name, child in self.named_modules())
        name = names.get(module, "")
        return next((rule for pattern, rule in LEAF_INIT_RULES if pattern.search(name)), "normal")

    @torch.no_grad()
    def _init_weights(self, module):
        config = self.config
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            rule = self._leaf_init_rule(module)
            if rule == "xavier":
                init.xavier_uniform_(module.weight)
            elif rule == "kaiming_uniform":
                init.kaiming_uniform_(module.weight, a=1)
            elif rule == "zeros":
                init.zeros_(module.weight)
            elif rule == "text":
                init.normal_(module.weight, std=config.text_config.initializer_range)
            else:
                init.normal_(module.weight, std=config.init_std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ModulatedDeformConv2d):
            init.normal_(module.weight, std=config.init_std)
            init.zeros_(module.bias)
        elif isinstance(module, GlipModel) and module.prompt_embeddings is not None:
            init.zeros_(module.prompt_embeddings)
        elif isinstance(module, GlipFusionBlock):
            init.constant_(module.vision_gamma, config.fusion_layer_scale_init)
            init.constant_(module.text_gamma, config.fusion_layer_scale_init)
        elif isinstance(module, GlipGroundingHead):
            init.constant_(module.log_scale, module.log_scale_init)
            init.zeros_(module.text_bias)
            init.constant_(module.logit_bias, module.prior_bias)
        elif isinstance(module, Scale):
            init.ones_(module.scale)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class GlipModel(GlipPreTrainedModel):
    """Vision tower + FPN, BERT text tower, and the vision-language DyHead of GLIP."""

    def __init__(self, config: GlipConfig):
        super().__init__(config)
        self.vision_backbone = GlipVisionBackbone(config)
        self.text_backbone = BertModel(config.text_config, add_pooling_layer=False)
        self.layers = nn.ModuleList(GlipDyHeadLayer(config, has_text) for has_text in config.has_text_layer)
        self.prompt_embeddings = None
        if config.prompt_tuning:
            self.prompt_embeddings = nn.Parameter(torch.zeros(config.max_text_len, config.text_config.hidden_size))
        self.gradient_checkpointing = False
        self.post_init()

    def _check_inputs(self, pixel_values, input_ids, attention_mask, image_index, text_features=None):
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (batch, 3, height, width), got shape {tuple(pixel_values.shape)}")
        if (input_ids is None) == (text_features is None):
            raise ValueError("Give either input_ids or text_features (from encode_prompt), not both and not neither")
        text_name, text_inputs = ("input_ids", input_ids) if text_features is None else ("text_features", text_features)
        if text_features is not None and (
            text_features.dim() != 3 or text_features.shape[-1] != self.config.text_config.hidden_size
        ):
            raise ValueError(
                f"text_features must be (batch, text_length, {self.config.text_config.hidden_size}) from encode_prompt, "
                f"got shape {tuple(text_features.shape)}"
            )
        if text_features is None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, text_length), got shape {tuple(input_ids.shape)}")
        if image_index is None and pixel_values.shape[0] != text_inputs.shape[0]:
            raise ValueError(
                f"Batch sizes differ: pixel_values has {pixel_values.shape[0]} images but {text_name} has "
                f"{text_inputs.shape[0]} captions; give one caption per image, or image_index to say which image each "
                "caption belongs to"
            )
        if image_index is not None and image_index.shape != text_inputs.shape[:1]:
            raise ValueError(
                f"image_index must have one entry per caption ({text_inputs.shape[0]}), got shape {tuple(image_index.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != text_inputs.shape[:2]:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must be (batch, text_length) of {text_name} "
                f"{tuple(text_inputs.shape)}"
            )
        if text_inputs.shape[1] > self.config.max_text_len:
            raise ValueError(
                f"The text has {text_inputs.shape[1]} tokens, more than max_text_len={self.config.max_text_len}; "
                "split long class lists into several prompts (GlipProcessor does this)"
            )
        min_side = max(self.config.anchor_strides)
        if min(pixel_values.shape[-2:]) < min_side:
            raise ValueError(
                f"The image is {tuple(pixel_values.shape[-2:])} pixels; GLIP needs at least {min_side} per side, its "
                "coarsest stride. Resize (GlipImageProcessor) or pad it."
            )

    def encode_text(self, input_ids, attention_mask, token_type_ids=None, output_hidden_states=False):
        """Returns the text tower's last hidden state (B, T, D) and, if asked, all its hidden states."""
        text_mask = attention_mask
        if self.text_backbone.config._attn_implementation == "sdpa":
            # A prepared (B, 1, 1, T) boolean mask: from a 2-D one, transformers first asks whether any token is
            # padded (`mask.all()`), which synchronises the GPU with the host.
            text_mask = attention_mask.bool()[:, None, None, :]
        text_outputs = self.text_backbone(
            input_ids=input_ids, attention_mask=text_mask, token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
        )
        return text_outputs.last_hidden_state, text_outputs.hidden_states

    def encode_prompt(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.FloatTensor:
        """The text tower's output (B, T, D) for tokenised prompts, to pass as `text_features` to `forward` (with the
        same `attention_mask`) instead of `input_ids`: one class list run over many images pays the text tower once.
        The detections are those of the full path."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.encode_text(input_ids, attention_mask, token_type_ids)[0]

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        image_index: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        text_features: torch.FloatTensor | None = None,
        **processor_outputs,
    ) -> GlipModelOutput:
        r"""
        pixel_values (N, 3, H, W): normalised RGB images, zero-padded at the bottom/right to a common size.
        input_ids, attention_mask, token_type_ids (B, T): the tokenised captions; T at most `max_text_len`.
        image_index (B,): the image of each caption, so that several prompts (different prompts, or chunks of a long
            class list) share one run of the vision tower. Default: caption b goes with image b (N == B).
        text_features (B, T, D): `encode_prompt`'s output, given instead of `input_ids` (then the text tower does not
            run and `text_encoder_hidden_states` is None).
        pixel_mask (B, H, W): accepted for API compatibility and not used: as in the original, the padded canvas is
            part of the input, so pad images to the same multiple of 32 (GlipImageProcessor does) for stable results.
        processor_outputs: the other keys of GlipProcessor's output (`NON_MODEL_INPUT_KEYS`), ignored; anything
            else raises a TypeError.
        """
        _check_extra_inputs(f"{type(self).__name__}.forward()", processor_outputs)
        output_hidden_states = output_hidden_states if output_hidden_states is not None else (
            self.config.output_hidden_states
        )
        self._check_inputs(pixel_values, input_ids, attention_mask, image_index, text_features)
        text_inputs = input_ids if text_features is None else text_features
        if attention_mask is None:
            attention_mask = torch.ones(text_inputs.shape[:2], dtype=torch.long, device=text_inputs.device)

        backbone_features, vision_features = self.vision_backbone(pixel_values)
        rows = text_inputs.shape[0]
        group = self.config.max_prompts_per_pass or prompt_rows_per_pass(pixel_values, rows)
        if image_index is None and group >= rows:
            return self._fuse(backbone_features, vision_features, input_ids, attention_mask, token_type_ids,
                              output_hidden_states, text_features)
        if image_index is None:
            image_index = torch.arange(rows, device=pixel_values.device)
        image_index = image_index.to(pixel_values.device)
        # Rows (prompts) go through the text tower and the DyHead in groups, each gathering its images' features:
        # the vision tower ran once, and peak memory follows the group size rather than the number of prompts.
        outputs = []
        for start in range(0, rows, group):
            index = image_index[start : start + group]
            outputs.append(self._fuse(
                [feature[index] for feature in backbone_features], [feature[index] for feature in vision_features],
                *(None if rows_input is None else rows_input[start : start + group]
                  for rows_input in (input_ids, attention_mask, token_type_ids)),
                output_hidden_states,
                None if text_features is None else text_features[start : start + group],
            ))
        return outputs[0] if len(outputs) == 1 else _concatenate_rows(outputs)

    def _fuse(self, backbone_features, vision_features, input_ids, attention_mask, token_type_ids,
              output_hidden_states, text_features=None) -> GlipModelOutput:
        """Text tower (unless its `text_features` are given) and DyHead for rows whose vision features are already
        gathered (one image per row)."""
        text_encoder_states = None
        if text_features is None:
            text_features, text_encoder_states = self.encode_text(
                input_ids, attention_mask, token_type_ids, output_hidden_states
            )
        # The unfused dot product scores with the masked text tower output ("embedded" in the original).
        unfused_text = text_features * attention_mask[..., None].to(text_features.dtype)
        if self.prompt_embeddings is not None:
            # Prompt tuning adds the same learnt vectors to both, after the mask, as the original's tunable_linear.
            prompt = self.prompt_embeddings[: text_features.shape[1]].to(text_features.dtype)
            text_features, unfused_text = text_features + prompt, unfused_text + prompt

        fpn_features = tuple(vision_features)
        num_levels = len(vision_features)
        vision_states, text_states = [flatten_levels(vision_features)], [text_features]
        fusion_vision_states, fusion_text_states = [], []
        for layer in self.layers:
            fused_text, text_features, *level_outputs = layer(text_features, attention_mask, *vision_features)
            fused_vision, vision_features = level_outputs[:num_levels], level_outputs[num_levels:]
            if output_hidden_states:
                vision_states.append(flatten_levels(vision_features))
                text_states.append(text_features)
                if layer.fusion is not None:
                    fusion_vision_states.append(flatten_levels(fused_vision))
                    fusion_text_states.append(fused_text)

        spatial_shapes = torch.tensor([f.shape[-2:] for f in vision_features], dtype=torch.long)
        return GlipModelOutput(
            vision_features=vision_features,
            text_features=text_features if self.config.fused_features_dot_product else unfused_text,
            text_mask=attention_mask,
            spatial_shapes=spatial_shapes,
            backbone_features=tuple(backbone_features) if output_hidden_states else None,
            fpn_features=fpn_features if output_hidden_states else None,
            text_encoder_hidden_states=text_encoder_states,
            vision_hidden_states=tuple(vision_states) if output_hidden_states else None,
            text_hidden_states=tuple(text_states) if output_hidden_states else None,
            fusion_vision_hidden_states=tuple(fusion_vision_states) if fusion_vision_states else None,
            fusion_text_hidden_states=tuple(fusion_text_states) if fusion_text_states else None,
        )


def _concatenate_rows(outputs: list[GlipModelOutput]) -> GlipModelOutput:
    """One output from per-group outputs: batch-first tensors (and tuples of them) concatenated over the groups."""
    merged = {}
    for key, first in outputs[0].items():
        if key == "spatial_shapes":
            merged[key] = first
        elif isinstance(first, torch.Tensor):
            merged[key] = torch.cat([output[key] for output in outputs])
        else:
            merged[key] = type(first)(torch.cat(parts) for parts in zip(*(output[key] for output in outputs)))
    return GlipModelOutput(**merged)


class GlipForGrounding(GlipPreTrainedModel):
    """GLIP with its ATSS grounding head: per-anchor token logits, boxes and centerness."""

    def __init__(self, config: GlipConfig):
        super().__init__(config)
        self.model = GlipModel(config)
        self.head = GlipGroundingHead(config)
        self.anchor_generator = GlipAnchorGenerator(
            sizes=config.anchor_sizes, strides=config.anchor_strides, aspect_ratios=config.anchor_aspect_ratios,
            octave_base=config.anchor_octave_base, scales_per_octave=config.anchor_scales_per_octave,
        )
        self.box_coder = GlipBoxCoder(weights=config.box_coder_weights, max_log_scale=config.box_coder_max_log_scale)
        self.loss_function = GlipLoss(
            self.box_coder, topk=config.atss_topk, focal_alpha=config.focal_alpha, focal_gamma=config.focal_gamma,
            box_loss_weight=config.box_loss_weight,
        )
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for tower in (self.model.vision_backbone, self.model.text_backbone):
                if not any(parameter.requires_grad for parameter in tower.parameters()):
                    tower.eval()  # a frozen tower keeps its inference behaviour (no dropout, no drop path)
        return self

    def encode_prompt(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.FloatTensor:
        """See [`GlipModel.encode_prompt`]: `model(pixel_values, text_features=model.encode_prompt(ids, mask),
        attention_mask=mask)` gives the outputs of `model(pixel_values, ids, mask)`."""
        return self.model.encode_prompt(input_ids, attention_mask, token_type_ids)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        image_index: torch.LongTensor | None = None,
        labels: list[dict] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        text_features: torch.FloatTensor | None = None,
        **processor_outputs,
    ) -> GlipGroundingOutput:
        r"""
        See [`GlipModel.forward`] for the inputs. Returns [`GlipGroundingOutput`].

        labels (`list[dict]`, *optional*): one dict per caption row with "boxes" (n, 4) xyxy in input pixels and
            "token_map" (n, T) 0/1 tokens of each box's phrase (see `loss_glip`). When given, `loss` is computed.
        """
        _check_extra_inputs(f"{type(self).__name__}.forward()", processor_outputs)
        outputs = self.model(
            pixel_values, input_ids, attention_mask, token_type_ids, pixel_mask, image_index,
            output_hidden_states=output_hidden_states, text_features=text_features,
        )
        logits, box_regression, centerness = self.head(outputs.vision_features, outputs.text_features)
        anchors = self.anchor_generator(outputs.spatial_shapes.tolist(), logits.device, box_regression.dtype)
        pred_boxes = self.box_coder.decode(box_regression, anchors[None])
        loss = loss_dict = None
        if labels is not None:
            anchors_per_level = [int(h * w) for h, w in outputs.spatial_shapes.tolist()]
            loss_dict = self.loss_function(
                logits, box_regression, centerness, anchors, anchors_per_level, outputs.text_mask, labels
            )
            loss = loss_dict["loss"]
        return GlipGroundingOutput(
            **outputs,
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            centerness=centerness,
            box_regression=box_regression,
            anchors=anchors[None].expand(logits.shape[0], -1, -1),
        )


__all__ = ["GlipModel", "GlipForGrounding", "GlipPreTrainedModel", "GlipModelOutput", "GlipGroundingOutput"]
