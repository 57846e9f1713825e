"""GlipProcessor: images + prompts in, model inputs and token maps out; detections back with phrase labels.

A prompt is either a list of class names (joined into the original's detection caption, split into chunks when
it exceeds the maximum text length) or a free caption with the phrases to ground (strings, every occurrence found,
or character spans). Each prompt row carries a token map (phrase x token) used to score phrases after the model.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, BatchFeature, BertTokenizerFast, ProcessorMixin

from .postprocessing_glip import (
    DEFAULT_CANDIDATE_THRESHOLD,
    DEFAULT_DETECTIONS_PER_IMAGE,
    DEFAULT_NMS_THRESHOLD,
    DEFAULT_PRE_NMS_TOP_N,
    check_finite_outputs,
    check_post_process_settings,
    check_probability,
    phrase_scores,
    post_process_grounding,
)

DETECTION_SEPARATOR = ". "
BUNDLED_VOCAB = Path(__file__).parent / "data" / "bert-base-uncased-vocab.txt"


def load_tokenizer(path: str | Path | None = None):
    """BERT tokenizer from a saved tokenizer folder, a folder or file holding `vocab.txt`, or (None) the bundled
    bert-base-uncased vocabulary GLIP was trained with."""
    path = Path(path) if path is not None else BUNDLED_VOCAB
    if path.is_dir() and any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(path)
    vocab = path / "vocab.txt" if path.is_dir() else path
    if not vocab.is_file():
        raise ValueError(f"No tokenizer found at {path}: expected tokenizer files or a vocab.txt")
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)


def clean_class_name(name: str) -> str:
    """The original's `clean_name`: drop "(...)" (greedy), "_" -> " ", then one double space -> one space."""
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


def build_detection_prompt(class_names: list[str], separator: str = DETECTION_SEPARATOR):
    """Caption "a. b. c" (no trailing separator) and the character span of each cleaned name, as the original."""
    caption, spans = "", []
    for index, name in enumerate(class_names):
        start = len(caption)
        caption += clean_class_name(name)
        spans.append([(start, len(caption))])
        if index != len(class_names) - 1:
            caption += separator
    return caption, spans


PHRASE_MATCHES = ("word", "substring")


def find_phrase_spans(caption: str, phrase: str, match: str = "word") -> list[tuple[int, int]]:
    """Character spans of every occurrence of `phrase` in `caption`, overlapping ones included.

    `match="word"` (default) keeps occurrences that do not start or end inside a word ("man" is not found in
    "woman"); `match="substring"` keeps every occurrence, as the original's `str.find` loop.
    """
    if match not in PHRASE_MATCHES:
        raise ValueError(f"match must be one of {PHRASE_MATCHES}, got {match!r}")
    if not phrase:
        raise ValueError("An empty phrase cannot be grounded")
    spans, start = [], caption.find(phrase)
    while start != -1:
        end = start + len(phrase)
        if match == "substring" or _on_word_boundaries(caption, start, end):
            spans.append((start, end))
        start = caption.find(phrase, start + 1)
    if not spans:
        where = "as a whole word " if match == "word" and phrase in caption else ""
        raise ValueError(f"Phrase {phrase!r} does not occur {where}in the caption {caption!r}"
                         + ("; pass phrase_match='substring' to match inside words" if where else ""))
    return spans


# Ideographs and kana are words of their own (BERT splits each into a token; these scripts use no spaces).
_UNSPACED_SCRIPTS = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF))


def _is_word_character(character: str) -> bool:
    code = ord(character)
    return character.isalnum() and not any(low <= code <= high for low, high in _UNSPACED_SCRIPTS)


def _on_word_boundaries(caption: str, start: int, end: int) -> bool:
    """No word character continues the phrase's first or last character across the span's edges."""
    inside_left = start > 0 and _is_word_character(caption[start]) and _is_word_character(caption[start - 1])
    inside_right = (end < len(caption) and _is_word_character(caption[end - 1])
                    and _is_word_character(caption[end]))
    return not (inside_left or inside_right)


