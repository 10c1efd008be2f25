"""``covidct train synthesizer``: an unpaired CycleGAN from non-COVID (A) to COVID-like (B) chest CT lung crops.

Two generators (:class:`~CovidCTLib.models.runtime.synth_networks.ResnetGenerator`, A->B and B->A) and two
PatchGAN discriminators (MONAI ``PatchDiscriminator``, instance norm); least-squares adversarial loss,
cycle-consistency loss (weight ``lambda_cycle``) and identity loss (``lambda_identity`` x ``lambda_cycle``);
a pool of 50 earlier fakes per discriminator; Adam (2e-4, betas 0.5 / 0.999), learning rate constant for the
first half of the steps and decaying linearly to zero over the second half.

In ``RUN``: ``last.pt`` (every ``checkpoint_every`` steps and at the end: all four networks, both optimisers,
step count, pools and RNG states, plain values only, so ``--resume`` continues exactly), ``log.jsonl`` (losses),
``samples/step_NNNNNN.png`` (a grid: A, G(A), F(G(A)) and B, F(B), G(F(B)) rows) after every epoch and at the
end, and ``model/covid-synthesizer/`` (the A->B generator: fp16 weights + sealed manifest) at the end.
The GAN's own train loop is here, not in :mod:`CovidCTLib.models.training.trainer`: that loop drives one
network with one optimiser and a validation metric, a CycleGAN alternates two optimisers and has no metric.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from CovidCTLib.atomic import atomic_path
from CovidCTLib.errors import InputError
from CovidCTLib.models.data.unpaired import Domain, load_domain
from CovidCTLib.models.runtime.device import resolve_device, set_training_threads
from CovidCTLib.models.runtime.synth_networks import ResnetGenerator
from CovidCTLib.models.training.checkpoints import load_checkpoint, save_checkpoint
from CovidCTLib.progress import Reporter
from CovidCTLib.version import DISCLAIMER, __version__

MODEL_NAME = "covid-synthesizer"
MODEL_VERSION = "0.1.0"
NORMALIZATION = "lung-crop-display-v1"


@dataclass
class SynthConfig:
    """CycleGAN settings (all stored in the checkpoint and the manifest)."""

    size: int = 64
    max_steps: int = 3000
    batch_size: int = 4
    seed: int = 0
    lr: float = 2e-4
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    base: int = 16
    n_down: int = 2
    n_blocks: int = 4
    d_channels: int = 16
    d_layers: int = 3
    pool_size: int = 50
    checkpoint_every: int = 200
    log_every: int = 20
    max_slices_per_volume: int = 40
    threads: int = 1
    device: str = "auto"
    sources_a: list[str] = field(default_factory=list)
    sources_b: list[str] = field(default_factory=list)


class ImagePool:
    """The CycleGAN history of generated images: half the time the discriminator sees an older fake."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        for img in batch.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif rng.random() < 0.5:
                i = int(rng.integers(self.size))
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)


def build_discriminator(cfg: SynthConfig) -> torch.nn.Module:
    """A MONAI PatchGAN discriminator (70x70-style, instance norm) for 1-channel images."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(
        spatial_dims=2, channels=cfg.d_channels, in_channels=1, num_layers_d=cfg.d_layers, norm="INSTANCE"
    )


def build_generator(cfg: SynthConfig) -> ResnetGenerator:
    return ResnetGenerator(1, cfg.base, cfg.n_down, cfg.n_blocks)


def generator_architecture(cfg: SynthConfig) -> dict[str, Any]:
    """The manifest ``architecture`` block of the exported generator."""
    return {
        "network": "cyclegan-resnet",
        "kwargs": {"in_channels": 1, "base": cfg.base, "n_down": cfg.n_down, "n_blocks": cfg.n_blocks},
    }


def _d_out(d: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = d(x)
    return out[-1] if isinstance(out, (list, tuple)) else out


def lr_factor(step: int, total: int) -> float:
    """1 for the first half of the steps, then linear decay to 0 at ``total``."""
    half = total // 2
    if step < half:
        return 1.0
    return max(0.0, 1.0 - (step - half) / max(1, total - half))


def sample_batch(domain: Domain, n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random crops (each source folder equally often; ``size`` px, random position, left-right flip half
    the time) in ``[-1, 1]``."""
    store = domain.crops.shape[-1]
    idx = domain.draw(n, rng)
    out = np.empty((n, 1, size, size), dtype=np.float32)
    for k, i in enumerate(idx):
        y, x = (int(v) for v in rng.integers(0, store - size + 1, size=2))
        crop = domain.crops[i, y : y + size, x : x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[k, 0] = crop.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(out)


def center_batch(domain: Domain, indices: list[int], size: int) -> torch.Tensor:
    """The centre ``size`` px of the chosen crops in ``[-1, 1]`` (the fixed sample-grid images)."""
    store = domain.crops.shape[-1]
    o = (store - size) // 2
    arr = domain.crops[indices, o : o + size, o : o + size].astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr[:, None].copy())


