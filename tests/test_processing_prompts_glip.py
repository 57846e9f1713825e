"""GlipProcessor prompts: detection captions, phrase spans, token maps, class-list chunking and batches.

Property-based (hypothesis) checks of the text side of the processor against the original GLIP's semantics
(`clean_name`, the ". "-joined detection caption, `create_positive_map`'s char_to_token rule with its retries),
plus example checks against the original's numbers with the bert-base-uncased vocabulary.
"""

from __future__ import annotations

import functools
import re
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from glip_hf import GlipImageProcessor, GlipProcessor
from glip_hf.processing_glip import (
    BUNDLED_VOCAB,
    build_detection_prompt,
    clean_class_name,
    find_phrase_spans,
    load_tokenizer,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- tokenizers and processors ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def vocab_ids() -> dict[str, int]:
    """bert-base-uncased ids straight from the bundled vocab file (line number = id), independent of tokenizers."""
    lines = BUNDLED_VOCAB.read_text(encoding="utf-8").splitlines()
    return {line: index for index, line in enumerate(lines)}


@functools.lru_cache(maxsize=None)
def bert_tokenizer():
    """`load_tokenizer()`: the bundled bert-base-uncased vocabulary (checked against the vocab file below)."""
    return load_tokenizer()


@functools.lru_cache(maxsize=None)
def processor(max_text_len: int = 256) -> GlipProcessor:
    proc = GlipProcessor(GlipImageProcessor(), bert_tokenizer())
    proc.max_text_len = max_text_len
    return proc


def offsets(caption: str) -> list[tuple[int, int]]:
    return [tuple(o) for o in bert_tokenizer()(caption, return_offsets_mapping=True)["offset_mapping"]]


def all_occurrences(caption: str, phrase: str) -> list[tuple[int, int]]:
    """Brute force over every start index (overlapping occurrences included)."""
    n = len(phrase)
    return [(i, i + n) for i in range(len(caption) - n + 1) if caption[i : i + n] == phrase]


def marked(row: torch.Tensor) -> list[int]:
    return row.nonzero().flatten().tolist()


def original_positive_row(encoding, spans, length) -> torch.Tensor:
    """The original's `create_positive_map` for one phrase (before its row normalisation), written as it is there."""

    def char_to_token(position):
        try:
            return encoding.char_to_token(position)
        except Exception:  # a negative position: the original's try/except gives None
            return None

    row = torch.zeros(length)
    for beg, end in spans:
        beg_pos = char_to_token(beg)
        end_pos = char_to_token(end - 1)
        if beg_pos is None:
            beg_pos = char_to_token(beg + 1)
            if beg_pos is None:
                beg_pos = char_to_token(beg + 2)
        if end_pos is None:
            end_pos = char_to_token(end - 2)
            if end_pos is None:
                end_pos = char_to_token(end - 3)
        if beg_pos is None or end_pos is None:
            continue
        row[beg_pos : end_pos + 1] = 1
    return row


# --- strategies ---------------------------------------------------------------------------------------------------

ascii_words = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10)
accented_words = st.one_of(
    st.sampled_from(["café", "naïve", "Über", "résumé", "Ångström", "façade", "São", "İstanbul", "straße", "ÉCOLE",
                     "e\u0301te\u0301", "cafe\u0301", "Ñandú", "Øre", "œuvre"]),
    st.text(alphabet="àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÉÖØßæœ" + string.ascii_lowercase, min_size=1, max_size=7),
)
cjk_words = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=4),
    st.text(alphabet=st.characters(min_codepoint=0x3041, max_codepoint=0x3096), min_size=1, max_size=4),
)
emoji_words = st.sampled_from(["😀", "🚀", "👍🏽", "❤️", "🇫🇷", "👨\u200d👩\u200d👧", "🐱", "😀😀"])
punctuation_words = st.sampled_from([".", ",", "!", "?", "...", "-", "(", ")", "'", '"', ":", ";", "&", "/", "«",
                                     "»", "¿", "—", "#", "%"])
letter_words = st.text(alphabet=st.characters(categories=("Lu", "Ll", "Lo", "Nd")), min_size=1, max_size=6)
simple_words = st.one_of(ascii_words, accented_words, cjk_words, emoji_words, punctuation_words, letter_words)
# every word starts and ends (up to two trailing combining marks) with a character that has a token
words = st.one_of(simple_words, st.builds(lambda a, b: a + b, simple_words, simple_words))