def check_text(text, what: str = "text") -> str:
    """`text` itself if it is a str that encodes as UTF-8; else a `TypeError` / `ValueError` naming it."""
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(f"{what} must be str, got bytes {bytes(text)[:40]!r}; decode it first (bytes.decode)")
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, got {type(text).__name__} {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{what} {text!r} holds {text[error.start]!r} at position {error.start}, which is not a "
                         "character (a lone surrogate, e.g. from bytes decoded with errors='surrogateescape')") from None
    return text


def _char_to_token(encoding, candidates):
    """First token found at one of the candidate character positions (the original retries neighbours)."""
    for position in candidates:
        if position < 0:
            continue
        token = encoding.char_to_token(position)
        if token is not None:
            return token
    return None


def spans_to_token_map(encoding, spans_per_phrase, length: int, caption: str = "") -> torch.Tensor:
    """(P, length) 0/1 map: phrase p covers tokens char_to_token(start) .. char_to_token(end - 1) of each span.

    Like the original's `create_positive_map`, a boundary on a character without a token (a space) is retried at
    start+1, start+2 and end-2, end-3. A phrase none of whose spans reaches a token is an error.
    """
    token_map = torch.zeros(len(spans_per_phrase), length)
    for row, spans in enumerate(spans_per_phrase):
        for start, end in spans:
            first = _char_to_token(encoding, (start, start + 1, start + 2))
            last = _char_to_token(encoding, (end - 1, end - 2, end - 3))
            if first is not None and last is not None and first <= last:
                token_map[row, first:last + 1] = 1
        if not token_map[row].any():
            raise ValueError(f"Span(s) {spans} of caption {caption!r} cover no token (outside the text or truncated)")
    return token_map


@dataclass
class Prompt:
    """One model row: a caption, its phrases as character spans, and the phrases' labels within the image."""

    caption: str
    spans: list
    labels: list = field(default_factory=list)


