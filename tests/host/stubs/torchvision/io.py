"""Placeholder ``torchvision.io`` (test stub): importable, unusable."""
import enum


class ImageReadMode(enum.Enum):
    UNCHANGED = 0
    GRAY = 1
    GRAY_ALPHA = 2
    RGB = 3
    RGB_ALPHA = 4


def _unavailable(*args, **kwargs):
    raise ImportError("torchvision.io is not available (test stub of torchvision)")


decode_image = read_image = read_video = write_video = write_png = _unavailable