class_name_text = st.text(
    alphabet=st.one_of(st.sampled_from("_() .__(("), st.characters(codec="utf-8", exclude_categories=("Cs",))),
    max_size=20,
)


# --- 1. the detection caption -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cleaned",
    [
        ("traffic_light", "traffic light"),
        ("person (adult)", "person "),
        ("a (b) c (d) e", "a e"),  # greedy: "(b) c (d)" goes, then the double space
        ("a__b", "a b"),
        ("a___b", "a  b"),  # one pass of "  " -> " ", as re.sub in the original
        ("a(b\nc)d", "a(b\nc)d"),  # "." does not match a newline: nothing dropped
        ("(x)", ""),
        ("no_(parens", "no (parens"),
    ],
)
def test_clean_class_name_examples(name, cleaned):
    assert clean_class_name(name) == cleaned


@SETTINGS
@given(name=class_name_text)
def test_clean_class_name_matches_original_rule(name):
    expected = re.sub(r"  ", " ", re.sub(r"_", " ", re.sub(r"\(.*\)", "", name)))
    assert clean_class_name(name) == expected
    assert "_" not in clean_class_name(name)


@SETTINGS
@given(names=st.lists(class_name_text, max_size=12))
def test_build_detection_prompt_spans_and_caption(names):
    caption, spans = build_detection_prompt(names)
    cleaned = [clean_class_name(n) for n in names]
    assert caption == ". ".join(cleaned)
    assert len(spans) == len(names)
    previous_end = 0
    for index, (name_spans, name) in enumerate(zip(spans, cleaned)):
        assert len(name_spans) == 1
        (start, end), = name_spans
        assert caption[start:end] == name
        assert start >= previous_end
        if index:
            assert caption[previous_end:start] == ". "
        previous_end = end
    assert previous_end == len(caption)


def test_build_detection_prompt_empty_list():
    assert build_detection_prompt([]) == ("", [])


# --- 2. phrase spans ----------------------------------------------------------------------------------------------

captions_unicode = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@SETTINGS
@given(data=st.data(), caption=st.one_of(captions_unicode, st.text(alphabet="ab ", max_size=30)))
def test_find_phrase_spans_all_occurrences(data, caption):
    assume(caption)
    start = data.draw(st.integers(0, len(caption) - 1))
    end = data.draw(st.integers(start + 1, len(caption)))
    phrase = caption[start:end]
    spans = find_phrase_spans(caption, phrase, match="substring")
    assert spans == all_occurrences(caption, phrase)
    assert (start, end) in spans
    assert all(caption[s:e] == phrase for s, e in spans)


@pytest.mark.parametrize(
    "caption, phrase, spans",
    [
        ("aaaa", "aa", [(0, 2), (1, 3), (2, 4)]),
        ("a cat and a cat", "a cat", [(0, 5), (10, 15)]),
        ("cat", "a", [(1, 2)]),  # inside a word: every substring occurrence, as the original's str.find loop
        ("中文中文", "中文", [(0, 2), (2, 4)]),
    ],
)
def test_find_phrase_spans_substring_examples(caption, phrase, spans):
    assert find_phrase_spans(caption, phrase, match="substring") == spans


@SETTINGS
@given(caption=captions_unicode, phrase=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                                 min_size=1, max_size=5))
def test_find_phrase_spans_missing_phrase_raises(caption, phrase):
    assume(phrase not in caption)
    with pytest.raises(ValueError) as info:
        find_phrase_spans(caption, phrase)
    assert repr(phrase) in str(info.value)


@pytest.mark.parametrize("caption", ["", "a cat", "   "])
def test_find_phrase_spans_empty_phrase_raises(caption):
    with pytest.raises(ValueError):
        find_phrase_spans(caption, "")


# --- 3. token maps on arbitrary captions --------------------------------------------------------------------------


