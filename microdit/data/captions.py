"""Caption decoding and cleaning for converted datasets.

The reference cleans CC12M alt-text at precompute time with DeepFloyd-IF's caption cleaner, applied twice (SPEC
§4.2). We clean at convert time (the stored caption is then the one that gets encoded) with a cleaner of our own
that removes the same kinds of web noise: URL-encoding, HTML markup and entities, links, @handles, CJK text, file
names, image sizes, IP addresses, ids and long numbers, words-joined-by-many-hyphens, and runs of quotes, dots and
whitespace; dashes and quotes are normalised and the text lower-cased (the reference's output is lower case; the
CLIP tokenizer lower-cases anyway). It is not byte-identical to theirs: it keeps, e.g., their list of shop phrases
out. Applied twice, as theirs, since one removal can expose another (a link inside markup).
"""
import html
import re
import unicodedata
from urllib.parse import unquote_plus

TAG = re.compile(r"<[^>]{0,200}>")
URL = re.compile(r"\b(?:https?://|www\.)\S+|\b\S+\.(?:com|net|org|co|io|ru|de|uk)(?:/\S*)?\b", re.IGNORECASE)
HANDLE = re.compile(r"@[\w.]+")
CJK = re.compile("[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ef\u3200-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                 "\uff66-\uff9f]+")
FILE_NAME = re.compile(r"\S+\.(?:png|jpe?g|gif|bmp|webp|tiff?|eps|svg|pdf|psd|ai|apk|mp4|mov|zip)\b", re.IGNORECASE)
SIZE = re.compile(r"\b\d{1,5}\s?[x×х]\s?\d{1,5}\b(?:\s?(?:px|pixels))?", re.IGNORECASE)
IP_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
NUMBER_ID = re.compile(r"#\d+\b|\b\d{6,}\b|\b[a-z]{1,3}\d{3,}[a-z\d]*\b|\b\d{3,}[a-z]{2,}\d+\b",  # "jc6640"
                       re.IGNORECASE)
HYPHENATED = re.compile(r"\b\w+(?:[-_]\w+){3,}\b")  # "this-is-my-cute-cat": a slug, not words
DASHES = re.compile("[\u2010-\u2015\u2212\ufe58\ufe63\uff0d]")
ENCODED = re.compile(r"%[0-9a-f]{2}", re.IGNORECASE)
QUOTES = {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2018": "'", "\u2019": "'",
          "\u201a": "'", "`": "'", "\u00b4": "'"}
QUOTE_TABLE = str.maketrans(QUOTES)
REPEATS = re.compile(r"([\"'])\1+|\.{2,}|([!?,;:*_~|])\2+")
SPACE = re.compile(r"\s+")
SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")
EDGES = " \t-_.,;:*|/\\"


def decode_caption(raw: bytes | None) -> str | None:
    """UTF-8 text with surrounding whitespace removed; None when missing, not UTF-8 or empty."""
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None


def clean_caption(text: str) -> str:
    for _ in range(2):
        text = _clean_once(text)
    return text


def _clean_once(text: str) -> str:
    if ENCODED.search(text) or ("+" in text and " " not in text):  # URL-encoded ("red%20shoes", "red+shoes")
        text = unquote_plus(text)
    text = unicodedata.normalize("NFKC", html.unescape(html.unescape(text))).lower()  # "&amp;amp;" is common
    text = TAG.sub(" ", text)
    for pattern in (URL, HANDLE, FILE_NAME, IP_ADDRESS, SIZE, NUMBER_ID, CJK):
        text = pattern.sub(" ", text)
    text = HYPHENATED.sub(lambda m: re.sub(r"[-_]", " ", m.group(0)), text)
    text = DASHES.sub("-", text).translate(QUOTE_TABLE)
    text = REPEATS.sub(lambda m: m.group(1) or m.group(2) or " ", text)
    text = SPACE_BEFORE_PUNCTUATION.sub(r"\1", SPACE.sub(" ", text)).strip(EDGES)
    if len(text) > 1 and text[0] == text[-1] in "\"'" and text[0] not in text[1:-1]:  # a caption in quotes
        text = text[1:-1].strip(EDGES)
    return text