class GlipProcessor(ProcessorMixin):
    r"""
    Wraps a [`GlipImageProcessor`] and a BERT tokenizer.

    Call it with `images` and `text`. For one image, `text` is a list of class names (detection prompt) or a caption
    string; with `phrases`, the caption's phrases to ground (strings: every occurrence; or `(start, end)` spans);
    a caption without `phrases` is split at "." into phrases. For a list of images, give a list with one such entry
    per image (prompts may differ per image).

    Args:
        max_text_len: longest prompt in tokens; longer class lists are split into several rows (chunks).
        candidate_threshold: the original's pre-NMS threshold on the phrase score (`MODEL.ATSS.INFERENCE_TH`); the
            final score threshold is `threshold` of `post_process_grounded_object_detection`.
        pre_nms_top_n, nms_threshold, detections_per_image: the rest of the original's ATSS post-processing
            settings. All four are saved with the processor; the converter sets them from the checkpoint's YAML.
    """

    def __init__(self, image_processor, tokenizer, max_text_len: int = 256,
                 candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD, pre_nms_top_n: int = DEFAULT_PRE_NMS_TOP_N,
                 nms_threshold: float = DEFAULT_NMS_THRESHOLD, detections_per_image: int = DEFAULT_DETECTIONS_PER_IMAGE,
                 separator: str = DETECTION_SEPARATOR):
        check_post_process_settings(candidate_threshold, pre_nms_top_n, nms_threshold, detections_per_image)
        super().__init__(image_processor, tokenizer)
        self.max_text_len = max_text_len
        self.separator = separator
        self.candidate_threshold = candidate_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As `ProcessorMixin.from_pretrained`; the image processor is the bit-exact PIL one (`GlipImageProcessor`)
        unless `backend="torchvision"` asks for `GlipImageProcessorFast` (transformers would default to it)."""
        kwargs.setdefault("backend", "pil")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ----- prompts -------------------------------------------------------------------------------------------------

    def _token_counts(self, texts: list[str]) -> list[int]:
        # One batched tokenizer call for all names: a call per name is slow for long vocabularies.
        return [len(ids) for ids in self._tokenize(texts, add_special_tokens=False)["input_ids"]]

    def chunk_class_names(self, class_names: list[str]) -> list[list[int]]:
        """Split class indices into as few consecutive chunks as possible whose prompt fits `max_text_len`."""
        separator_tokens, *name_token_counts = self._token_counts(
            [self.separator] + [clean_class_name(name) for name in class_names])
        chunks, current, used = [], [], 2  # [CLS] and [SEP]
        for index, (name, name_tokens) in enumerate(zip(class_names, name_token_counts)):
            if 2 + name_tokens > self.max_text_len:
                raise ValueError(f"Class name {name!r} alone is longer than max_text_len={self.max_text_len} tokens")
            extra = name_tokens + (separator_tokens if current else 0)
            if used + extra > self.max_text_len:
                chunks.append(current)
                current, used, extra = [], 2, name_tokens
            current.append(index)
            used += extra
        chunks.append(current)
        return chunks

    def _prompts_for_image(self, text, phrases, phrase_match) -> tuple[list[Prompt], list[str]]:
        """The prompt rows of one image and its phrase strings (labels index into them)."""
        if isinstance(text, str):
            return self._caption_prompt(check_text(text, "the caption"), phrases, phrase_match)
        if phrases is not None:
            raise ValueError("`phrases` applies to a caption string, not to a list of class names")
        if not isinstance(text, (list, tuple)):
            raise TypeError(f"A prompt must be a caption string or a list of class names, got {type(text).__name__}")
        return self._class_list_prompts(list(text))

    def _caption_prompt(self, caption: str, phrases, phrase_match) -> tuple[list[Prompt], list[str]]:
        if not caption.strip():
            raise ValueError("The prompt is empty")
        if phrases is None:
            phrases = [part.strip() for part in caption.split(".") if part.strip()]
        elif isinstance(phrases, str) or _is_span(phrases):
            phrases = [phrases]  # one phrase, not a sequence of characters / numbers
        elif not isinstance(phrases, (list, tuple)):
            raise TypeError(f"`phrases` must be a list of strings or (start, end) spans, got {type(phrases).__name__}")
        if not phrases:
            raise ValueError(f"No phrase to ground in the caption {caption!r}: give `phrases` or '.'-separated text")
        spans, names = [], []
        for phrase in phrases:
            if isinstance(phrase, str):
                spans.append(find_phrase_spans(caption, check_text(phrase, "the phrase"), phrase_match))
                names.append(phrase)
            elif _is_span(phrase):
                start, end = int(phrase[0]), int(phrase[1])
                if not 0 <= start < end <= len(caption):
                    raise ValueError(f"Span {tuple(phrase)} is outside the caption of length {len(caption)}")
                spans.append([(start, end)])
                names.append(caption[start:end])
            else:
                raise ValueError(f"A phrase must be a string or an integer (start, end) span, got {phrase!r}")
        _refuse_duplicates([tuple(span) for span in spans], names, "phrase")
        return [Prompt(caption, spans, list(range(len(spans))))], names

    def _class_list_prompts(self, names: list) -> tuple[list[Prompt], list[str]]:
        if not names:
            raise ValueError("A class-name prompt needs a non-empty list of strings, got an empty list")
        for name in names:
            check_text(name, "a class name")
        empty = [n for n in names if not clean_class_name(n).strip()]
        if empty:
            raise ValueError(f"Class name(s) {empty} are empty once cleaned (parentheses and '_' removed)")
        cleaned = [clean_class_name(n) for n in names]
        # The tokenizer lowercases and ignores spacing: such names are one phrase, which would report each box twice.
        _refuse_duplicates([" ".join(n.lower().split()) for n in cleaned], names, "class name")
        prompts = []
        for chunk in self.chunk_class_names(names):
            caption, spans = build_detection_prompt([names[i] for i in chunk], self.separator)
            prompts.append(Prompt(caption, spans, chunk))
        return prompts, cleaned

    def _normalise_batch(self, images, text, phrases):
        """(images or None, one prompt per image, one phrase list per image); one clear error for a bad layout."""
        if isinstance(text, (bytes, bytearray)):
            check_text(text, "text")  # raises, suggesting to decode
        if not isinstance(text, (str, list, tuple)):
            raise TypeError(f"text must be a caption string, a list of class names, or a list with one such prompt "
                            f"per image; got {type(text).__name__} {text!r:.80}")
        if isinstance(images, (list, tuple)) and len(images) == 0:
            raise ValueError("images is an empty list: give at least one image")
        single = images is not None and not isinstance(images, (list, tuple))
        if single or images is None and (isinstance(text, str) or _is_flat_names(text)):
            return ([images] if images is not None else None), [text], [phrases]
        if not text:
            raise ValueError("text is an empty list: give a prompt per image")
        count = len(images) if images is not None else len(text)
        if len(text) != count:
            raise ValueError(f"Give one prompt per image: {count} image(s) but {len(text)} prompt(s) in text={text!r}")
        phrases = phrases if phrases is not None else [None] * count
        if not isinstance(phrases, (list, tuple)) or len(phrases) != count:
            raise ValueError(f"Give one phrase list per image: {count} image(s), phrases={phrases!r}")
        return images, list(text), list(phrases)

    def _tokenize(self, texts: list[str], **kwargs):
        # Literal "[SEP]" or "[CLS]" in a prompt is text, not a special token (the model would read it as one).
        return self.tokenizer(texts, split_special_tokens=True, **kwargs)

    # ----- __call__ ------------------------------------------------------------------------------------------------

    def __call__(self, images=None, text=None, phrases=None, annotations=None, return_tensors="pt",
                 phrase_match: str = "word", **kwargs) -> BatchFeature:
        """Returns pixel inputs (when images are given), `input_ids`, `attention_mask`, `image_index` (image of each
        row), `token_maps` (rows, P, T), `label_ids` (rows, P; -1 = padding) and `text_labels` (phrases per image).

        `phrase_match`: "word" (default) grounds a string phrase only where it is not part of a longer word;
        "substring" grounds every occurrence, as the original.

        `annotations` (training and evaluation with boxes): per image {"boxes": (n, 4) xyxy pixels of the given
        image, "spans": per box a list of (start, end) character spans of its phrase in that image's caption};
        `text` is then one caption per image. Adds `labels`: per image {"boxes": (n, 4) float32 in pixels of the
        resized input, "token_map": (n, T) float32 0/1 tokens of each box's phrase}, what `model(labels=...)` takes.
        Without `phrases`, the phrases scored after the model are the boxes' distinct phrases.

        `device` (a torch device): the image steps run there as torch operations (`GlipImageProcessorFast`).
        """
        if text is None:
            raise ValueError("GlipProcessor needs a prompt (`text`): class names or a caption")
        if phrase_match not in PHRASE_MATCHES:
            raise ValueError(f"phrase_match must be one of {PHRASE_MATCHES}, got {phrase_match!r}")
        images, texts, phrase_lists = self._normalise_batch(images, text, phrases)
        annotations = _check_annotations(annotations, texts, images)
        rows, text_labels, image_index = [], [], []
        for image_number, (prompt, prompt_phrases) in enumerate(zip(texts, phrase_lists)):
            if annotations is not None and prompt_phrases is None:
                prompts, names = _annotated_prompt(prompt, annotations[image_number]["spans"])
            else:
                prompts, names = self._prompts_for_image(prompt, prompt_phrases, phrase_match)
            rows += prompts
            text_labels.append(names)
            image_index += [image_number] * len(prompts)
        data, encoding = self._encode_rows(rows)
        data.update(image_index=torch.tensor(image_index), text_labels=text_labels)
        if images is not None:
            data.update(self._image_processor_for(kwargs.get("device"))(images, return_tensors="pt", **kwargs))
        batch = BatchFeature(data, tensor_type=return_tensors)
        if annotations is not None:
            # Set after the conversion: a list of per-image dicts is not one tensor.
            batch["labels"] = self._box_labels(annotations, encoding, texts, batch)
        return batch

    def _encode_rows(self, rows: list[Prompt]):
        """Tokens of the rows' captions (padded to the longest) with each row's phrase token maps and labels, and
        the tokenizer's encoding (character -> token lookups)."""
        encoding = self._tokenize(
            [row.caption for row in rows], padding="longest", return_token_type_ids=False, return_tensors="pt",
        )
        length = encoding["input_ids"].shape[1]
        if length > self.max_text_len:
            lengths = encoding["attention_mask"].sum(1).tolist()
            longest = max(range(len(rows)), key=lengths.__getitem__)
            raise ValueError(
                f"The caption {rows[longest].caption!r:.120} has {lengths[longest]} tokens, more than "
                f"max_text_len={self.max_text_len}; shorten it or give a list of class names (split automatically)"
            )
        max_phrases = max(len(row.spans) for row in rows)
        token_maps = torch.zeros(len(rows), max_phrases, length)
        label_ids = torch.full((len(rows), max_phrases), -1, dtype=torch.long)
        for index, row in enumerate(rows):
            token_maps[index, : len(row.spans)] = spans_to_token_map(encoding[index], row.spans, length, row.caption)
            label_ids[index, : len(row.labels)] = torch.tensor(row.labels, dtype=torch.long)
        return dict(encoding, token_maps=token_maps, label_ids=label_ids), encoding

    def _box_labels(self, annotations, encoding, captions, batch) -> list[dict]:
        """Per image the boxes scaled as its image was resized (`BoxList.resize`) and each box's token map."""
        length = encoding["input_ids"].shape[1]
        labels = []
        for index, (annotation, caption) in enumerate(zip(annotations, captions)):
            (old_height, old_width), (new_height, new_width) = (batch["original_sizes"][index].tolist(),
                                                                batch["image_sizes"][index].tolist())
            boxes = resize_boxes(annotation["boxes"], (old_width, old_height), (new_width, new_height))
            token_map = spans_to_token_map(encoding[index], annotation["spans"], length, caption)
            labels.append({"boxes": boxes, "token_map": token_map})
        return labels

    def _image_processor_for(self, device):
        """The image processor, or for `device=` its torch-ops twin with the same settings."""
        from .image_processing_glip import GlipImageProcessorFast

        if device is None or isinstance(self.image_processor, GlipImageProcessorFast):
            return self.image_processor
        settings = {name: getattr(self.image_processor, name) for name in GlipImageProcessorFast.setting_names}
        settings["size"] = dict(settings["size"])
        return GlipImageProcessorFast(**settings)

    # ----- post-processing -----------------------------------------------------------------------------------------

    def post_process_grounded_object_detection(self, outputs, inputs, threshold: float = 0.0, target_sizes=None,
                                               candidate_threshold: float | None = None):
        """Detections per image: `scores`, `labels` (index into the image's phrases), `text_labels`, `boxes`.

        Args:
            outputs: the model's output ([`GlipGroundingOutput`]).
            inputs: what this processor returned for the batch (token maps, image sizes, phrase strings).
            threshold: keep detections whose final score sqrt(phrase score x centerness) exceeds it.
            target_sizes: (N, 2) (height, width) per image for the boxes; default the original image sizes.
            candidate_threshold: overrides the processor's `candidate_threshold` for this call.
        """
        check_probability(threshold, "threshold")
        _check_same_batch(outputs, inputs)
        check_finite_outputs(logits=outputs.logits)
        scores = phrase_scores(outputs.logits, inputs["token_maps"].to(outputs.logits.device))
        if target_sizes is None:
            target_sizes = inputs["original_sizes"]
        results = post_process_grounding(
            scores, outputs.centerness, outputs.pred_boxes, outputs.spatial_shapes, inputs["image_sizes"],
            target_sizes=target_sizes, image_index=inputs["image_index"], label_ids=inputs["label_ids"],
            candidate_threshold=self.candidate_threshold if candidate_threshold is None else candidate_threshold,
            pre_nms_top_n=self.pre_nms_top_n, nms_threshold=self.nms_threshold,
            detections_per_image=self.detections_per_image,
        )
        for result, names in zip(results, inputs["text_labels"]):
            keep = result["scores"] > threshold
            for key in ("scores", "labels", "boxes"):
                result[key] = result[key][keep]
            result["text_labels"] = [names[i] for i in result["labels"].tolist()]
        return results


def _check_same_batch(outputs, inputs) -> None:
    """The outputs must come from these inputs: same prompt rows, same text length, one size per image."""
    for key in ("token_maps", "image_sizes", "image_index", "label_ids", "text_labels"):
        if key not in inputs:
            raise ValueError(f"inputs lacks {key!r}: pass what GlipProcessor returned for this batch (with images)")
    rows, length = outputs.logits.shape[0], outputs.logits.shape[-1]
    # token_maps (R, P, T) always travel with the batch; input_ids may have been dropped once the model ran.
    described = (inputs["token_maps"].shape[0], inputs["token_maps"].shape[-1])
    if described != (rows, length) or ("input_ids" in inputs and tuple(inputs["input_ids"].shape) != described):
        raise ValueError(
            f"The outputs have {rows} prompt row(s) of {length} tokens but the inputs describe {described}: pass the "
            "inputs of the batch the model ran on"
        )
    images = len(inputs["image_sizes"])
    if images != len(inputs["text_labels"]) or (len(inputs["image_index"]) and int(inputs["image_index"].max()) >= images):
        raise ValueError(f"The inputs' {images} image size(s) do not match their prompts: pass one processor output")


def resize_boxes(boxes: torch.Tensor, old_size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Scale boxes from an image of (width, height) `old_size` to `new_size`, exactly as `BoxList.resize`."""
    ratio_w, ratio_h = (float(new) / float(old) for new, old in zip(new_size, old_size))
    if ratio_w == ratio_h:  # the original multiplies by one scalar in this case
        return boxes * ratio_w
    return torch.cat((boxes[:, 0:1] * ratio_w, boxes[:, 1:2] * ratio_h, boxes[:, 2:3] * ratio_w,
                      boxes[:, 3:4] * ratio_h), dim=-1)


def _check_annotations(annotations, texts, images):
    """One {"boxes", "spans"} per image with a caption; boxes as float32 (n, 4), spans inside the caption."""
    if annotations is None:
        return None
    if images is None:
        raise ValueError("annotations need the images their boxes are drawn on")
    if isinstance(annotations, dict):
        annotations = [annotations]
    if not isinstance(annotations, (list, tuple)) or len(annotations) != len(texts):
        raise ValueError(f"Give one annotation per image: {len(texts)} image(s), annotations={annotations!r:.120}")
    checked = []
    for index, (annotation, caption) in enumerate(zip(annotations, texts)):
        where = f"annotations[{index}]"
        if not isinstance(caption, str):
            raise TypeError(f"{where} needs a caption string as the image's text (its spans index into it), "
                             f"got {type(caption).__name__}")
        if not isinstance(annotation, dict) or not {"boxes", "spans"} <= set(annotation):
            raise TypeError(f"{where} must be a dict with 'boxes' and 'spans', got {annotation!r:.120}")
        try:
            boxes = torch.as_tensor(annotation["boxes"], dtype=torch.float32).reshape(-1, 4)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{where}['boxes'] must be (n, 4) xyxy numbers: {error}") from None
        spans = [[(int(start), int(end)) for start, end in box_spans] for box_spans in annotation["spans"]]
        if len(spans) != len(boxes) or not torch.isfinite(boxes).all():
            raise ValueError(f"{where} has {len(boxes)} box(es) and {len(spans)} span list(s); every box needs "
                             "finite coordinates and a non-empty list of (start, end) spans")
        for box_spans in spans:
            if not box_spans or not all(0 <= start < end <= len(caption) for start, end in box_spans):
                raise ValueError(f"{where}: spans {box_spans} are empty or outside the caption {caption!r:.120}")
        checked.append({"boxes": boxes, "spans": spans})
    return checked


def _annotated_prompt(caption: str, box_spans: list) -> tuple[list[Prompt], list[str]]:
    """The row of an annotated caption: its phrases are the boxes' distinct phrases (the whole caption if none)."""
    phrases = list(dict.fromkeys(tuple(spans) for spans in box_spans)) or [((0, len(caption)),)]
    names = [" ".join(caption[start:end] for start, end in spans) for spans in phrases]
    return [Prompt(caption, [list(spans) for spans in phrases], list(range(len(phrases))))], names


def _refuse_duplicates(keys: list, names: list, what: str) -> None:
    first = {}
    for index, key in enumerate(keys):
        if key in first:
            raise ValueError(f"The {what}s {names[first[key]]!r} (position {first[key]}) and {names[index]!r} "
                             f"(position {index}) are the same phrase; every box would be reported twice. "
                             f"Give each {what} once.")
        first[key] = index


def _is_span(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value))


def _is_flat_names(text) -> bool:
    return isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)


__all__ = [
    "GlipProcessor",
    "build_detection_prompt",
    "clean_class_name",
    "find_phrase_spans",
    "load_tokenizer",
    "resize_boxes",
    "spans_to_token_map",
]
