"""Headless editing pipeline on diffusers components (batch jobs, benchmarks, the demo).

    pipe = DiffEditorPipeline(unet, vae=vae, encode_text=lambda prompts: text_encoder(tokenize(prompts)))
    z = pipe.encode_image(image)                      # [B,H,W,3] in 0..1 -> model-scale latent
    traj = pipe.invert(z, "a red circle", steps=50)   # EditTrajectory (+ K,V bank)
    out = pipe.decode(pipe.reconstruct(traj, "a red circle"))

``encode_text`` maps a list of prompts to hidden states ``[B, T, D]``; use
:meth:`DiffEditorPipeline.from_stable_diffusion` for the usual CLIP tokenizer/encoder pair.

Flow transformers (diffusers ``FluxTransformer2DModel``, ``SD3Transformer2DModel``; the family is detected from
the model class) go through the same methods on ``adapters/diffusers_dit.py``: rectified-flow sigmas as
diffusers' ``FlowMatchEulerDiscreteScheduler`` (``shift``; default 3.0 for SD3, Flux's resolution-dependent
``exp(mu)``), and ``encode_text`` returns ``(hidden_states, pooled)`` (Flux: T5 hidden states + CLIP pooled;
SD3: the joint CLIP+T5 hidden states + the pooled CLIP pair); a prompt may also be given as that pair.
A guidance-distilled Flux takes ``cfg=1`` and its ``guidance`` value (constructor option, 3.5 by default).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..samplers.blend import TrajectoryAnchor
from ..samplers.edit import EditSchedule, EditStats, EditTask, preset_schedule, sample_edit
from ..samplers.hooks import EditHooks, KVBank
from ..samplers.inversion import invert
from ..samplers.param import EPS, FLOW
from ..samplers.sampling import sample_diffeditor
from ..samplers.schedule import StepWindow, ddim_sigmas
from ..samplers.trajectory import EditTrajectory, tensor_fingerprint
from .diffusers_adapter import DiffusersDenoiser, DiffusersHost, model_id
from .diffusers_dit import DiTHost, FlowDenoiser, dit_family, flow_sigmas, flux_shift


class DiffEditorPipeline:
    def __init__(self, unet, vae=None, encode_text: Callable[[Sequence[str]], torch.Tensor] | None = None,
                 alphas_cumprod: torch.Tensor | None = None, latent_scale: float | None = None,
                 interrupt: Callable[[], None] | None = None, progress: bool = False, shift: float | None = None,
                 guidance: float = 3.5, latent_shift: float | None = None):
        self.unet, self.vae, self.encode_text = unet, vae, encode_text
        self.alphas_cumprod = alphas_cumprod
        #: None (a UNet, eps prediction) or the flow transformer's family ("flux", "sd3")
        self.family = dit_family(unet)
        self.param = EPS if self.family is None else FLOW
        if self.family is not None and alphas_cumprod is not None:
            raise ValueError("alphas_cumprod is a UNet (eps) schedule; a flow transformer takes shift instead")
        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0):
            raise ValueError(f"shift must be a positive number, got {shift!r}")
        self.shift, self.guidance = shift, float(guidance)
        if latent_scale is None:
            latent_scale = float(getattr(getattr(vae, "config", None), "scaling_factor", 0.18215) or 0.18215)
        self.latent_scale = latent_scale
        if latent_shift is None:  # Flux / SD3 VAEs: latent = (mean - shift_factor) * scaling_factor
            latent_shift = getattr(getattr(vae, "config", None), "shift_factor", None)
        self.latent_shift = float(latent_shift or 0.0)
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

    @classmethod
    def from_flux(cls, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                  max_sequence_length: int = 512, **kw):
        """Flux.1 components (as ``FluxPipeline``'s): CLIP (``text_encoder``) gives the pooled embedding, T5
        (``text_encoder_2``) the hidden states; ``guidance`` / ``shift`` go to the constructor."""
        def encode(prompts):
            prompts = list(prompts)
            with torch.no_grad():
                ids = _ids(tokenizer, prompts, tokenizer.model_max_length, text_encoder)
                pooled = text_encoder(ids, output_hidden_states=False).pooler_output
                ids2 = _ids(tokenizer_2, prompts, max_sequence_length, text_encoder_2)
                hidden = text_encoder_2(ids2, output_hidden_states=False)[0]
            return hidden, pooled

        return cls(transformer, vae=vae, encode_text=encode, **kw)

    @classmethod
    def from_sd3(cls, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3=None,
                 tokenizer_3=None, max_sequence_length: int = 256, **kw):
        """SD3.x components (as ``StableDiffusion3Pipeline``'s): the two CLIPs' penultimate hidden states side by
        side, zero-padded to the T5 width and followed by the T5 tokens (zeros without T5); pooled = both CLIPs'
        projected embeddings."""
        def clip(enc, tok, prompts):
            out = enc(_ids(tok, prompts, tok.model_max_length, enc), output_hidden_states=True)
            return out.hidden_states[-2], out[0]

        def encode(prompts):
            prompts = list(prompts)
            with torch.no_grad():
                h1, p1 = clip(text_encoder, tokenizer, prompts)
                h2, p2 = clip(text_encoder_2, tokenizer_2, prompts)
                width = int(transformer.config.joint_attention_dim)
                if text_encoder_3 is None:
                    t5 = h1.new_zeros(len(prompts), max_sequence_length, width)
                else:
                    t5 = text_encoder_3(_ids(tokenizer_3, prompts, max_sequence_length, text_encoder_3))[0]
                c = torch.cat([h1, h2], dim=-1)
                c = torch.nn.functional.pad(c, (0, t5.shape[-1] - c.shape[-1]))
                return torch.cat([c, t5.to(c.dtype)], dim=-2), torch.cat([p1, p2], dim=-1)

        return cls(transformer, vae=vae, encode_text=encode, **kw)

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

    def text(self, prompt):
        """The conditioning of ``prompt``: hidden states (UNet) or ``(hidden_states, pooled)`` (flow DiT)."""
        if self.family is not None:
            return self._dit_text(prompt)
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
        mean = self.vae.encode(x).latent_dist.mean.float()
        if self.latent_shift:
            mean = mean - self.latent_shift
        return mean * self.latent_scale

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent -> ``[B,H,W,3]`` in 0..1."""
        if self.vae is None:
            raise ValueError("the pipeline has no VAE")
        z = latent / self.latent_scale
        if self.latent_shift:
            z = z + self.latent_shift
        img = self.vae.decode(z.to(next(self.vae.parameters()).dtype)).sample
        return ((img.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    def _dit_text(self, prompt):
        if isinstance(prompt, (tuple, list)) and len(prompt) == 2 and all(isinstance(t, torch.Tensor) for t in prompt):
            out = prompt
        elif isinstance(prompt, torch.Tensor):
            raise ValueError(f"a {self.family} transformer needs (hidden_states, pooled) for a prompt, not hidden "
                             "states alone")
        elif self.encode_text is None:
            raise ValueError("prompt is text but the pipeline has no encode_text; pass (hidden_states, pooled)")
        else:
            out = self.encode_text([prompt])
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError(f"encode_text must return (hidden_states, pooled) for a {self.family} transformer")
        hidden, pooled = out
        return hidden.to(self.device), pooled.to(self.device)

    def denoiser(self, prompt, negative=None, cfg: float = 1.0):
        if self.family is not None:
            cond, pooled = self.text(prompt)
            uncond = upooled = None
            if cfg != 1.0:
                uncond, upooled = self.text("" if negative is None else negative)
            return FlowDenoiser(self.unet, cond, pooled, uncond, upooled, cfg=cfg, guidance=self.guidance,
                                hooks=self.hooks)
        cond = self.text(prompt)
        uncond = None if cfg == 1.0 else self.text("" if negative is None else negative)
        return DiffusersDenoiser(self.unet, cond, uncond, cfg=cfg, alphas_cumprod=self.alphas_cumprod,
                                 hooks=self.hooks)

    def host(self, denoiser):
        """The editing host (features, conditional denoise) of a :meth:`denoiser`."""
        if self.family is not None:
            return DiTHost(denoiser, interrupt=self.interrupt)
        return DiffusersHost(denoiser, interrupt=self.interrupt)

    def sigmas(self, steps: int, latent: torch.Tensor | None = None) -> torch.Tensor:
        """The sampling sigmas for ``steps`` steps (descending, ending at 0): DDIM's for a UNet; for a flow
        transformer ``flow_sigmas(steps, shift)`` (SD3: shift 3.0 unless given; Flux: ``exp(mu)`` of the
        latent's token count unless given, 3.0 without a latent)."""
        if self.family is None:
            return ddim_sigmas(steps, self.alphas_cumprod)
        shift = self.shift
        if shift is None:
            if self.family == "flux" and latent is not None:
                shift = flux_shift((latent.shape[-2] // 2) * (latent.shape[-1] // 2))
            else:
                shift = 3.0
        return flow_sigmas(steps, shift)

    def _check(self, trajectory: EditTrajectory, name: str = "trajectory"):
        """Refuse a trajectory of the other model family, naming both families."""
        trajectory.check_compatible(param=self.param, name=name)

    # -------------------------------------------------------------------------------------- the jobs
    def invert(self, latent: torch.Tensor, prompt, steps: int = 50, exact_iters: int = 0,
               bank_window: StepWindow | None = StepWindow(0.0, 1.0), bank_budget_mb: float | None = None,
               cfg: float = 1.0, negative=None) -> EditTrajectory:
        flow = self.family is not None
        sig = (self.sigmas(steps, latent) if flow else ddim_sigmas(steps, self.alphas_cumprod)).to(self.device)
        den = self.denoiser(prompt, negative, cfg)
        bank = None
        if bank_window is not None:
            budget = None if bank_budget_mb is None else int(bank_budget_mb * 2 ** 20)
            bank = KVBank(steps=bank_window.indices(steps), byte_budget=budget)
        fingerprint = tensor_fingerprint(den.cond, den.pooled) if flow else tensor_fingerprint(den.cond)
        with den.installed():
            return invert(den, latent.to(self.device), sig, model_id=self.model_id, cond_fingerprint=fingerprint,
                          cfg=cfg, exact_iters=exact_iters, hooks=self.hooks, bank=bank, disable=self.disable,
                          interrupt=self.interrupt, param=FLOW if flow else None)

    def reconstruct(self, trajectory: EditTrajectory, prompt, cfg: float = 1.0, negative=None) -> torch.Tensor:
        self._check(trajectory)
        den = self.denoiser(prompt, negative, cfg)
        x = trajectory.z_T
        with den.installed():
            return sample_diffeditor(den, x, trajectory.sigmas.to(x.device), trajectory=trajectory,
                                     model_id=self.model_id, hooks=self.hooks, disable=self.disable,
                                     param=self.param)

    def edit(self, trajectory: EditTrajectory, task: EditTask, prompt, negative=None, cfg: float = 4.0,
             schedule: EditSchedule | None = None, seed: int = 42, stats: EditStats | None = None,
             blend: TrajectoryAnchor | None = None) -> torch.Tensor:
        """Run DiffEditor's editing loop; ``task`` comes from ``guidance.tasks`` (move, drag, ...).

        ``blend``: pin the latent outside its mask to its trajectory after every step of its window
        (e.g. ``TrajectoryAnchor(trajectory, task.edited_region)`` keeps the background exactly on the inversion).
        """
        self._check(trajectory)
        den = self.denoiser(prompt, negative, cfg)
        host = self.host(den)
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

        self._check(trajectory)
        plan = pack_plan(task.task)
        warp = None
        if plan.method == "warp":
            warp = warp_for_spec(spec, tuple(trajectory.shape[-2:]), self.pixels_per_latent, object_mask=object_mask)
        den = self.denoiser(prompt, negative, cfg)
        host = self.host(den)
        x = trajectory.z_T
        with den.installed():
            out = sample_pack(den, x, trajectory.sigmas.to(x.device), host=host, hooks=self.hooks,
                              trajectory=trajectory, task=task, plan=plan, warp=warp, seed=seed,
                              model_id=self.model_id, stats=stats, disable=self.disable)
        self.last_calls = den.calls  # UNet calls of this edit (CFG batches count once)
        return out

    def drag(self, trajectory: EditTrajectory, handles, targets, prompt, mask: torch.Tensor | None = None,
             strength: float | None = None, image_size=None, seed: int = 42, **options):
        """GoodDrag's alternating drag and denoising (``samplers/drag.py``) from ``strength`` of the schedule
        (default its 0.75), then plain conditional sampling to the end (cfg 1, as GoodDrag). ``handles`` /
        ``targets``: ``(x, y)`` image pixels; ``image_size`` defaults to ``pixels_per_latent`` x the latent;
        ``options`` override ``ALDD_DEFAULTS``. Returns ``(latent, info)``."""
        from ..samplers.drag import ALDD_DEFAULTS, alternating_drag, strength_step

        self._check(trajectory)
        k = strength_step(trajectory.steps, ALDD_DEFAULTS["strength"] if strength is None else strength)
        sig = trajectory.sigmas.to(self.device)
        den = self.denoiser(prompt, None, 1.0)
        f = self.pixels_per_latent
        size = image_size or (f * trajectory.shape[-2], f * trajectory.shape[-1])
        opts = {key: v for key, v in ALDD_DEFAULTS.items() if key != "strength"}
        opts.update(options)
        with den.installed():
            x, step, final, info = alternating_drag(self.host(den), trajectory, sig, k, handles, targets, mask=mask,
                                                    image_size=size, like=trajectory.z_T.to(self.device), **opts)
            out = sample_diffeditor(den, x, sig[step:], disable=True, seed=seed, param=self.param)
        self.last_calls = den.calls
        return out, dict(info, start=k, stopped_at=step, final_handles=final, calls=den.calls)


def _ids(tokenizer, prompts, max_length: int, encoder) -> torch.Tensor:
    """Token ids padded / truncated to ``max_length``, on the encoder's device."""
    ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(next(encoder.parameters()).device)
