"""GLIP in transformers form: outputs, the pre-trained model base, `GlipModel` and `GlipForGrounding`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .box_ops_glip import GlipBoxCoder
from .configuration_glip import GlipConfig
from .deform_conv_glip import ModulatedDeformConv2d
from .fusion_glip import GlipDyHeadLayer, GlipFusionBlock, flatten_levels
from .head_glip import GlipAnchorGenerator, GlipGroundingHead, Scale
from .loading_glip import ClearLoadingErrorsMixin
from .loss_glip import GlipLoss
from .vision_glip import GlipVisionBackbone


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
class GlipGroundingOutput(ModelOutput):
    """
    Outputs of [`GlipForGrounding`]. A = number of anchors over P3..P7 (in that order), T = text length.

    Args:
        loss (`torch.FloatTensor`, when `labels` are given): the total training loss.
        loss_dict (`dict[str, torch.Tensor]`, when `labels` are given): its terms `loss_dot_product_token`,
            `loss_reg`, `loss_centerness`, and `num_positive_anchors`.
        logits (`torch.FloatTensor` of shape (B, A, T)): token logits; sigmoid gives the token probabilities.
        pred_boxes (`torch.FloatTensor` of shape (B, A, 4)): decoded boxes, absolute xyxy pixels of the padded input.
        centerness (`torch.FloatTensor` of shape (B, A)): centerness logits.
        box_regression (`torch.FloatTensor` of shape (B, A, 4)): the raw (dx, dy, dw, dh) before decoding.
        anchors (`torch.FloatTensor` of shape (B, A, 4)): the anchors, xyxy pixels of the padded input.
        spatial_shapes (`torch.LongTensor` of shape (5, 2)): (H_l, W_l) of P3..P7.
        text_mask (`torch.LongTensor` of shape (B, T)): 1 on real tokens.
        Other fields: as in [`GlipModelOutput`], filled when `output_hidden_states`.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    centerness: torch.FloatTensor | None = None
    box_regression: torch.FloatTensor | None = None
    anchors: torch.FloatTensor | None = None
    spatial_shapes: torch.LongTensor | None = None
    text_mask: torch.LongTensor | None = None
    backbone_features: tuple | None = None
    fpn_features: tuple | None = None
    text_encoder_hidden_states: tuple | None = None
    vision_hidden_states: tuple | None = None
    text_hidden_states: tuple | None = None
    fusion_vision_hidden_states: tuple | None = None
    fusion_text_hidden_states: tuple | None = None


FUSION_ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "folded", "eager")
# Default pixels of prompt rows per DyHead pass on CPUs (see GlipModel._default_rows_per_pass).
CPU_PIXELS_PER_PASS = 512 * 512


