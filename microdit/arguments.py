"""argparse types shared by the commands: a bad value is a usage error naming the option, not a traceback later."""
import argparse
import math


def number_type(convert, accepts, expected: str):
    """The argparse type of the numbers that `convert` reads from the text and `accepts`; any other text is the
    usage error "expected <expected>, got '<text>'"."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = number_type(int, lambda value: value >= 1, "an integer >= 1")
# finite: float() also reads 'nan' and 'inf'
non_negative_float = number_type(float, lambda value: math.isfinite(value) and value >= 0, "a finite number >= 0")
