"""Caption decoding and cleaning for converted datasets.

The reference cleans CC12M alt-text at precompute time with DeepFloyd-IF's caption cleaner, applied twice (SPEC
§4.2). We clean at convert time (the stored caption is then the one that gets encoded) with a cleaner of our own
that removes the same kinds of web noise: URL-encoding, HTML markup and entities, links, @handles, CJK text, file
names, image sizes, IP addresses, ids and long numbers, words-joined-by-many-hyphens, and runs of quotes, dots and
whitespace; dashes and quotes are normalised and the text lower-cased (the reference's output is lower case; the
CLIP tokenizer lower-cases anyway). It is not byte-identical to theirs: it leaves out, e.g., their list of shop
phrases, and it keeps text that only looks like noise ("100%Acrylic", "2 x 4 lumber", "ASP.NET"). Applied twice,
as theirs, since one removal can expose another (markup escaped three times).
"""
import html
import re
import unicodedata
from urllib.parse import unquote

TAG = re.compile(r"<[^>]{0,200}>")
URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
# a bare domain: lower-case TLD as typed (so "ASP.NET", "apples.Net weight" stay) ending the token or starting a path
DOMAIN = re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|co|io|ru|de|uk)(?:/\S*)?(?=[\s,;:!?)]|$)")
HANDLE = re.compile(r"@[\w.]+")
CJK = re.compile("[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ef\u3200-\u4dbf\u4e00-\u9fff"
                 "\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+")
FILE_NAME = re.compile(r"\S+\.(?:png|jpe?g|gif|bmp|webp|tiff?|eps|svg|pdf|psd|ai|apk|mp4|mov|zip)\b", re.IGNORECASE)
SIZE = re.compile(r"\b\d{1,5}[x×х]\d{1,5}\b(?:\s?(?:px|pixels))?", re.IGNORECASE)  # "1920x1080"; "2 x 4" stays
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
SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])(?!\w)")  # "by : x" -> "by: x"; "a .45 caliber" stays
JOINED = re.compile(r"(?<=\w)\+(?=\w)")  # "red+shoes": '+' for a space, not "c++" or "disney+"
MAX_CHARS = 1000  # far beyond the text encoder's 77 tokens; bounds the cost of a pathological token
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


def url_decoded(text: str) -> str:
    """URL-encoded alt-text ("red%20shoes", "red+shoes") decoded; "100%Acrylic" is no escape (not UTF-8) and stays."""
    if ENCODED.search(text):
        try:
            text = unquote(text, errors="strict")
        except UnicodeDecodeError:
            pass
    if " " not in text:
        text = JOINED.sub(" ", text)
    return text


def clean_caption(text: str) -> str:
    for _ in range(2):
        text = _clean_once(text)
    return text.lower()  # last: a bare domain is told from "ASP.NET" by its case


def _clean_once(text: str) -> str:
    text = url_decoded(text[:MAX_CHARS])
    text = unicodedata.normalize("NFKC", html.unescape(html.unescape(text)))  # "&amp;amp;" is common
    text = DOMAIN.sub(" ", URL.sub(" ", TAG.sub(" ", text)))
    for pattern in (HANDLE, FILE_NAME, IP_ADDRESS, SIZE, NUMBER_ID, CJK):
        text = pattern.sub(" ", text)
    text = HYPHENATED.sub(lambda m: re.sub(r"[-_]", " ", m.group(0)), text)
    text = DASHES.sub("-", text).translate(QUOTE_TABLE)
    text = REPEATS.sub(lambda m: m.group(1) or m.group(2) or " ", text)
    text = SPACE_BEFORE_PUNCTUATION.sub(r"\1", SPACE.sub(" ", text)).strip(EDGES)
    if len(text) > 1 and text[0] == text[-1] in "\"'" and text[0] not in text[1:-1]:  # a caption in quotes
        text = text[1:-1].strip(EDGES)
    return text
