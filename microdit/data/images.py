"""Decoding images from downloads, whose sizes nobody checked: a counted skip for what cannot or should not be
decoded, never an exception.

The pixel cap is checked on the header, before any pixel is decoded. Pillow's own decompression-bomb check only
warns up to twice its limit (89.5 MP; refused from 179 MP), so without a cap of our own an image of 150 MP was
decoded in full: about 0.5 GB as RGB, more while decoding, in every worker.
"""
import io
import warnings

from PIL import Image

from microdit.arguments import number_type

MAX_PIXELS = 50_000_000  # 50 MP: far above any training or reference image the recipe uses (SA-1B's are ~3.4 MP)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image | None, str]:
    """(fully decoded RGB image, "ok"), or (None, "too_large" or "bad_image") for images over the pixel cap or
    empty, truncated or undecodable bytes."""
    try:
        with warnings.catch_warnings():  # Pillow warns about sizes that the cap below refuses anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            return None, "too_large"
        image.load()  # decode now: a truncated file fails here rather than inside a writer or a feature network
        return image.convert("RGB"), "ok"
    except Image.DecompressionBombError:
        return None, "too_large"
    except (OSError, ValueError, SyntaxError):  # Pillow: SyntaxError for broken PNGs
        return None, "bad_image"


# --max-pixels: a positive integer up to Pillow's decompression-bomb limit
max_pixels_arg = number_type(int, lambda value: 1 <= value <= Image.MAX_IMAGE_PIXELS,
                             f"an integer from 1 to Pillow's limit {Image.MAX_IMAGE_PIXELS}")


def add_max_pixels(parser) -> None:
    parser.add_argument("--max-pixels", type=max_pixels_arg, default=MAX_PIXELS,
                        help=f"skip images with more pixels, before decoding them (default {MAX_PIXELS:,})")