@st.composite
def captions_with_phrases(draw):
    word_list = draw(st.lists(words, min_size=1, max_size=25))
    separators = draw(st.lists(st.sampled_from([" ", " ", " ", "  "]), min_size=len(word_list) - 1,
                               max_size=len(word_list) - 1))
    caption, bounds = "", []
    for index, word in enumerate(word_list):
        bounds.append((len(caption), len(caption) + len(word)))
        caption += word
        if index < len(separators):
            caption += separators[index]
    count = draw(st.integers(1, 5))
    phrases = []
    for _ in range(count):
        i = draw(st.integers(0, len(word_list) - 1))
        j = draw(st.integers(i, min(len(word_list) - 1, i + 3)))
        phrases.append(caption[bounds[i][0] : bounds[j][1]])
    if draw(st.booleans()):
        phrases.append(phrases[0])  # a repeated phrase
    return caption, phrases


MAX_CAPTION_TOKENS = 40


@SETTINGS
@given(case=captions_with_phrases())
@example(case=("a woman in an orange space suit next to a helmet and a space shuttle.",
               ["a woman", "a helmet", "a space shuttle", "a", "space"]))
@example(case=("aaaa aa aaa", ["aa", "aa aaa"]))
@example(case=("café e\u0301te\u0301 ❤️ 👨\u200d👩\u200d👧 中文字", ["e\u0301te\u0301", "❤️", "文字", "fé"]))
def test_token_maps_on_arbitrary_captions(case):
    caption, phrases = case
    proc = processor(MAX_CAPTION_TOKENS)
    token_offsets = offsets(caption)
    event(f"caption longer than max_text_len: {len(token_offsets) > MAX_CAPTION_TOKENS}")
    if len(token_offsets) > MAX_CAPTION_TOKENS:
        with pytest.raises(ValueError):
            proc(text=caption, phrases=phrases, phrase_match="substring")
        return
    if len(set(phrases)) < len(phrases):
        with pytest.raises(ValueError, match="same phrase"):  # each box would be reported once per copy
            proc(text=caption, phrases=phrases, phrase_match="substring")
        return
    out = proc(text=caption, phrases=phrases, phrase_match="substring")
    assert out["text_labels"] == [phrases]
    assert out["label_ids"][0].tolist() == list(range(len(phrases)))
    assert out["image_index"].tolist() == [0]
    assert out["input_ids"][0].tolist() == bert_tokenizer()(caption)["input_ids"]
    token_maps = out["token_maps"][0]
    assert token_maps.shape == (len(phrases), len(token_offsets))
    assert set(token_maps.unique().tolist()) <= {0.0, 1.0}
    encoding = bert_tokenizer()(caption)[0]
    for row, phrase in zip(token_maps, phrases):
        occurrences = all_occurrences(caption, phrase)
        tokens = marked(row)
        assert tokens, f"phrase {phrase!r} has an empty row"
        assert 0 not in tokens and len(token_offsets) - 1 not in tokens  # never [CLS] / [SEP]
        for token in tokens:
            start, end = token_offsets[token]
            assert any(start < b and a < end for a, b in occurrences), (phrase, token, token_offsets[token])
        for token, (start, end) in enumerate(token_offsets[1:-1], start=1):
            if any(a <= start and end <= b for a, b in occurrences):
                assert token in tokens, (phrase, token, (start, end))
        torch.testing.assert_close(row, original_positive_row(encoding, occurrences, len(token_offsets)))


@FEW
@given(caption=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30),
       data=st.data())
def test_token_map_on_any_unicode_matches_original_or_raises(caption, data):
    """Arbitrary unicode (controls, combining marks, spaces): no crash; the row is the original's, or, where the
    original's row would be empty, a ValueError."""
    assume(caption.strip())
    start = data.draw(st.integers(0, len(caption) - 1))
    end = data.draw(st.integers(start + 1, len(caption)))
    phrase = caption[start:end]
    proc = processor(256)
    encoding = bert_tokenizer()(caption)
    length = len(encoding["input_ids"])
    expected = original_positive_row(encoding[0], all_occurrences(caption, phrase), length)
    event(f"original row empty: {not expected.any()}")
    if not expected.any():
        with pytest.raises(ValueError):
            proc(text=caption, phrases=[phrase], phrase_match="substring")
        return
    out = proc(text=caption, phrases=[phrase], phrase_match="substring")
    torch.testing.assert_close(out["token_maps"][0, 0], expected)


def test_caption_longer_than_max_text_len_raises():
    proc = processor(16)
    caption = " ".join(["word"] * 20)
    with pytest.raises(ValueError, match="max_text_len"):
        proc(text=caption, phrases=["word"])


