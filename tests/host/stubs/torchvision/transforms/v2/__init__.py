"""``torchvision.transforms.v2`` (test stub): the same minimal API as ``transforms``."""
from .. import Compose, InterpolationMode, Normalize  # noqa: F401
from . import functional  # noqa: F401
