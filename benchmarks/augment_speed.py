"""Time per batch of the batched augmentations, next to per-sample loop baselines measured in the same run.

    python benchmarks/augment_speed.py [--device cpu] [--reps 20] [--threads N]

On a CPU shared with other jobs, intra-op threads can spin against each other (2-10x slower): compare with
``--threads 1``.

Audio: BYOL-A v2 two-view pipeline (Mixup -> RRC -> RLF -> post-norm) on 64 log-mels [64, 96], with a per-stage
split, against (a) the same operations done sample by sample in a Python loop (crop + F.interpolate per sample, as a
dataset-side implementation does) and (b) one grid_sample(mode="bicubic") call over the batch, the alternative
resampling method. Images: BYOL's two views of 256 images 32x32 against torchvision.transforms.v2 applied image by
image. For context, an AudioNTT2020 (d=512) forward+backward on the audio views.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from byola.augment.audio import AudioViews
from byola.augment.image import BYOLImageViews
from byola.models.audio import AudioNTT2020


def timeit(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    times = []
    for i in range(warmup + reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def audio_loop_baseline(x: torch.Tensor, bank: torch.Tensor, views: AudioViews) -> list[torch.Tensor]:
    """The v2 pipeline sample by sample (Python loop), for comparison only."""
    nf, nt = x.shape[-2:]
    cf, ct = int(nf * 1.0), int(nt * 1.5)
    out = []
    for _ in range(views.n_views):
        for sample in x:
            z = bank[torch.randint(len(bank), ()).item()]
            lam = torch.rand(()).item() * views.mixup.ratio
            mixed = torch.log((1 - lam) * sample.exp() + lam * z.exp())
            canvas = mixed.new_zeros(cf, ct)
            canvas[(cf - nf) // 2:(cf - nf) // 2 + nf, (ct - nt) // 2:(ct - nt) // 2 + nt] = mixed
            h = min(max(int(torch.empty(()).uniform_(0.6, 1.5) * nf), 1), cf)
            w = min(max(int(torch.empty(()).uniform_(0.6, 1.5) * nt), 1), ct)
            i, j = torch.randint(cf - h + 1, ()).item(), torch.randint(ct - w + 1, ()).item()
            crop = F.interpolate(canvas[None, None, i:i + h, j:j + w], size=(nf, nt), mode="bicubic",
                                 align_corners=True)[0, 0]
            g = torch.empty(2).uniform_(-1, 1)
            out.append(crop + torch.linspace(g[0].item(), g[1].item(), nt))
    return list(views.post_norm(torch.stack(out)).chunk(views.n_views))


def grid_sample_rrc(x: torch.Tensor) -> torch.Tensor:
    """One bicubic grid_sample over the batch with random per-sample affine crops (resampling cost reference)."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.empty(b, device=x.device).uniform_(0.6, 1.5)
    theta[:, 1, 1] = torch.empty(b, device=x.device).uniform_(0.6, 1.5)
    theta[:, :, 2] = torch.empty(b, 2, device=x.device).uniform_(-0.3, 0.3)
    grid = F.affine_grid(theta, [b, 1, *x.shape[-2:]], align_corners=True)
    return F.grid_sample(x[:, None], grid, mode="bicubic", align_corners=True)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} reps={args.reps} (median)")

    # ---------------- audio
    x = torch.randn(64, 64, 96, device=device)
    views = AudioViews.byola("v2", generator=torch.Generator().manual_seed(0))
    for _ in range(2048 // 64):                                                # fill the memory bank
        views.mixup.push(torch.randn(64, 64, 96, device=device))
    both = x.repeat(2, 1, 1)
    stages = {
        "mixup (mix+push)": lambda: (views.mixup.mix(both), views.mixup.push(x)),
        "random resize crop": lambda: views.crop(both),
        "random linear fader": lambda: views.fader(both),
        "post-normalization": lambda: views.post_norm(both),
    }
    full = timeit(lambda: views(x), device, args.reps)
    print("\naudio: BYOL-A v2 two views of [64, 64, 96] log-mels")
    print(f"  batched pipeline           {full * 1e3:8.2f} ms/batch   {64 / full:9.0f} clips/s")
    stage_times = {}
    for name, fn in stages.items():
        stage_times[name] = t = timeit(fn, device, args.reps)
        print(f"    {name:24s} {t * 1e3:8.2f} ms   ({100 * t / full:4.1f}% of pipeline)")
    bank = views.mixup.bank
    loop = timeit(lambda: audio_loop_baseline(x, bank, views), device, max(3, args.reps // 5), warmup=1)
    print(f"  per-sample loop baseline   {loop * 1e3:8.2f} ms/batch   -> batched is {loop / full:5.1f}x faster")
    gs = timeit(lambda: grid_sample_rrc(both), device, args.reps)
    rrc = stage_times["random resize crop"]
    print(f"  RRC reference: one bicubic grid_sample call {gs * 1e3:.2f} ms vs separable matmul RRC "
          f"{rrc * 1e3:.2f} ms ({gs / rrc:.1f}x)")

    encoder = AudioNTT2020(n_mels=64, d=512).to(device)
    view_a, view_b = views(x)

    def model_step() -> None:
        encoder.zero_grad(set_to_none=True)
        (encoder(view_a[:, None]).sum() + encoder(view_b[:, None]).sum()).backward()

    model = timeit(model_step, device, max(3, args.reps // 4), warmup=1)
    print(f"  context: AudioNTT2020 d=512 forward+backward on both views {model * 1e3:.1f} ms -> augmentation is "
          f"{100 * full / (full + model):.1f}% of augmentation + encoder step")

    # ---------------- images
    imgs = torch.rand(256, 3, 32, 32, device=device)
    pair = BYOLImageViews(32, n_views=2, generator=torch.Generator().manual_seed(0)).to(device)
    batched = timeit(lambda: pair(imgs), device, args.reps)
    print("\nimages: BYOL two views of 256 images 3x32x32")
    print(f"  batched pipeline           {batched * 1e3:8.2f} ms/batch   {256 / batched:9.0f} images/s")

    def tv_aug(blur_p: float, solarize_p: float) -> v2.Compose:
        return v2.Compose([
            v2.RandomResizedCrop(32, scale=(0.08, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=blur_p), v2.RandomSolarize(0.5, p=solarize_p),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    t1, t2 = tv_aug(1.0, 0.0), tv_aug(0.1, 0.2)
    loop = timeit(lambda: [(t1(im), t2(im)) for im in imgs], device, max(3, args.reps // 5), warmup=1)
    print(f"  torchvision v2 per image   {loop * 1e3:8.2f} ms/batch   -> batched is {loop / batched:5.1f}x faster")


if __name__ == "__main__":
    main()