def test_caption_without_phrases_is_split_at_periods():
    out = processor()(text="a red car. a tree.")
    assert out["text_labels"] == [["a red car", "a tree"]]
    assert [marked(r) for r in out["token_maps"][0]] == [[1, 2, 3], [5, 6]]


def test_phrases_given_as_a_string():
    """A single phrase string is one phrase, not a sequence of characters."""
    out = processor()(text="a black cat", phrases="cat")
    assert out["text_labels"] == [["cat"]]
    assert [marked(r) for r in out["token_maps"][0]] == [[3]]


@pytest.mark.parametrize("kwargs", [dict(text="..."), dict(text="a cat", phrases=[])])
def test_prompt_without_phrases(kwargs):
    """Nothing to ground is an error that says so, not an empty result."""
    with pytest.raises(ValueError, match="No phrase to ground|prompt is empty"):
        processor()(**kwargs)


@pytest.mark.parametrize("phrase", [(1.7, 5), ("1", "3"), (True, 3)])
def test_character_spans_must_be_integers(phrase):
    with pytest.raises(ValueError, match="string or an integer"):
        processor()(text="a black cat", phrases=[phrase])


@pytest.mark.parametrize("names", [["cat", "(unknown)"], ["(unknown)", "cat"], ["cat", "__"], ["cat", "\x00"]])
def test_class_name_cleaning_to_no_token_raises(names):
    """A class name that cleans to nothing (or only spaces / removed characters) has no token: an error, not a
    silently empty row (the original would keep an all-zero row)."""
    with pytest.raises(ValueError, match="empty once cleaned|cover no token"):
        processor()(text=names)


# --- 4. character spans -------------------------------------------------------------------------------------------


@SETTINGS
@given(case=captions_with_phrases())
def test_character_span_equals_phrase_string(case):
    caption, phrases = case
    phrase = phrases[0]
    occurrences = all_occurrences(caption, phrase)
    assume(len(occurrences) == 1)
    assume(len(offsets(caption)) <= 256)
    proc = processor(256)
    by_string = proc(text=caption, phrases=[phrase])
    by_span = proc(text=caption, phrases=[occurrences[0]])
    by_list = proc(text=caption, phrases=[list(occurrences[0])])
    torch.testing.assert_close(by_span["token_maps"], by_string["token_maps"])
    torch.testing.assert_close(by_list["token_maps"], by_string["token_maps"])
    assert by_span["text_labels"] == [[phrase]]


@SETTINGS
@given(case=captions_with_phrases(), data=st.data())
def test_character_span_any_range(case, data):
    """A span (a, b) anywhere: the label is the caption slice, the row is the original's (or a ValueError where that
    row would be empty)."""
    caption, _ = case
    assume(len(offsets(caption)) <= 256)
    a = data.draw(st.integers(0, len(caption) - 1))
    b = data.draw(st.integers(a + 1, len(caption)))
    encoding = bert_tokenizer()(caption)
    expected = original_positive_row(encoding[0], [(a, b)], len(encoding["input_ids"]))
    if not expected.any():
        with pytest.raises(ValueError):
            processor()(text=caption, phrases=[(a, b)])
        return
    out = processor()(text=caption, phrases=[(a, b)])
    assert out["text_labels"] == [[caption[a:b]]]
    torch.testing.assert_close(out["token_maps"][0, 0], expected)


def test_character_spans_mixed_with_strings():
    caption = "a cat and a cat"
    out = processor()(text=caption, phrases=[(0, 5), "cat", (10, 15)])
    assert out["text_labels"] == [["a cat", "cat", "a cat"]]
    assert [marked(r) for r in out["token_maps"][0]] == [[1, 2], [2, 5], [4, 5]]


@pytest.mark.parametrize("span", [(-1, 2), (0, 6), (3, 3), (4, 2), (6, 7)])
def test_character_span_outside_caption_raises(span):
    with pytest.raises(ValueError):
        processor()(text="a cat", phrases=[span])


@pytest.mark.parametrize("caption, span", [("a cat", (1, 2)), ("a   cat", (1, 4)), ("a  cat", (2, 3)),
                                           ("dog \t\n cat", (3, 7)), ("cat ", (3, 4))])
