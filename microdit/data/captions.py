"""Caption decoding and cleaning for converted datasets.

The reference cleans CC12M alt-text at precompute time with DeepFloyd-IF's caption cleaner, applied twice (SPEC
§4.2). We clean at convert time (the stored caption is then the one that gets encoded) with that same cleaner, as
diffusers ships it in the PixArt-alpha pipeline (it needs beautifulsoup4 and ftfy): URL-encoding, HTML markup,
links, @handles, CJK text, file names, image sizes, ids, shop phrases and runs of punctuation removed, the text
lower-cased.
"""
import functools

from microdit.errors import UserError

MAX_CHARS = 1000  # far beyond the text encoder's 77 tokens; bounds the cost of the cleaner's regexes on a huge caption


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
    """The reference's cleaning of one caption (two passes, as theirs)."""
    return reference_cleaner()._text_preprocessing(text[:MAX_CHARS], clean_caption=True)[0]


@functools.cache
def reference_cleaner():
    """A bare PixArt-alpha pipeline object: its caption cleaning is a private method (no weights are needed for it)."""
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import PixArtAlphaPipeline
    from diffusers.utils import is_bs4_available, is_ftfy_available

    # diffusers would log a warning and leave the caption uncleaned
    if not (is_bs4_available() and is_ftfy_available()):
        raise UserError("caption cleaning needs beautifulsoup4 and ftfy: pip install -r envs/requirements.txt")
    return PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)