class GlipPreTrainedModel(ClearLoadingErrorsMixin, PreTrainedModel):
    config: GlipConfig
    config_class = GlipConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["GlipDyHeadLayer"]

    def set_fusion_attention(self, implementation: str) -> None:
        """How the cross-attention and the DyHead's BERT layers compute attention.

        - "auto" (default): "folded" on CPU, "sdpa" elsewhere.
        - "sdpa": fused kernels (`scaled_dot_product_attention`), nothing of size tokens x tokens kept.
        - "folded": the cross-attention's logits and probabilities are materialised, and its three projections of the
          many visual tokens are folded into the few text tokens (2.6x fewer FLOPs); the BERT layers use SDPA.
        - "eager": the original's arithmetic with its +-50000 clamps, the bit-level reference.
        """
        if implementation not in FUSION_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {FUSION_ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
        for module in self.modules():
            if hasattr(module, "attention_implementation"):
                module.attention_implementation = implementation

    @torch.no_grad()
    def _init_weights(self, module):
        # transformers visits children first and, for code outside its package, skips modules without parameters of
        # their own; so every rule lives on a module that owns its parameters. Leaves inside our blocks carry a
        # `glip_init` tag naming their rule.
        config = self.config
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            rule = getattr(module, "glip_init", "normal")
            if rule == "xavier":
                init.xavier_uniform_(module.weight)
            elif rule == "kaiming_uniform":
                init.kaiming_uniform_(module.weight, a=1)
            elif rule == "zeros":  # deformable offsets: start as a plain conv with 0.5 modulation (DCNv2 practice)
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

    def _check_inputs(self, pixel_values, input_ids, attention_mask, image_index):
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (batch, 3, height, width), got shape {tuple(pixel_values.shape)}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, text_length), got shape {tuple(input_ids.shape)}")
        if image_index is None and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"Batch sizes differ: pixel_values has {pixel_values.shape[0]} images but input_ids has "
                f"{input_ids.shape[0]} captions; give one caption per image, or image_index to say which image each "
                "caption belongs to"
            )
        if image_index is not None and image_index.shape != input_ids.shape[:1]:
            raise ValueError(
                f"image_index must have one entry per caption ({input_ids.shape[0]}), got shape {tuple(image_index.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
            )
        if input_ids.shape[1] > self.config.max_text_len:
            raise ValueError(
                f"The text has {input_ids.shape[1]} tokens, more than max_text_len={self.config.max_text_len}; "
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

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        image_index: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> GlipModelOutput:
        r"""
        pixel_values (N, 3, H, W): normalised RGB images, zero-padded at the bottom/right to a common size.
        input_ids, attention_mask, token_type_ids (B, T): the tokenised captions; T at most `max_text_len`.
        image_index (B,): the image of each caption, so that several prompts (different prompts, or chunks of a long
            class list) share one run of the vision tower. Default: caption b goes with image b (N == B).
        pixel_mask (B, H, W): accepted for API compatibility and not used: as in the original, the padded canvas is
            part of the input, so pad images to the same multiple of 32 (GlipImageProcessor does) for stable results.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else (
            self.config.output_hidden_states
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_inputs(pixel_values, input_ids, attention_mask, image_index)

        backbone_features, vision_features = self.vision_backbone(pixel_values)
        rows = input_ids.shape[0]
        group = self.config.max_prompts_per_pass or self._default_rows_per_pass(pixel_values, rows)
        if image_index is None and group >= rows:
            return self._fuse(backbone_features, vision_features, input_ids, attention_mask, token_type_ids,
                              output_hidden_states)
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
                input_ids[start : start + group], attention_mask[start : start + group],
                None if token_type_ids is None else token_type_ids[start : start + group], output_hidden_states,
            ))
        return outputs[0] if len(outputs) == 1 else _concatenate_rows(outputs)

    @staticmethod
    def _default_rows_per_pass(pixel_values: torch.Tensor, rows: int) -> int:
        """All rows on accelerators. On CPUs, as many rows as make CPU_PIXELS_PER_PASS: large maps run faster a
        few at a time (caches: four 800x800 COCO rows take 16.5 s one by one against 23.5 s at once), while small
        inputs are bound by per-operation overhead and run faster together."""
        if pixel_values.device.type != "cpu":
            return rows
        return max(1, CPU_PIXELS_PER_PASS // (pixel_values.shape[-2] * pixel_values.shape[-1]))

    def _fuse(self, backbone_features, vision_features, input_ids, attention_mask, token_type_ids,
              output_hidden_states) -> GlipModelOutput:
        """Text tower and DyHead for rows whose vision features are already gathered (one image per row)."""
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
        text_dim = config.text_config.hidden_size
        self.head = GlipGroundingHead(
            config.head_channels, text_dim, len(config.anchor_strides), config.prior_prob, config.log_scale_init,
            config.clamp_dot_product,
        )
        self.anchor_generator = GlipAnchorGenerator(
            config.anchor_sizes, config.anchor_strides, config.anchor_aspect_ratios, config.anchor_octave_base,
            config.anchor_scales_per_octave,
        )
        self.box_coder = GlipBoxCoder(config.box_coder_weights, config.box_coder_max_log_scale)
        self.loss_function = GlipLoss(
            self.box_coder, config.atss_topk, config.focal_alpha, config.focal_gamma, config.box_loss_weight
        )
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for tower in (self.model.vision_backbone, self.model.text_backbone):
                if not any(parameter.requires_grad for parameter in tower.parameters()):
                    tower.eval()  # a frozen tower keeps its inference behaviour (no dropout, no drop path)
        return self

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        image_index: torch.LongTensor | None = None,
        labels: list[dict] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> GlipGroundingOutput:
        r"""
        See [`GlipModel.forward`] for the inputs. Returns [`GlipGroundingOutput`].

        labels (`list[dict]`, *optional*): one dict per caption row with "boxes" (n, 4) xyxy in input pixels and
            "token_map" (n, T) 0/1 tokens of each box's phrase (see `loss_glip`). When given, `loss` is computed.
        """
        outputs = self.model(
            pixel_values, input_ids, attention_mask, token_type_ids, pixel_mask, image_index,
            output_hidden_states=output_hidden_states,
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
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            centerness=centerness,
            box_regression=box_regression,
            anchors=anchors[None].expand(logits.shape[0], -1, -1),
            spatial_shapes=outputs.spatial_shapes,
            text_mask=outputs.text_mask,
            backbone_features=outputs.backbone_features,
            fpn_features=outputs.fpn_features,
            text_encoder_hidden_states=outputs.text_encoder_hidden_states,
            vision_hidden_states=outputs.vision_hidden_states,
            text_hidden_states=outputs.text_hidden_states,
            fusion_vision_hidden_states=outputs.fusion_vision_hidden_states,
            fusion_text_hidden_states=outputs.fusion_text_hidden_states,
        )


__all__ = ["GlipModel", "GlipForGrounding", "GlipPreTrainedModel", "GlipModelOutput", "GlipGroundingOutput"]
