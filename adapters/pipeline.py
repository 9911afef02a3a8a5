"""Headless editing pipeline on diffusers components (batch jobs, benchmarks, the demo).

    pipe = DiffEditorPipeline(unet, vae=vae, encode_text=lambda prompts: text_encoder(tokenize(prompts)))
    z = pipe.encode_image(image)                      # [B,H,W,3] in 0..1 -> model-scale latent
    traj = pipe.invert(z, "a red circle", steps=50)   # EditTrajectory (+ K,V bank)
    out = pipe.decode(pipe.reconstruct(traj, "a red circle"))

``encode_text`` maps a list of prompts to hidden states ``[B, T, D]``; use
:meth:`DiffEditorPipeline.from_stable_diffusion` for the usual CLIP tokenizer/encoder pair.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..samplers.blend import TrajectoryAnchor
from ..samplers.edit import EditSchedule, EditStats, EditTask, preset_schedule, sample_edit
from ..samplers.hooks import EditHooks, KVBank
from ..samplers.inversion import invert
from ..samplers.sampling import sample_diffeditor
from ..samplers.schedule import StepWindow, ddim_sigmas
from ..samplers.trajectory import EditTrajectory, tensor_fingerprint
from .diffusers_adapter import DiffusersDenoiser, DiffusersHost, model_id


class DiffEditorPipeline:
    def __init__(self, unet, vae=None, encode_text: Callable[[Sequence[str]], torch.Tensor] | None = None,
                 alphas_cumprod: torch.Tensor | None = None, latent_scale: float | None = None,
                 interrupt: Callable[[], None] | None = None, progress: bool = False):
        self.unet, self.vae, self.encode_text = unet, vae, encode_text
        self.alphas_cumprod = alphas_cumprod
        if latent_scale is None:
            latent_scale = float(getattr(getattr(vae, "config", None), "scaling_factor", 0.18215) or 0.18215)
        self.latent_scale = latent_scale
        self.hooks = EditHooks()
        self.model_id = model_id(unet)
        self.interrupt = interrupt
        self.disable = not progress

    @classmethod
    def from_stable_diffusion(cls, unet, vae, text_encoder, tokenizer, scheduler=None, **kw):
        def encode(prompts):
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(text_encoder.device)
            with torch.no_grad():
                return text_encoder(ids)[0]

        ac = None if scheduler is None else scheduler.alphas_cumprod
        return cls(unet, vae=vae, encode_text=encode, alphas_cumprod=ac, **kw)

    # ------------------------------------------------------------------------------------ I/O helpers
    @property
    def pixels_per_latent(self) -> int:
        """The VAE's downsampling factor (8 for Stable Diffusion, 4 for the demo model): pass it to
        ``make_task(..., pixels_per_latent=...)`` so edit specs stay in image pixels."""
        boc = getattr(getattr(self.vae, "config", None), "block_out_channels", None)
        return 8 if boc is None else 2 ** (len(boc) - 1)

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def text(self, prompt: str | torch.Tensor) -> torch.Tensor:
        if isinstance(prompt, torch.Tensor):
            return prompt.to(self.device)
        if self.encode_text is None:
            raise ValueError("prompt is text but the pipeline has no encode_text; pass hidden states instead")
        return self.encode_text([prompt]).to(self.device)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B,H,W,3]`` in 0..1 -> latent (posterior mean x scale)."""
        if self.vae is None:
            raise ValueError("the pipeline has no VAE")
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"image must be [B, H, W, 3], got {tuple(image.shape)}")
        x = image.permute(0, 3, 1, 2).to(self.device, next(self.vae.parameters()).dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean.float() * self.latent_scale

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent -> ``[B,H,W,3]`` in 0..1."""
        if self.vae is None:
            raise ValueError("the pipeline has no VAE")
        img = self.vae.decode((latent / self.latent_scale).to(next(self.vae.parameters()).dtype)).sample
        return ((img.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    def denoiser(self, prompt, negative=None, cfg: float = 1.0) -> DiffusersDenoiser:
        cond = self.text(prompt)
        uncond = None if cfg == 1.0 else self.text("" if negative is None else negative)
        return DiffusersDenoiser(self.unet, cond, uncond, cfg=cfg, alphas_cumprod=self.alphas_cumprod,
                                 hooks=self.hooks)

    # -------------------------------------------------------------------------------------- the jobs
    def invert(self, latent: torch.Tensor, prompt, steps: int = 50, exact_iters: int = 0,
               bank_window: StepWindow | None = StepWindow(0.0, 1.0), bank_budget_mb: float | None = None,
               cfg: float = 1.0, negative=None) -> EditTrajectory:
        sig = ddim_sigmas(steps, self.alphas_cumprod).to(self.device)
        den = self.denoiser(prompt, negative, cfg)
        bank = None
        if bank_window is not None:
            budget = None if bank_budget_mb is None else int(bank_budget_mb * 2 ** 20)
            bank = KVBank(steps=bank_window.indices(steps), byte_budget=budget)
        with den.installed():
            return invert(den, latent.to(self.device), sig, model_id=self.model_id,
                          cond_fingerprint=tensor_fingerprint(den.cond), cfg=cfg, exact_iters=exact_iters,
                          hooks=self.hooks, bank=bank, disable=self.disable, interrupt=self.interrupt)

    def reconstruct(self, trajectory: EditTrajectory, prompt, cfg: float = 1.0, negative=None) -> torch.Tensor:
        den = self.denoiser(prompt, negative, cfg)
        x = trajectory.z_T
        with den.installed():
            return sample_diffeditor(den, x, trajectory.sigmas.to(x.device), trajectory=trajectory,
                                     model_id=self.model_id, hooks=self.hooks, disable=self.disable)

    def edit(self, trajectory: EditTrajectory, task: EditTask, prompt, negative=None, cfg: float = 4.0,
             schedule: EditSchedule | None = None, seed: int = 42, stats: EditStats | None = None,
             blend: TrajectoryAnchor | None = None) -> torch.Tensor:
        """Run DiffEditor's editing loop; ``task`` comes from ``guidance.tasks`` (move, drag, ...).

        ``blend``: pin the latent outside its mask to its trajectory after every step of its window
        (e.g. ``TrajectoryAnchor(trajectory, task.edited_region)`` keeps the background exactly on the inversion).
        """
        den = self.denoiser(prompt, negative, cfg)
        host = DiffusersHost(den, interrupt=self.interrupt)
        x = trajectory.z_T
        with den.installed():
            return sample_edit(den, x, trajectory.sigmas.to(x.device), host=host, hooks=self.hooks,
                               trajectory=trajectory, task=task, schedule=schedule or preset_schedule(),
                               seed=seed, model_id=self.model_id, stats=stats, blend=blend, disable=self.disable)

    def stable_edit(self, trajectory: EditTrajectory, task: EditTask, prompt, negative=None, cfg: float = 4.0,
                    schedule: EditSchedule | None = None, seed: int = 42, threshold_db: float = 35.0,
                    max_level: int = 3, stats: EditStats | None = None):
        """:meth:`edit` with stability tracking (``samplers/stability.py``): while the edit changes the
        source outside ``task.edited_region`` by more than ``threshold_db`` allows, re-run it less aggressively
        (gentler guidance and SDE, then the background locked, then the source kept outside). Returns
        ``(latent, report)``."""
        from ..samplers.stability import stable_edit

        def run(sched, lock):
            blend = TrajectoryAnchor(trajectory, task.edited_region) if lock else None
            return self.edit(trajectory, task, prompt, negative, cfg, sched, seed, stats, blend)

        return stable_edit(run, schedule or preset_schedule(), trajectory.x0, task.edited_region, threshold_db,
                           max_level)

    def edit_pack(self, trajectory: EditTrajectory, task: EditTask, spec, prompt, negative=None, cfg: float = 4.0,
                  seed: int = 42, object_mask=None, stats: EditStats | None = None) -> torch.Tensor:
        """The pack's ``DiffEditor+`` preset (``samplers/pack.py``): per task the measured-best plan.
        ``spec`` is the task's pixel-space spec (it places the warp); ``object_mask``: for a drag, the
        region that moves (default: the spec's mask, else a disc around each handle)."""
        from ..guidance.warp import warp_for_spec
        from ..samplers.pack import pack_plan, sample_pack

        plan = pack_plan(task.task)
        warp = None
        if plan.method == "warp":
            warp = warp_for_spec(spec, tuple(trajectory.shape[-2:]), self.pixels_per_latent, object_mask=object_mask)
        den = self.denoiser(prompt, negative, cfg)
        host = DiffusersHost(den, interrupt=self.interrupt)
        x = trajectory.z_T
        with den.installed():
            out = sample_pack(den, x, trajectory.sigmas.to(x.device), host=host, hooks=self.hooks,
                              trajectory=trajectory, task=task, plan=plan, warp=warp, seed=seed,
                              model_id=self.model_id, stats=stats, disable=self.disable)
        self.last_calls = den.calls  # UNet calls of this edit (CFG batches count once)
        return out
