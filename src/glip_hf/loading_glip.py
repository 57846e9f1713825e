"""Loading saved GLIP folders with one clear error for a damaged weights file."""

from __future__ import annotations

from safetensors import SafetensorError


class ClearLoadingErrorsMixin:
    """`from_pretrained` that names the folder when its weights file is empty, truncated or otherwise unreadable
    (safetensors reports only "Error while deserializing header", without the file)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"cannot read the weights in {pretrained_model_name_or_path}: the safetensors file is empty, "
                f"truncated or damaged ({error})"
            ) from error


__all__ = ["ClearLoadingErrorsMixin"]