def store_size(size: int) -> int:
    """Stored crop side: 1/8 larger than the training size, for random crops."""
    return size + max(2, size // 8)


class CycleGAN:
    """The four networks, their optimisers and pools, one training step and the checkpoint state."""

    def __init__(self, cfg: SynthConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        self.g_ab, self.g_ba = build_generator(cfg).to(device), build_generator(cfg).to(device)
        self.d_a, self.d_b = build_discriminator(cfg).to(device), build_discriminator(cfg).to(device)
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam(list(self.g_ab.parameters()) + list(self.g_ba.parameters()), cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(list(self.d_a.parameters()) + list(self.d_b.parameters()), cfg.lr, betas=betas)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size), ImagePool(cfg.pool_size)

    def set_lr(self, factor: float) -> None:
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self.cfg.lr * factor

    def step(self, real_a: torch.Tensor, real_b: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        """One generator update and one discriminator update; returns the losses."""
        cfg = self.cfg
        real_a, real_b = real_a.to(self.device), real_b.to(self.device)
        for d in (self.d_a, self.d_b):
            d.requires_grad_(False)
        fake_b, fake_a = self.g_ab(real_a), self.g_ba(real_b)
        pred_fb, pred_fa = _d_out(self.d_b, fake_b), _d_out(self.d_a, fake_a)
        adv = F.mse_loss(pred_fb, torch.ones_like(pred_fb)) + F.mse_loss(pred_fa, torch.ones_like(pred_fa))
        cyc = F.l1_loss(self.g_ba(fake_b), real_a) + F.l1_loss(self.g_ab(fake_a), real_b)
        idt = F.l1_loss(self.g_ab(real_b), real_b) + F.l1_loss(self.g_ba(real_a), real_a)
        loss_g = adv + cfg.lambda_cycle * cyc + cfg.lambda_cycle * cfg.lambda_identity * idt
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        for d in (self.d_a, self.d_b):
            d.requires_grad_(True)
        loss_d = torch.zeros((), device=self.device)
        for d, real, pool, fake in ((self.d_b, real_b, self.pool_b, fake_b), (self.d_a, real_a, self.pool_a, fake_a)):
            p_real, p_fake = _d_out(d, real), _d_out(d, pool.query(fake, rng).to(self.device))
            loss_d = loss_d + 0.5 * (
                F.mse_loss(p_real, torch.ones_like(p_real)) + F.mse_loss(p_fake, torch.zeros_like(p_fake))
            )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return {
            "g_adv": float(adv.detach()),
            "cycle": float(cyc.detach()),
            "identity": float(idt.detach()),
            "d": float(loss_d.detach()),
        }

    def state(self) -> dict[str, Any]:
        return {
            "g_ab": self.g_ab.state_dict(),
            "g_ba": self.g_ba.state_dict(),
            "d_a": self.d_a.state_dict(),
            "d_b": self.d_b.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "pool_a": [t.cpu() for t in self.pool_a.images],
            "pool_b": [t.cpu() for t in self.pool_b.images],
        }

    def load_state(self, ck: dict[str, Any]) -> None:
        for name in ("g_ab", "g_ba", "d_a", "d_b", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(ck[name])
        self.pool_a.images = list(ck["pool_a"])
        self.pool_b.images = list(ck["pool_b"])


def write_grid(path: Path, rows: list[torch.Tensor], caption: str) -> None:
    """A PNG of image rows (each ``(n, 1, s, s)`` in ``[-1, 1]``) with a caption strip."""
    from PIL import Image, ImageDraw

    tiles = [
        np.concatenate([((t[0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8) for t in row], axis=1)
        for row in rows
    ]
    grid = np.concatenate(tiles, axis=0)
    canvas = Image.new("L", (max(grid.shape[1], 420), grid.shape[0] + 14), 0)
    canvas.paste(Image.fromarray(grid), (0, 0))
    ImageDraw.Draw(canvas).text((2, grid.shape[0] + 1), caption, fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        canvas.save(tmp, format="PNG")


def _sample_grid(gan: CycleGAN, a: torch.Tensor, b: torch.Tensor, path: Path, step: int) -> None:
    nets = (gan.g_ab, gan.g_ba)
    for n in nets:
        n.eval()
    with torch.no_grad():
        fb = gan.g_ab(a.to(gan.device)).cpu()
        rec_a = gan.g_ba(fb.to(gan.device)).cpu()
        fa = gan.g_ba(b.to(gan.device)).cpu()
        rec_b = gan.g_ab(fa.to(gan.device)).cpu()
    for n in nets:
        n.train()
    write_grid(
        path,
        [a, fb, rec_a, b, fa, rec_b],
        f"step {step}: rows A, A->B, cycle; B, B->A, cycle. CovidCT {__version__}: research, not a diagnosis",
    )


def _export(gan: CycleGAN, cfg: SynthConfig, out: Path, steps: int, n_a: int, n_b: int, command: str) -> Path:
    from CovidCTLib.models.runtime.registry import save_model

    folder = out / "model" / MODEL_NAME
    save_model(
        gan.g_ab.cpu(),
        folder,
        {
            "name": MODEL_NAME,
            "version": MODEL_VERSION,
            "task": "synthesis",
            "architecture": generator_architecture(cfg),
            "input": {"channels": 1, "size": cfg.size},
            "normalization": NORMALIZATION,
            "training": {
                "command": command,
                "seed": cfg.seed,
                "steps": steps,
                "n_images_from": n_a,
                "n_images_to_style": n_b,
                "from": cfg.sources_a,
                "to_style": cfg.sources_b,
                "software_version": __version__,
                "licence": "inherits the most restrictive licence of its training images (research use, "
                "non-commercial for COVID-19-CT-Seg Radiopaedia and MedSeg)",
            },
            "intended_use": "research only: make COVID-like training images from non-COVID chest CT lung crops",
            "limitations": "generated images are not real patients; never use them as evidence of disease",
        },
        weights_name="covid-synthesizer.pt",
    )
    gan.g_ab.to(gan.device)
    return folder


def train_synthesizer(
    cfg: SynthConfig,
    out: str | Path,
    resume: bool = False,
    command: str = "",
    reporter: Reporter | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Train (or continue with ``resume``) the CycleGAN up to ``cfg.max_steps``; export the A->B generator."""
    if cfg.size % (2**cfg.n_down) or cfg.size < 16:
        raise InputError(f"--size {cfg.size} must be at least 16 and a multiple of {2**cfg.n_down}.")
    if cfg.max_steps < 1 or cfg.batch_size < 1:
        raise InputError("--max-steps and --batch-size must be at least 1.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        set_training_threads(cfg.threads)
    cache = out / "cache"
    dom_a = load_domain(cfg.sources_a, store_size(cfg.size), cache, cfg.max_slices_per_volume)
    dom_b = load_domain(cfg.sources_b, store_size(cfg.size), cache, cfg.max_slices_per_volume)
    log(
        f"synthesizer: {len(dom_a)} non-COVID (A) and {len(dom_b)} COVID (B) lung crops, {cfg.size} px, "
        f"{cfg.max_steps} steps of {cfg.batch_size} on {device}"
    )
    gan = CycleGAN(cfg, device)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    last = out / "last.pt"
    if resume and last.is_file():
        ck = load_checkpoint(last)
        gan.load_state(ck)
        step = int(ck["step"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {last} at step {step}")
    elif resume:
        log(f"--resume given but no {last}; starting from scratch")
    steps_per_epoch = max(1, math.ceil(max(len(dom_a), len(dom_b)) / cfg.batch_size))
    fixed = np.random.default_rng(cfg.seed + 1)
    grid_a = center_batch(dom_a, sorted(fixed.choice(len(dom_a), min(6, len(dom_a)), replace=False)), cfg.size)
    grid_b = center_batch(dom_b, sorted(fixed.choice(len(dom_b), min(6, len(dom_b)), replace=False)), cfg.size)
    t0, sums, n_sum, start = time.time(), {}, 0, step

    def save() -> None:
        save_checkpoint(
            {
                **gan.state(),
                "step": step,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "config": asdict(cfg),
            },
            last,
        )

    while step < cfg.max_steps:
        gan.set_lr(lr_factor(step, cfg.max_steps))
        losses = gan.step(
            sample_batch(dom_a, cfg.batch_size, cfg.size, rng), sample_batch(dom_b, cfg.batch_size, cfg.size, rng), rng
        )
        step += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        n_sum += 1
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            row = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 2),
                "lr": round(cfg.lr * lr_factor(step - 1, cfg.max_steps), 7),
                **{k: round(v / n_sum, 4) for k, v in sums.items()},
                "seconds": round(time.time() - t0, 1),
            }
            with (out / "log.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            log(json.dumps(row))
            sums, n_sum = {}, 0
        if step % steps_per_epoch == 0 or step == cfg.max_steps:
            _sample_grid(gan, grid_a, grid_b, out / "samples" / f"step_{step:06d}.png", step)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            save()
        if reporter is not None:
            reporter.update("train", step / cfg.max_steps, f"step {step} / {cfg.max_steps}")
    if step == start:  # resumed a finished run: refresh the checkpoint and the grid anyway
        save()
        _sample_grid(gan, grid_a, grid_b, out / "samples" / f"step_{step:06d}.png", step)
    folder = _export(gan, cfg, out, step, len(dom_a), len(dom_b), command)
    summary = {
        "steps": step,
        "n_from": len(dom_a),
        "n_to_style": len(dom_b),
        "model_dir": str(folder),
        "seconds": round(time.time() - t0, 1),
        "disclaimer": DISCLAIMER,
    }
    log(json.dumps(summary))
    return summary
