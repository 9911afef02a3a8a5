"""Node-facing conversions for the editing nodes (pure: no ComfyUI imports, no tensors).

:func:`schedule_from_knobs` turns the user-facing knobs of the DiffEditor Edit / Edit Sampler nodes into an
:class:`~..samplers.edit.EditSchedule`. ``None`` means "auto": the preset's value for the task. Unlike passing
windows straight to ``build_schedule``, an "auto" strength keeps a mechanism *off* when the preset has it off
(DragonDiffusion has no regional SDE and no time travel), whatever windows are given.
"""
from __future__ import annotations

from dataclasses import replace

from ..samplers.edit import build_schedule, preset_schedule
from ..samplers.schedule import StepWindow

__all__ = ["schedule_from_knobs"]


def _window(start: float, end: float, start_name: str, end_name: str) -> tuple[float, float]:
    for v, n in ((start, start_name), (end, end_name)):
        if not (0.0 <= float(v) <= 1.0):
            raise ValueError(f"{n} must be a fraction of the steps in [0, 1], got {v}")
    if float(start) >= float(end):
        raise ValueError(f"{start_name} ({start}) must be smaller than {end_name} ({end})")
    return float(start), float(end)


def _clip_guidance(windows: tuple[StepWindow, ...], start: float) -> tuple[StepWindow, ...]:
    """The guidance windows with every step before the fraction ``start`` removed (each keeps its ``every``)."""
    out = tuple(StepWindow(max(w.start, start), w.end, w.every) for w in windows if w.end > start)
    if not out:
        raise ValueError(f"guidance_start ({start}) lies after the end of guidance; lower it or raise guidance_end")
    return out


def schedule_from_knobs(preset: str, task: str, *, energy_ui: float | None = None, kappa: float | None = None,
                        regional: bool = True, guidance_start: float = 0.0, guidance_end: float | None = None,
                        sde_strength: float | None = None, sde_strength_outside: float = 0.0,
                        sde_window: tuple[float, float] = (0.22, 0.4), time_travel_repeats: int | None = None,
                        time_travel_window: tuple[float, float] = (0.44, 0.6), kv_mode: str = "auto",
                        kv_window: tuple[float | None, float | None] = (None, None)):
    """An ``EditSchedule`` from node knobs (``None`` = the preset/task default).

    * ``energy_ui``: official UI energy (engine scale = x1000); ``kappa``: step size factor;
    * ``guidance_start`` / ``guidance_end``: the guided steps lie in that window (fractions); DiffEditor's
      dense-then-every-2nd pattern is kept inside it;
    * ``sde_strength`` / ``sde_strength_outside``: regional SDE eta inside / outside the SDE region on
      ``sde_window``; auto strength = the preset's (0 when the preset has no SDE); both 0 = off;
    * ``time_travel_repeats`` on ``time_travel_window`` (every 2nd step); auto = the preset's (1 = off when the
      preset has no time travel);
    * ``kv_mode``: ``auto`` / ``replace`` / ``concat`` / ``composite`` / ``off``; ``kv_window`` = (start, end),
      each ``None`` for the task's.
    """
    base = preset_schedule(preset, task)
    sde_window = _window(*sde_window, "sde_start", "sde_end")
    time_travel_window = _window(*time_travel_window, "time_travel_start", "time_travel_end")
    if energy_ui is not None and not energy_ui >= 0:
        raise ValueError(f"energy must be >= 0 (or -1 for the task default), got {energy_ui}")
    if kappa is not None and not kappa >= 0:
        raise ValueError(f"kappa must be >= 0 (or -1 for the task default), got {kappa}")
    if guidance_end is not None and not 0 <= guidance_end <= 1:
        raise ValueError(f"guidance_end must be a fraction in [0, 1] (or -1 for the preset's), got {guidance_end}")
    if not 0 <= guidance_start < 1:
        raise ValueError(f"guidance_start must be a fraction in [0, 1), got {guidance_start}")
    if sde_strength is not None and not 0 <= sde_strength <= 1:
        raise ValueError(f"sde_strength must be in [0, 1] (or -1 for the preset's), got {sde_strength}")
    if not 0 <= sde_strength_outside <= 1:
        raise ValueError(f"sde_strength_outside must be in [0, 1], got {sde_strength_outside}")
    if time_travel_repeats is not None and time_travel_repeats < 1:
        raise ValueError(f"time_travel_repeats must be >= 1 (1 = off; -1 for the preset's), got {time_travel_repeats}")

    kv = None
    if kv_window[0] is not None or kv_window[1] is not None:
        ks = kv_window[0] if kv_window[0] is not None else (base.kv.start if base.kv else 0.0)
        ke = kv_window[1] if kv_window[1] is not None else (base.kv.end if base.kv else 1.0)
        kv = _window(ks, ke, "kv_start", "kv_end")
    s = build_schedule(preset, task, energy_ui=energy_ui, kappa=kappa, regional=regional, guidance_end=guidance_end,
                       sde_strength=sde_strength, sde_window=sde_window, time_travel_repeats=time_travel_repeats,
                       time_travel_window=time_travel_window, kv_mode=kv_mode, kv_window=kv)
    if guidance_start > 0:
        s = replace(s, guidance=_clip_guidance(s.guidance, guidance_start))
    if sde_strength_outside > 0:
        s = replace(s, eta_out=float(sde_strength_outside), sde=StepWindow(*sde_window))
    return s