def test_character_span_on_whitespace_raises(caption, span):
    assert not caption[span[0] : span[1]].strip()
    with pytest.raises(ValueError):
        processor()(text=caption, phrases=[span])


@SETTINGS
@given(left=st.lists(ascii_words, min_size=1, max_size=4), right=st.lists(ascii_words, min_size=1, max_size=4),
       gap=st.text(alphabet=" \t\n\u3000\u00a0", min_size=1, max_size=4), data=st.data())
def test_character_span_on_whitespace_raises_property(left, right, gap, data):
    caption = " ".join(left) + gap + " ".join(right)
    start = len(" ".join(left))
    a = data.draw(st.integers(start, start + len(gap) - 1))
    b = data.draw(st.integers(a + 1, start + len(gap)))
    with pytest.raises(ValueError):
        processor()(text=caption, phrases=[(a, b)])


# --- 5. long class lists ------------------------------------------------------------------------------------------

class_words = st.one_of(ascii_words, accented_words, cjk_words, emoji_words, letter_words)
class_names = st.builds(
    lambda parts, joiners: "".join(p + j for p, j in zip(parts, joiners + [""])),
    st.lists(class_words, min_size=1, max_size=4),
    st.lists(st.sampled_from([" ", "_"]), min_size=3, max_size=3),
)


def prompt_tokens(names: list[str]) -> int:
    caption, _ = build_detection_prompt(names)
    return len(bert_tokenizer()(caption)["input_ids"])


@FEW
@given(names=st.one_of(st.lists(class_names, min_size=1, max_size=40),
                       st.lists(class_names, min_size=100, max_size=400)),
       max_text_len=st.integers(16, 64))
@example(names=[f"thing_{i} (x)" for i in range(400)], max_text_len=16)
@example(names=["space_shuttle", "café au lait", "中文 字", "😀", "a b c d"] * 80, max_text_len=17)
def test_chunk_class_names_greedy_and_minimal(names, max_text_len):
    proc = processor(max_text_len)
    if any(prompt_tokens([n]) > max_text_len for n in names):
        event("a name longer than max_text_len")
        with pytest.raises(ValueError):
            proc.chunk_class_names(names)
        return
    chunks = proc.chunk_class_names(names)
    event(f"chunks: {'1' if len(chunks) == 1 else '2-5' if len(chunks) <= 5 else '>5'}")
    assert [i for chunk in chunks for i in chunk] == list(range(len(names)))
    assert all(chunk for chunk in chunks)
    for number, chunk in enumerate(chunks):
        assert chunk == list(range(chunk[0], chunk[-1] + 1))
        assert prompt_tokens([names[i] for i in chunk]) <= max_text_len
        if number + 1 < len(chunks):
            grown = [names[i] for i in chunk] + [names[chunks[number + 1][0]]]
            assert prompt_tokens(grown) > max_text_len

    keys = [" ".join(clean_class_name(n).lower().split()) for n in names]
    if len(set(keys)) < len(keys):
        with pytest.raises(ValueError, match="same phrase"):  # each box would be reported once per copy
            proc(text=names)
        return
    out = proc(text=names)
    rows = len(chunks)
    assert out["image_index"].tolist() == [0] * rows
    assert out["input_ids"].shape[0] == rows and out["input_ids"].shape[1] <= max_text_len
    assert out["text_labels"] == [[clean_class_name(n) for n in names]]
    label_ids = out["label_ids"]
    real = label_ids[label_ids >= 0].tolist()
    assert real == list(range(len(names)))
    for row, chunk in enumerate(chunks):
        count = len(chunk)
        assert label_ids[row, :count].tolist() == chunk
        assert (label_ids[row, count:] == -1).all()
        assert (out["token_maps"][row, count:] == 0).all()
        caption, _ = build_detection_prompt([names[i] for i in chunk])
        ids = bert_tokenizer()(caption)["input_ids"]
        assert out["input_ids"][row, : len(ids)].tolist() == ids
        assert out["attention_mask"][row].sum().item() == len(ids)
        assert all(marked(r) for r in out["token_maps"][row, :count])


def test_chunk_class_names_single_name_too_long_raises():
    proc = processor(16)
    long_name = " ".join(["word"] * 15)  # 15 tokens + [CLS] + [SEP] = 17 > 16
    assert proc.chunk_class_names([" ".join(["word"] * 14)]) == [[0]]
    with pytest.raises(ValueError, match="longer than max_text_len"):
        proc.chunk_class_names(["cat", long_name])
    with pytest.raises(ValueError):
        proc(text=["cat", long_name])


