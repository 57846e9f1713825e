"""Noun phrases of a caption, the phrases GLIP's self-training grounds when a caption comes without boxes.

The original tags the lower-cased caption with NLTK's averaged-perceptron tagger and chunks `<DT>?<JJ.*>*<NN.*>+`.
NLTK's tagger model is a separate download, so the default backend here, "perceptron", runs the same kind of
tagger (Matthew Honnibal's greedy averaged perceptron, Penn Treebank tags) on the weights that ship inside the
`textblob-aptagger` wheel on PyPI (MIT licence, trained on the WSJ treebank), and chunks with the same grammar.
Nothing is downloaded at run time. Other extractors plug in by name (`register_noun_phrase_backend`) or as a callable.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import pickle
import re
from collections.abc import Callable
from pathlib import Path

# Words (with inner hyphens), a clitic "'s"/"n't" split off as the treebank does, numbers, punctuation.
_TOKEN = re.compile(r"n't\b|'[a-z]+\b|\d+(?:[.,]\d+)*|\w+?(?=n't\b)|\w+(?:-\w+)*|[^\w\s]", re.IGNORECASE)
_SENTENCE_END = {".", "!", "?"}
_START, _END = ("-START-", "-START2-"), ("-END-", "-END2-")
# The original's grammar "<DT>?<JJ.*>*<NN.*>+" over one letter per tag.
_NOUN_PHRASE = re.compile(r"D?J*N+")
_PICKLE_NAME = "trontagger-0.1.0.pickle"


class _WeightsUnpickler(pickle.Unpickler):
    """The tagger file holds (weights dict, tag dict, set of tags): allow those builtins and nothing else."""

    def find_class(self, module, name):
        if module in {"__builtin__", "builtins"} and name in {"set", "dict"}:
            return {"set": set, "dict": dict}[name]
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the tagger weights")


def _tagger_weights_path() -> Path:
    spec = importlib.util.find_spec("textblob_aptagger")  # located, not imported (its import needs TextBlob's corpora)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The 'perceptron' noun-phrase backend needs the tagger weights of textblob-aptagger: "
                          "pip install 'glip-hf[label]'")
    return Path(next(iter(spec.submodule_search_locations))) / _PICKLE_NAME


class PerceptronTagger:
    """Greedy averaged-perceptron POS tagger over precomputed weights: {feature: {tag: weight}}, a tag dictionary
    for unambiguous frequent words, and the tag set."""

    def __init__(self, weights: dict, tag_dictionary: dict, tags):
        self.weights, self.tag_dictionary = weights, tag_dictionary
        self.tags = sorted(tags)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def from_package(cls) -> PerceptronTagger:
        with open(_tagger_weights_path(), "rb") as file:
            weights, tag_dictionary, tags = _WeightsUnpickler(file, encoding="latin1").load()
        return cls(weights, tag_dictionary, tags)

    @staticmethod
    def _normalise(word: str) -> str:
        if "-" in word and word[0] != "-":
            return "!HYPHEN"
        if word.isdigit() and len(word) == 4:
            return "!YEAR"
        if word[0].isdigit():
            return "!DIGITS"
        return word.lower()

    @staticmethod
    def _features(position: int, word: str, context: list[str], previous: str, before_previous: str) -> list[str]:
        """The feature names the weights were trained on (position counts the two start markers)."""
        here = position + 2
        return [
            "bias", f"i suffix {word[-3:]}", f"i pref1 {word[0]}", f"i-1 tag {previous}",
            f"i-2 tag {before_previous}", f"i tag+i-2 tag {previous} {before_previous}", f"i word {context[here]}",
            f"i-1 tag+i word {previous} {context[here]}", f"i-1 word {context[here - 1]}",
            f"i-1 suffix {context[here - 1][-3:]}", f"i-2 word {context[here - 2]}", f"i+1 word {context[here + 1]}",
            f"i+1 suffix {context[here + 1][-3:]}", f"i+2 word {context[here + 2]}",
        ]

    def _predict(self, features: list[str]) -> str:
        scores = collections.defaultdict(float)
        for feature in features:
            for tag, weight in self.weights.get(feature, {}).items():
                scores[tag] += weight
        return max(self.tags, key=lambda tag: (scores[tag], tag))  # ties broken by name, as the trainer

    def tag(self, sentences: list[list[str]]) -> list[str]:
        """One tag per word, sentence after sentence (the previous tags carry over, as in the trained tagger)."""
        previous, before_previous = _START
        tags = []
        for words in sentences:
            context = [*_START, *(self._normalise(word) for word in words), *_END]
            for position, word in enumerate(words):
                tag = self.tag_dictionary.get(word) or self._predict(
                    self._features(position, word, context, previous, before_previous))
                tags.append(tag)
                before_previous, previous = previous, tag
        return tags


def tokenize(caption: str) -> list[tuple[str, int, int]]:
    """Words and punctuation of a caption with their character spans."""
    return [(match.group(), match.start(), match.end()) for match in _TOKEN.finditer(caption)]


def _split_sentences(words: list[str]) -> list[list[str]]:
    sentences, current = [], []
    for word in words:
        current.append(word)
        if word in _SENTENCE_END:
            sentences.append(current)
            current = []
    return sentences + ([current] if current else [])


def _tag_letter(tag: str) -> str:
    if tag == "DT":
        return "D"
    return {"JJ": "J", "NN": "N"}.get(tag[:2], "x")


def perceptron_noun_phrases(caption: str) -> list[tuple[int, int]]:
    """Character spans of the caption's noun phrases: the lower-cased caption tagged, `<DT>?<JJ.*>*<NN.*>+` chunked."""
    tokens = tokenize(caption.lower())
    if not tokens:
        return []
    tags = PerceptronTagger.from_package().tag(_split_sentences([token for token, _, _ in tokens]))
    letters = "".join(_tag_letter(tag) for tag in tags)
    return [(tokens[match.start()][1], tokens[match.end() - 1][2]) for match in _NOUN_PHRASE.finditer(letters)]


