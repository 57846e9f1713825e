"""Noun phrases of real captions (COCO / Flickr30k style), offline, with the original's chunk grammar; pluggable
extractors."""

from __future__ import annotations

import importlib.util

import pytest

from glip_hf.noun_phrases_glip import (
    NOUN_PHRASE_BACKENDS,
    noun_phrase_spans,
    perceptron_noun_phrases,
    register_noun_phrase_backend,
    tokenize,
)

if importlib.util.find_spec("textblob_aptagger") is None:  # pragma: no cover - installed by `make install`
    pytest.skip("textblob-aptagger (the tagger weights) is not installed: pip install 'glip-hf[label]'",
                allow_module_level=True)

CAPTIONS = {
    # MMDetection's docstring example of the original's NLTK extraction, and its answer there.
    "There is two cat and a remote in the picture": ["cat", "a remote", "the picture"],
    "A man riding a wave on top of a surfboard.": ["A man", "a wave", "top", "a surfboard"],
    "A little girl in a pink jacket is sitting on a swing.": ["A little girl", "a pink jacket", "a swing"],
    "Two dogs play with a red frisbee in the park": ["dogs", "a red frisbee", "the park"],
    "A kitchen with wooden cabinets and a white refrigerator.": ["A kitchen", "wooden cabinets",
                                                                 "a white refrigerator"],
}


@pytest.mark.parametrize("caption", CAPTIONS)
def test_noun_phrases_of_real_captions(caption):
    spans = perceptron_noun_phrases(caption)
    assert [caption[start:end] for start, end in spans] == CAPTIONS[caption]


def test_tokens_keep_their_spans_and_split_clitics():
    caption = "The dog's ball isn't red, it is 3.5 cm of well-kept rubber"
    tokens = tokenize(caption)
    assert all(caption[start:end] == token for token, start, end in tokens)
    assert [t for t, _, _ in tokens][:6] == ["The", "dog", "'s", "ball", "is", "n't"]
    assert "3.5" in [t for t, _, _ in tokens] and "well-kept" in [t for t, _, _ in tokens]


def test_a_callable_or_a_registered_backend_plugs_in():
    def first_word(caption):
        return [caption.split()[0]]

    assert noun_phrase_spans("zebra crossing a road", first_word) == [(0, 5)]
    register_noun_phrase_backend("test-first-word", first_word)
    try:
        assert noun_phrase_spans("a dog and a dog", lambda caption: ["a dog", "a dog"]) == [(0, 5), (10, 15)]
        assert noun_phrase_spans("zebra crossing", "test-first-word") == [(0, 5)]
    finally:
        NOUN_PHRASE_BACKENDS.pop("test-first-word")
    with pytest.raises(ValueError, match="Unknown noun-phrase backend"):
        noun_phrase_spans("a dog", "spacy-large")
    with pytest.raises(ValueError, match="does not occur"):
        noun_phrase_spans("a dog", lambda caption: ["a cat"])
    with pytest.raises(TypeError, match="callable"):
        register_noun_phrase_backend("broken", "not a function")