def test_chunked_class_list_token_maps_match_single_prompts():
    names = [f"class_{i}" for i in range(30)]
    proc = processor(20)
    out = proc(text=names)
    chunks = proc.chunk_class_names(names)
    assert len(chunks) > 1
    for row, chunk in enumerate(chunks):
        alone = processor(256)(text=[names[i] for i in chunk])
        length = alone["input_ids"].shape[1]
        torch.testing.assert_close(out["token_maps"][row, : len(chunk), :length], alone["token_maps"][0])
        assert (out["token_maps"][row, :, length:] == 0).all()


# --- 6. the original's numbers ------------------------------------------------------------------------------------

DETECTION_NAMES = ["person", "helmet", "flag", "space_shuttle", "name tag"]
DETECTION_TOKENS = ["[CLS]", "person", ".", "helmet", ".", "flag", ".", "space", "shuttle", ".", "name", "tag", "[SEP]"]
GROUNDING_CAPTION = "a woman in an orange space suit next to a helmet and a space shuttle."
GROUNDING_PHRASES = ["a woman", "a helmet", "a space shuttle"]


def test_original_detection_prompt_numbers():
    out = processor()(text=DETECTION_NAMES)
    caption, _ = build_detection_prompt(DETECTION_NAMES)
    assert caption == "person. helmet. flag. space shuttle. name tag"
    assert out["input_ids"][0].tolist() == [vocab_ids()[t] for t in DETECTION_TOKENS]
    rows = {i: marked(r) for i, r in enumerate(out["token_maps"][0])}
    assert rows == {0: [1], 1: [3], 2: [5], 3: [7, 8], 4: [10, 11]}
    assert out["text_labels"] == [["person", "helmet", "flag", "space shuttle", "name tag"]]


def test_original_grounding_numbers():
    out = processor()(text=GROUNDING_CAPTION, phrases=GROUNDING_PHRASES)
    assert [marked(r) for r in out["token_maps"][0]] == [[1, 2], [10, 11], [13, 14, 15]]
    assert out["input_ids"][0, 1:3].tolist() == [vocab_ids()["a"], vocab_ids()["woman"]]


def test_load_tokenizer_bundled_vocab_gives_bert_ids():
    """Guards the property tests: a tokenizer without the vocabulary (every word [UNK]) would make them vacuous."""
    tokenizer = load_tokenizer()
    assert len(tokenizer.get_vocab()) == 30522
    assert tokenizer.get_vocab() == vocab_ids()
    assert tokenizer("person. helmet")["input_ids"] == [101, 2711, 1012, 10412, 102]
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("pizzeria")["input_ids"])
    assert pieces == ["[CLS]", "pi", "##zz", "##eria", "[SEP]"]


def test_processor_with_load_tokenizer_matches_original_ids():
    proc = GlipProcessor(GlipImageProcessor(), load_tokenizer())
    out = proc(text=DETECTION_NAMES)
    assert out["input_ids"][0].tolist() == [vocab_ids()[t] for t in DETECTION_TOKENS]


def test_load_tokenizer_vocab_folder(tmp_path):
    (tmp_path / "vocab.txt").write_text(BUNDLED_VOCAB.read_text(encoding="utf-8"), encoding="utf-8")
    assert len(load_tokenizer(tmp_path).get_vocab()) == 30522


def test_load_tokenizer_saved_tokenizer_folder(tmp_path):
    bert_tokenizer().save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer(GROUNDING_CAPTION)["input_ids"] == bert_tokenizer()(GROUNDING_CAPTION)["input_ids"]


def test_load_tokenizer_missing_path_raises(tmp_path):
    with pytest.raises(ValueError):
        load_tokenizer(tmp_path / "nothing-here")


# --- 7. batches ---------------------------------------------------------------------------------------------------


