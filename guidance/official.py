"""The official DiffEditor / DragonDiffusion constants, in one table (reference doc §1.9-§1.10).

Everything the presets, the energies, the node defaults and the example workflows take from the official
code is defined here once; the rest of the pack reads it from here. Windows are fractions of the step
count (:class:`~.windows.StepWindow`): at 50 steps they are exactly the official step indices.

``energy_scale`` is the official UI energy x 1000 (move 0.5, drag 2, appearance 2, paste 1.5); the
effective guidance strength is ``energy_scale * kappa``.
"""
from __future__ import annotations

from .windows import StepWindow

TASKS = ("move", "drag", "appearance", "paste")

# Per task: classifier-free guidance, energy scale, kappa, the energy weights (only those the task's energy
# uses) and the visual cross-attention (mode and window).
TASK_DEFAULTS: dict[str, dict] = {
    "move": dict(cfg=4.0, energy_scale=500.0, kappa=0.08, w_edit=4.0, w_content=6.0, w_contrast=0.2,
                 w_inpaint=0.8, kv_mode="replace", kv=StepWindow(0.1, 1.0)),
    "drag": dict(cfg=4.0, energy_scale=2000.0, kappa=0.04, w_edit=4.0, w_content=6.0, w_inpaint=0.2,
                 kv_mode="concat", kv=StepWindow(0.1, 1.0)),
    "appearance": dict(cfg=5.0, energy_scale=2000.0, kappa=0.04, w_edit=3.5, w_content=5.0,
                       kv_mode="composite", kv=StepWindow(0.0, 0.72)),
    "paste": dict(cfg=4.0, energy_scale=1500.0, kappa=0.04, w_edit=4.0, w_content=6.0,
                  kv_mode="composite", kv=StepWindow(0.0, 0.72)),
}

#: The energy weights each task's energy takes (the keys of TASK_DEFAULTS starting with ``w_``).
WEIGHT_KEYS: dict[str, tuple[str, ...]] = {t: tuple(k for k in d if k.startswith("w_"))
                                           for t, d in TASK_DEFAULTS.items()}

# DiffEditor (official alg 'D+'): guidance on steps 0-9 then every 2nd until 30 of 50; regional SDE
# (eta 0.4 inside the edit region) on 11-19; time travel at 22, 24, 26, 28 with 3 passes each.
GUIDANCE_DENSE_END = 0.2
GUIDANCE_END = 0.6
GUIDANCE_EVERY = 2
SDE_WINDOW = (0.22, 0.4)
SDE_STRENGTH = 0.4
TIME_TRAVEL_WINDOW = (0.44, 0.6)
TIME_TRAVEL_EVERY = 2
TIME_TRAVEL_REPEATS = 3

DIFFEDITOR_GUIDANCE = (StepWindow(0.0, GUIDANCE_DENSE_END),
                       StepWindow(GUIDANCE_DENSE_END, GUIDANCE_END, GUIDANCE_EVERY))
# DragonDiffusion (official alg 'D'): guidance on every step below 30 of 50, no SDE, no time travel.
DRAGON_GUIDANCE = (StepWindow(0.0, GUIDANCE_END),)

PRESET_NAMES = ("DiffEditor", "DragonDiffusion")
