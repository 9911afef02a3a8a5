"""Host-neutral names and defaults for DiT (flow transformer) backbones: Flux.1 and SD3.x / MMDiT.

Both adapters (ComfyUI and diffusers) name the blocks of a DiT the same way, so a K,V bank, a feature level or
a parity test means the same thing on either host:

* ``"double_blocks.{i}"``: Flux double-stream blocks and SD3 joint blocks (diffusers ``transformer_blocks.{i}``,
  ComfyUI ``double_blocks.{i}`` / ``joint_blocks.{i}``);
* ``"single_blocks.{i}"``: Flux single-stream blocks (diffusers ``single_transformer_blocks.{i}``).

A feature *level* on a DiT is the global block index: double/joint blocks ``0 .. D-1``, then single blocks
``D .. D+S-1``. A feature is the image tokens of that block's output on the token grid ``[B, C, h/p, w/p]``.
"""
from __future__ import annotations

#: the default feature blocks as fractions of the depth (double blocks first, then single). Measured by
#: ``bench/dit_levels.py`` (feature correspondence under a known shift): random weights did not discriminate
#: (``bench/results/dit_levels.json``); on tiny Flux (2 + 4) and SD3 (6) DiTs trained minutes on the benchmark
#: scenes (``bench/train_tiny_dit.py``, ``bench/results/dit_levels_trained.json``) the second half of the depth
#: matches best and both models rank the blocks at 0.833 then 0.667 of the depth first (0.5 is 4-5 paired
#: standard errors worse; 1.0 a near tie). Flux.1 (19 + 38): blocks (37, 46) = single blocks 18, 27; SD3 (24):
#: (15, 19). A tiny model trained minutes is not Flux / SD3: to be re-checked with ``--pretrained`` on real
#: weights.
DIT_LEVEL_FRACTIONS: tuple[float, ...] = (0.667, 0.833)


def double_name(i: int) -> str:
    return f"double_blocks.{int(i)}"


def single_name(i: int) -> str:
    return f"single_blocks.{int(i)}"


def block_name(level: int, n_double: int) -> str:
    """The layer name of global block index ``level``."""
    return double_name(level) if level < n_double else single_name(level - n_double)


def default_dit_levels(n_double: int, n_single: int = 0,
                       fractions: tuple[float, ...] = DIT_LEVEL_FRACTIONS) -> tuple[int, ...]:
    """The default feature levels of a DiT with ``n_double`` double/joint and ``n_single`` single blocks: the
    blocks at ``fractions`` of the depth (block ``round(f * total) - 1``), deduplicated, so a very shallow
    model can get a single level (the 2 + 2 / 3-block test models: ``(2,)`` / ``(1,)``)."""
    total = int(n_double) + int(n_single)
    if total <= 0:
        raise ValueError("a DiT needs at least one block")
    return tuple(sorted({min(total - 1, max(0, int(round(f * total)) - 1)) for f in fractions}))