def assert_rows_match_alone(out, prompts, phrase_lists=None):
    """Each image's rows equal the rows of processing its prompt alone (sliced to that prompt's length)."""
    phrase_lists = phrase_lists or [None] * len(prompts)
    image_index = out["image_index"].tolist()
    for image, (prompt, phrases) in enumerate(zip(prompts, phrase_lists)):
        alone = processor()(text=prompt, phrases=phrases)
        rows = [r for r, i in enumerate(image_index) if i == image]
        assert len(rows) == alone["input_ids"].shape[0]
        assert out["text_labels"][image] == alone["text_labels"][0]
        for row, alone_row in zip(rows, range(alone["input_ids"].shape[0])):
            length = int(alone["attention_mask"][alone_row].sum())
            phrases_here = int((alone["label_ids"][alone_row] >= 0).sum())
            torch.testing.assert_close(out["token_maps"][row, :phrases_here, :length],
                                       alone["token_maps"][alone_row, :phrases_here, :length])
            assert (out["token_maps"][row, phrases_here:] == 0).all()
            assert (out["token_maps"][row, :, length:] == 0).all()
            assert out["input_ids"][row, :length].tolist() == alone["input_ids"][alone_row, :length].tolist()
            expected_labels = alone["label_ids"][alone_row, :phrases_here].tolist()
            assert out["label_ids"][row, :phrases_here].tolist() == expected_labels
            assert (out["label_ids"][row, phrases_here:] == -1).all()


def test_mixed_batch_without_images():
    prompts = [["cat", "dog"], "a red car. a tree."]
    out = processor()(text=prompts)
    assert out["text_labels"] == [["cat", "dog"], ["a red car", "a tree"]]
    assert out["image_index"].tolist() == [0, 1]
    assert "pixel_values" not in out
    assert_rows_match_alone(out, prompts)


def test_batch_with_phrases_per_image():
    prompts = [GROUNDING_CAPTION, ["person", "helmet"], "a cat and a cat"]
    phrases = [GROUNDING_PHRASES, None, ["cat", (0, 5)]]
    out = processor()(text=prompts, phrases=phrases)
    assert out["text_labels"] == [GROUNDING_PHRASES, ["person", "helmet"], ["cat", "a cat"]]
    assert_rows_match_alone(out, prompts, phrases)


def test_flat_list_without_images_is_one_class_list():
    """A flat list of strings without images is one image's class names, not a batch of captions."""
    out = processor()(text=["a cat.", "a dog."])
    assert out["text_labels"] == [["a cat.", "a dog."]]
    assert out["image_index"].tolist() == [0]


def test_batch_prompt_count_must_match_phrases():
    with pytest.raises(ValueError):
        processor()(text=[["cat"], "a dog"], phrases=[None])


@FEW
@given(prompts=st.lists(st.one_of(st.lists(class_names, min_size=1, max_size=30), captions_with_phrases()),
                        min_size=1, max_size=4),
       max_text_len=st.integers(24, 64))
def test_batches_equal_prompts_alone(prompts, max_text_len):
    texts = [p[0] if isinstance(p, tuple) else p for p in prompts]
    phrases = [p[1] if isinstance(p, tuple) else None for p in prompts]
    images = [np.zeros((20, 30, 3), dtype=np.uint8)] * len(texts)  # a list of captions needs images to be a batch
    proc = processor(max_text_len)
    try:
        alone = [proc(text=t, phrases=ph) for t, ph in zip(texts, phrases)]
    except ValueError:
        event("a prompt raises alone")
        with pytest.raises(ValueError):
            proc(images=images, text=texts, phrases=phrases)
        return
    out = proc(images=images, text=texts, phrases=phrases)
    assert out["pixel_values"].shape[0] == len(texts)
    assert out["text_labels"] == [a["text_labels"][0] for a in alone]
    expected_index = [i for i, a in enumerate(alone) for _ in range(a["input_ids"].shape[0])]
    assert out["image_index"].tolist() == expected_index
    row = 0
    for a in alone:
        for r in range(a["input_ids"].shape[0]):
            length = int(a["attention_mask"][r].sum())
            count = int((a["label_ids"][r] >= 0).sum())
            torch.testing.assert_close(out["token_maps"][row, :count, :length], a["token_maps"][r, :count, :length])
            assert (out["token_maps"][row, count:] == 0).all() and (out["token_maps"][row, :, length:] == 0).all()
            assert out["label_ids"][row, :count].tolist() == a["label_ids"][r, :count].tolist()
            assert out["input_ids"][row, :length].tolist() == a["input_ids"][r, :length].tolist()
            row += 1
    assert row == out["input_ids"].shape[0]
