"""Train the demo model on generated scenes (CLI).

Stage 1 trains the autoencoder (L1 + L2 reconstruction of a posterior sample + a tiny KL), logging the
PSNR of the posterior mean on a fixed held-out batch, then sets the VAE's ``scaling_factor`` to
``1 / std(latents)``. Stage 2 trains the UNet and the text encoder jointly with the epsilon loss on scaled
latents (the VAE frozen), Min-SNR-5 weighted (Hang et al. 2023: the same optimum, faster convergence),
dropping 10% of captions to the empty prompt (for classifier-free guidance), with an EMA of the weights
that is what gets saved. Both stages use a linear warm-up then a cosine decay of the learning rate.

    python models/demo/train.py --seed 0 --threads 2 --out out/demo     # the CPU recipe (defaults)
    python models/demo/train.py --device cuda --init models/demo/weights --vae-steps 0 --reinit-unet \
        --batch 512 --unet-lr 1e-3 --workers 12 --unet-seconds 330 --out out/demo   # the GPU recipe
    python -m diffeditor.models.demo.train --seed 0 --steps 50 --out out/demo   # (package import) a quick run

Writes ``config.json`` + ``vae/unet/text_encoder.safetensors`` (see ``load.py``) and ``model_card.json``
(arguments, parameter counts, loss curves, measured seconds per step, versions). ``--init DIR`` starts
from a saved model (e.g. ``--vae-steps 0`` to train only the UNet on a trained VAE).

On a GPU the scene renderer (numpy, one CPU core per worker) is the bottleneck, so ``--workers N`` renders
scenes in N processes and :class:`SceneStream` encodes each once with the frozen VAE into a ring buffer of
posterior means and standard deviations on the device; every step draws its batch from the buffer (a fresh
posterior sample each time), while new scenes keep replacing the oldest. ``--unet-seconds`` sets the
UNet stage's length by wall time: the step count is fixed after 40 measured steps, so that the cosine
schedule ends at the deadline.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run by path: load the pack as ``diffeditor`` (the repo root is the package)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    import pack_loader

    pack_loader.load("diffeditor")
    __package__ = "diffeditor.models.demo"

from ...bench.scenes import make_scene  # noqa: E402
from .load import build_random, load_demo, save_demo  # noqa: E402


#: the committed recipe (``models/demo/weights``): ~20 + ~28 minutes on 2 CPU cores
VAE_STEPS, UNET_STEPS = 2400, 3000


def scene_batch(rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, list[str]]:
    """``([B, 3, 64, 64]`` images in ``-1..1``, captions) of freshly generated scenes."""
    scenes = [make_scene(int(rng.integers(2 ** 62))) for _ in range(batch)]
    x = torch.from_numpy(np.stack([s.image() for s in scenes])).permute(0, 3, 1, 2).contiguous()
    return x * 2 - 1, [s.caption() for s in scenes]


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


class _Timer:
    def __init__(self):
        self.data = self.step = 0.0
        self.n = 0

    def summary(self) -> dict:
        n = max(self.n, 1)
        return {"steps": self.n, "s_per_step": (self.data + self.step) / n, "data_s_per_step": self.data / n,
                "compute_s_per_step": self.step / n}


def lr_factor(step: int, steps: int, warmup: int, final: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to ``final`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup - 1)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def vae_psnr(vae, x: torch.Tensor, chunk: int = 32) -> float:
    """Mean PSNR (dB, images in 0..1) of decoding the posterior mean of ``x`` (``-1..1``)."""
    was = vae.training
    vae.eval()
    vals = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        rec = vae.decode(vae.encode(xb).latent_dist.mean).sample.clamp(-1, 1)
        mse = ((rec - xb) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        vals.append(-10 * torch.log10(mse))
    vae.train(was)
    return float(torch.cat(vals).mean())


def train_vae(vae, steps: int, rng, batch: int, lr: float, kl_weight: float, device, log_every: int, log,
              warmup: int = 100, heldout: torch.Tensor | None = None) -> dict:
    vae.train().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, steps, warmup))
    curve, timer = [], _Timer()
    for step in range(steps):
        t0 = time.perf_counter()
        x, _ = scene_batch(rng, batch)
        x = x.to(device)
        t1 = time.perf_counter()
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1, l2 = F.l1_loss(rec, x), F.mse_loss(rec, x)
        kl = post.kl().mean() / post.mean[0].numel()  # per latent element
        loss = l1 + l2 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        timer.data += t1 - t0
        timer.step += t2 - t1
        timer.n += 1
        if step % log_every == 0 or step == steps - 1:
            row = {"step": step, "loss": loss.item(), "l1": l1.item(), "l2": l2.item(), "kl": kl.item()}
            if heldout is not None:
                row["psnr"] = vae_psnr(vae, heldout.to(device))
            curve.append(row)
            log(f"vae  {step:6d}  loss {row['loss']:.4f}  l1 {row['l1']:.4f}  l2 {row['l2']:.4f}  kl {row['kl']:.3f}"
                + (f"  psnr {row['psnr']:.2f} dB" if "psnr" in row else "")
                + f"  lr {sched.get_last_lr()[0]:.2e}  {(timer.data + timer.step) / timer.n:.3f} s/step")
    vae.eval()
    return {"curve": curve, **timer.summary()}


@torch.no_grad()
def latent_scale(vae, rng, batch: int, device, batches: int = 8) -> float:
    zs = [vae.encode(scene_batch(rng, batch)[0].to(device)).latent_dist.sample() for _ in range(batches)]
    return float(1.0 / torch.cat(zs).float().std())


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1 - decay)


class SceneStream:
    """Scenes rendered by ``workers`` processes, VAE-encoded once into a device ring buffer (see module doc).

    ``batch(n, uncond_p, gen)`` returns ``(z, ids)``: ``n`` scaled latents (a fresh sample of each stored
    posterior) and their caption token ids, captions dropped to "" with probability ``uncond_p``.
    """

    def __init__(self, vae, tokenizer, device, workers: int, seed: int, capacity: int = 262144,
                 chunk: int = 256, min_fill: int = 16384, log=print):
        import multiprocessing as mp

        self.pool = mp.get_context("fork").Pool(workers)  # forked first: before this process touches the GPU
        self.vae, self.tok, self.device, self.chunk = vae.to(device), tokenizer, device, chunk
        self.sf = float(vae.config.scaling_factor)
        self.capacity, self.min_fill, self.log = capacity, min(min_fill, capacity), log
        self.seeds = np.random.default_rng(seed)
        self.pending: list = []
        self.inflight = 2 * workers
        self.filled = self.head = self.scenes = 0
        self.mean = self.std = self.ids = None
        with torch.no_grad():
            self.empty_ids = tokenizer([""]).to(device)[0]

    def _submit(self):
        while len(self.pending) < self.inflight:
            seeds = [int(v) for v in self.seeds.integers(2 ** 62, size=self.chunk)]
            self.pending.append(self.pool.apply_async(_render_chunk, (seeds,)))

    @torch.no_grad()
    def _ingest(self, images: np.ndarray, caps: list[str]):
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() * 2 - 1
        post = self.vae.encode(x).latent_dist
        ids = self.tok(caps).to(self.device)
        if self.mean is None:
            shape = (self.capacity, *post.mean.shape[1:])
            self.mean = torch.empty(shape, device=self.device)
            self.std = torch.empty(shape, device=self.device)
            self.ids = torch.empty((self.capacity, ids.shape[1]), dtype=ids.dtype, device=self.device)
        n = len(caps)
        idx = (self.head + torch.arange(n, device=self.device)) % self.capacity
        self.mean[idx], self.std[idx], self.ids[idx] = post.mean.float(), post.std.float(), ids
        self.head = (self.head + n) % self.capacity
        self.filled = min(self.capacity, self.filled + n)
        self.scenes += n

    def poll(self, block: bool = False) -> int:
        """Ingest every finished chunk (waiting for one if ``block``); returns the number ingested."""
        self._submit()
        done = 0
        while self.pending and (self.pending[0].ready() or (block and done == 0)):
            images, caps = self.pending.pop(0).get()
            self._ingest(images, caps)
            done += 1
        self._submit()
        return done

    def fill(self):
        t = time.perf_counter()
        while self.filled < self.min_fill:
            self.poll(block=True)
        self.log(f"scene buffer: {self.filled} scenes in {time.perf_counter() - t:.1f} s")

    def batch(self, n: int, uncond_p: float, gen: torch.Generator):
        self.poll()
        idx = torch.randint(0, self.filled, (n,), device=self.device, generator=gen)
        mean, std = self.mean[idx], self.std[idx]
        z = (mean + std * torch.randn(mean.shape, device=self.device, generator=gen)) * self.sf
        drop = torch.rand(n, device=self.device, generator=gen) < uncond_p
        ids = torch.where(drop[:, None], self.empty_ids[None], self.ids[idx])
        return z, ids

    def close(self):
        self.pool.terminate()


def _render_chunk(seeds: list[int]) -> tuple[np.ndarray, list[str]]:
    """Worker: scenes of ``seeds`` as ``float16 [n, 64, 64, 3]`` images in 0..1 and their captions."""
    scenes = [make_scene(s) for s in seeds]
    return np.stack([s.image() for s in scenes]).astype(np.float16), [s.caption() for s in scenes]


def train_unet(vae, unet, text_encoder, tokenizer, alphas_cumprod, steps: int, rng, batch: int, lr: float,
               device, log_every: int, log, uncond_p: float = 0.1, ema_decay: float = 0.999,
               gen: torch.Generator | None = None, warmup: int = 200,
               min_snr: float = 5.0, stream: SceneStream | None = None, seconds: float | None = None,
               amp: torch.dtype | None = None) -> tuple[dict, torch.nn.Module, torch.nn.Module]:
    """Train the UNet + text encoder. With ``stream`` the batches come from its buffer; with ``seconds``
    the step count is set after 40 steps from their measured speed so that training ends at the deadline
    (``steps`` is then only an upper bound); ``amp`` runs the UNet forward in that dtype (autocast)."""
    vae.eval().to(device).requires_grad_(False)
    unet.train().to(device)
    text_encoder.train().to(device)
    ema_u, ema_t = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema_params = list(ema_u.parameters()) + list(ema_t.parameters())
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, **fused)
    plan = {"steps": steps}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, plan["steps"], warmup))
    ac = alphas_cumprod.to(device=device, dtype=torch.float32)
    sf = float(vae.config.scaling_factor)
    curve, timer = [], _Timer()
    t_start = time.perf_counter()
    probe = 40
    step = 0
    while step < plan["steps"]:
        t0 = time.perf_counter()
        if stream is not None:
            z, ids = stream.batch(batch, uncond_p, gen)
        else:
            x, caps = scene_batch(rng, batch)
            caps = ["" if rng.random() < uncond_p else c for c in caps]
            ids = tokenizer(caps).to(device)
            x = x.to(device)
        t1 = time.perf_counter()
        if stream is None:
            with torch.no_grad():
                z = vae.encode(x).latent_dist.sample(generator=None) * sf
        t = torch.randint(0, len(ac), (batch,), device=device, generator=gen)
        noise = torch.randn(z.shape, device=device, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z + (1 - a).sqrt() * noise
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            pred = unet(zt, t, text_encoder(ids)).sample
        per = (pred.float() - noise).pow(2).flatten(1).mean(1)
        if min_snr > 0:  # Min-SNR-gamma for eps prediction: weight min(snr, gamma) / snr
            snr = ac[t] / (1 - ac[t])
            per = per * snr.clamp(max=min_snr) / snr
        loss = per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        d = min(ema_decay, (1 + step) / (10 + step))  # warm-up of the EMA
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - d)
        if device.type == "cuda" and (step % log_every == 0 or step < probe):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        timer.data += t1 - t0
        timer.step += t2 - t1
        timer.n += 1
        if seconds is not None and step in (9, probe - 1):  # fix the step count from the measured speed
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if step == 9:
                plan["t_mark"] = now
            else:
                per_step = (now - plan["t_mark"]) / (probe - 10)
                left = seconds - (now - t_start)
                plan["steps"] = min(steps, probe + max(0, int(left / per_step)))
                log(f"unet: {per_step * 1000:.1f} ms/step measured -> {plan['steps']} steps in {seconds:.0f} s")
        if step % log_every == 0 or step == plan["steps"] - 1:
            curve.append({"step": step, "loss": loss.item()})
            extra = f"  scenes {stream.scenes}" if stream is not None else ""
            log(f"unet {step:6d}  weighted eps loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{(timer.data + timer.step) / timer.n:.3f} s/step{extra}")
        step += 1
    summary = {"curve": curve, **timer.summary(), "wall_s": time.perf_counter() - t_start, "batch": batch}
    if stream is not None:
        summary["unique_scenes"] = stream.scenes
    return summary, ema_u, ema_t


def _stage_record(summary: dict, args: dict | None) -> dict:
    """One UNet stage for the card: steps, batch, learning rate, wall time and device (no loss curve)."""
    args = args or {}
    keep = ("steps", "s_per_step", "wall_s", "unique_scenes", "reinit")
    rec = {k: summary[k] for k in keep if k in summary}
    rec["batch"] = summary.get("batch", args.get("batch"))
    rec.update({k: args.get(k) for k in ("unet_lr", "unet_warmup", "ema", "amp", "device", "init", "seed")})
    return rec


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="steps of each stage unless --vae-steps/--unet-steps")
    p.add_argument("--vae-steps", type=int, default=None, help=f"default {VAE_STEPS}")
    p.add_argument("--unet-steps", type=int, default=None, help=f"default {UNET_STEPS}")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1.5e-3)
    p.add_argument("--unet-lr", type=float, default=8e-4)
    p.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the per-element KL (tiny)")
    p.add_argument("--uncond-p", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--vae-warmup", type=int, default=100)
    p.add_argument("--unet-warmup", type=int, default=200)
    p.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-gamma loss weight (0: plain eps MSE)")
    p.add_argument("--heldout", type=int, default=64, help="held-out scenes for the autoencoder PSNR")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0,
                   help="scene-rendering processes feeding a VAE-latent buffer on the device (0: render inline)")
    p.add_argument("--buffer", type=int, default=262144, help="scenes held in the latent buffer (--workers)")
    p.add_argument("--chunk", type=int, default=256, help="scenes a worker renders per task (--workers)")
    p.add_argument("--unet-seconds", type=float, default=None,
                   help="length of the UNet stage in wall seconds (steps then set from the measured speed)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast the UNet forward")
    p.add_argument("--reinit-unet", action="store_true",
                   help="with --init: keep its autoencoder, start the UNet and text encoder from the seed")
    p.add_argument("--init", default=None, help="start from a saved demo model folder")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    vae_steps = a.vae_steps if a.vae_steps is not None else (a.steps if a.steps is not None else VAE_STEPS)
    unet_steps = a.unet_steps if a.unet_steps is not None else (a.steps if a.steps is not None else UNET_STEPS)
    if a.unet_seconds is not None and a.unet_steps is None:
        unet_steps = 10 ** 7  # bounded by the wall time
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    if a.init:
        vae, unet, te, tok, ac = load_demo(a.init)
        if a.reinit_unet:
            _, unet, te, _, _ = build_random(a.seed)
    else:
        vae, unet, te, tok, ac = build_random(a.seed)
    stream = None
    if a.workers > 0 and unet_steps > 0:
        if vae_steps > 0:
            raise SystemExit("--workers needs a trained autoencoder: use it with --init DIR --vae-steps 0")
        stream = SceneStream(vae, tok, device, a.workers, a.seed + 2, capacity=a.buffer, chunk=a.chunk,
                             log=print)
    gen = torch.Generator(device=device).manual_seed(a.seed + 1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def log(msg):
        print(msg, flush=True)

    log(f"params: vae {_params(vae):,}  unet {_params(unet):,}  text {_params(te):,}  threads {torch.get_num_threads()}")
    t_start = time.perf_counter()
    card: dict = {"args": vars(a), "params": {"vae": _params(vae), "unet": _params(unet), "text_encoder": _params(te)}}
    if a.init and (pathlib.Path(a.init) / "model_card.json").exists():
        prev = json.loads((pathlib.Path(a.init) / "model_card.json").read_text())
        card["init"] = {"path": str(a.init), "args": prev.get("args")}
        for stage in ("vae", "unet"):  # stages trained earlier carry over into this card
            if stage in prev:
                card[stage] = prev[stage]
        if not a.reinit_unet:  # the UNet continues: keep the record of each of its earlier stages
            card["unet_stages"] = prev.get("unet_stages") or ([_stage_record(prev["unet"], prev.get("args"))]
                                                               if "unet" in prev else [])
    heldout = scene_batch(np.random.default_rng(10 ** 9 + a.seed), a.heldout)[0] if a.heldout > 0 else None
    if vae_steps > 0:
        card["vae"] = train_vae(vae, vae_steps, rng, a.batch, a.vae_lr, a.kl_weight, device, a.log_every, log,
                                a.vae_warmup, heldout)
        vae.register_to_config(scaling_factor=latent_scale(vae, rng, a.batch, device))
        log(f"vae scaling_factor {vae.config.scaling_factor:.4f}")
    if unet_steps > 0:
        amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.amp]
        if stream is not None:
            stream.fill()
        try:
            card["unet"], unet, te = train_unet(vae, unet, te, tok, ac, unet_steps, rng, a.batch, a.unet_lr, device,
                                                a.log_every, log, a.uncond_p, a.ema, gen, a.unet_warmup, a.min_snr,
                                                stream, a.unet_seconds, amp)
        finally:
            if stream is not None:
                stream.close()
        if a.reinit_unet:
            card["unet"]["reinit"] = True
        card["unet_stages"] = card.get("unet_stages", []) + [_stage_record(card["unet"], vars(a))]
    card["scaling_factor"] = float(vae.config.scaling_factor)
    if heldout is not None:
        card["vae_psnr_heldout"] = vae_psnr(vae, heldout.to(device))
        log(f"autoencoder PSNR on {len(heldout)} held-out scenes: {card['vae_psnr_heldout']:.2f} dB")
    card["total_s"] = time.perf_counter() - t_start
    import diffusers

    card["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__}
    card["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = pathlib.Path(a.out)
    unet_total = (sum(st["steps"] for st in card["unet_stages"]) if card.get("unet_stages")
                  else card.get("unet", {}).get("steps", 0))
    trained = {"vae_steps": card.get("vae", {}).get("steps", 0), "unet_steps": unet_total,
               "unet_samples": sum(st["steps"] * st["batch"] for st in card.get("unet_stages", [])) or None,
               "seed": a.seed}  # stages carried over from --init count too
    save_demo(out, vae.cpu(), unet.cpu(), te.cpu(), tok, extra={"trained": trained})
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    for stage in ("vae", "unet"):
        if stage in card:
            s = card[stage]
            log(f"{stage}: {s['steps']} steps, {s['s_per_step']:.3f} s/step "
                f"(data {s['data_s_per_step']:.3f}, compute {s['compute_s_per_step']:.3f}), "
                f"final loss {s['curve'][-1]['loss']:.4f}")
    log(f"saved to {out}")
    return card


if __name__ == "__main__":
    main()
