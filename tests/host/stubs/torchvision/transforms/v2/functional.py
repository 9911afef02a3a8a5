"""``torchvision.transforms.v2.functional`` (test stub)."""
from ..functional import pil_to_tensor, resize, to_tensor  # noqa: F401
