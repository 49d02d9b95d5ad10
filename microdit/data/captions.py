"""Caption decoding and cleaning for converted datasets.

The reference cleans CC12M alt-text with DeepFloyd-IF's cleaner at precompute time; we clean at convert time (the
stored caption is then the one that gets encoded) with a small cleaner of our own covering the alt-text noise that
matters for a text encoder: HTML markup and entities, URLs, and runs of whitespace."""
import html
import re

TAG = re.compile(r"<[^>]{0,200}>")
URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
SPACE = re.compile(r"\s+")


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
    text = html.unescape(html.unescape(text))  # alt-text is often escaped twice ("&amp;amp;")
    text = URL.sub(" ", TAG.sub(" ", text))
    return SPACE.sub(" ", text).strip(" \t\"'")