NOUN_PHRASE_BACKENDS: dict[str, Callable[[str], list]] = {"perceptron": perceptron_noun_phrases}


def register_noun_phrase_backend(name: str, extractor: Callable[[str], list]) -> None:
    """Make `extractor` (caption -> phrase strings or (start, end) spans) available by `name`."""
    if not callable(extractor):
        raise TypeError(f"A noun-phrase backend must be callable, got {extractor!r}")
    NOUN_PHRASE_BACKENDS[name] = extractor


def resolve_extractor(extractor: str | Callable[[str], list] = "perceptron") -> Callable[[str], list]:
    if callable(extractor):
        return extractor
    if extractor not in NOUN_PHRASE_BACKENDS:
        raise ValueError(f"Unknown noun-phrase backend {extractor!r}; known: {sorted(NOUN_PHRASE_BACKENDS)}")
    return NOUN_PHRASE_BACKENDS[extractor]


def noun_phrase_spans(caption: str, extractor: str | Callable[[str], list] = "perceptron") -> list[tuple[int, int]]:
    """(start, end) spans of the phrases to ground in `caption`; an extractor's strings are located in the caption
    (their first occurrence not yet taken)."""
    spans, taken = [], set()
    for phrase in resolve_extractor(extractor)(caption):
        if isinstance(phrase, str):
            start = caption.find(phrase)
            while start != -1 and (start, start + len(phrase)) in taken:
                start = caption.find(phrase, start + 1)
            if start == -1:
                raise ValueError(f"The extractor returned {phrase!r}, which does not occur in the caption {caption!r}")
            phrase = (start, start + len(phrase))
        start, end = int(phrase[0]), int(phrase[1])
        if not 0 <= start < end <= len(caption):
            raise ValueError(f"The extractor returned span {phrase!r}, outside the caption of length {len(caption)}")
        taken.add((start, end))
        spans.append((start, end))
    return spans


__all__ = ["NOUN_PHRASE_BACKENDS", "PerceptronTagger", "noun_phrase_spans", "perceptron_noun_phrases",
           "register_noun_phrase_backend", "resolve_extractor", "tokenize"]
