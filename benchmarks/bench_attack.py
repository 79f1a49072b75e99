"""Attack speed and memory for a Table-1 cell (MNIST-shaped C2F1, eps = 0.3).

Reports, for each attack (w = m = 1 unless --k says otherwise):
* attacks per second (T attacks in batches of B, eta = 30 PGD steps each);
* the time of one PGD iteration divided by the time of one forward+backward pass of the model
  on the same batch (target <= 1.2: the rest is the ranking loss over the gallery X), the
  model timed right before and after each attack (median of ``--rounds``), at the attack's
  precision and in fp32;
* peak memory as |X| grows 10x (each size in a fresh subprocess; CPU: peak RSS growth during the
  attack, CUDA: torch.cuda.max_memory_allocated), next to the size of the gallery embeddings.

Random weights and synthetic data are enough here: speed does not depend on what was learnt.
Usage: python benchmarks/bench_attack.py [--device auto] [--gallery 10000] [--batch 256]
       [--precision fp32|tf32|bf16] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def setup(n: int, device: torch.device, dim: int = 1024):
    from advrank.models import create_model

    torch.manual_seed(0)
    model = create_model("c2f1", (1, 28, 28), dim).to(device).eval()
    gallery = torch.nn.functional.normalize(torch.randn(n, dim, device=device), dim=1)
    return model, gallery


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward_backward(model, images, repeats: int = 5, policy=None) -> float:
    """One forward + input-gradient backward of the model on ``images`` (under the policy's
    autocast for bf16), in seconds."""
    from advrank.attacks.pgd import frozen
    from advrank.core.execution import get_policy

    policy = get_policy(policy)
    with frozen(model):
        for i in range(repeats + 1):
            if i == 1:
                sync(images.device)
                t0 = time.perf_counter()
            x = images.clone().requires_grad_(True)
            with policy.model_context(images.device):
                emb = model(x)
            torch.autograd.grad(emb, x, grad_outputs=torch.ones_like(emb))
        sync(images.device)
    return (time.perf_counter() - t0) / repeats


def time_attack(model, gallery, attack: str, batch: int, device, steps: int = 30,
                k: int = 1, policy=None) -> float:
    from advrank.attacks import LinfThreatModel, RankingAttack
    from advrank.core.distances import CosineDistance

    atk = RankingAttack(model, gallery, CosineDistance(), attack,
                        LinfThreatModel(0.3, steps=steps), policy=policy)
    images = torch.rand(batch, 1, 28, 28, device=device)
    targets = torch.randint(0, gallery.shape[0], (batch, k), device=device)
    sp = torch.randint(0, gallery.shape[0], (batch, 5), device=device)
    atk(images[:2], targets[:2], sp[:2])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    atk(images, targets, sp if attack.startswith("QA") else None)
    sync(device)
    return time.perf_counter() - t0


def child(n: int, attack: str, batch: int, device_name: str, policy) -> None:
    """One gallery size in a fresh process: print the peak memory of the attack as JSON."""
    from advrank.core.runtime import resolve_device

    device = resolve_device(device_name)
    model, gallery = setup(n, device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    time_attack(model, gallery, attack, batch, device, steps=3, policy=policy)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss  # KiB on Linux
    out = {"gallery": n, "attack": attack, "gallery_mib": gallery.numel() * 4 / 2**20,
           "peak_growth_mib": peak / 1024}
    if device.type == "cuda":
        out["peak_growth_mib"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--gallery", type=int, default=10000, help="|X| (MNIST test set: 10,000)")
    p.add_argument("--batch", type=int, default=256, help="attacks per PGD batch")
    p.add_argument("--memory-sizes", default="10000,100000",
                   help="gallery sizes for the memory check (default 10k and 100k; \"\" skips it)")
    p.add_argument("--k", type=int, default=1, help="w (CA) or m (QA): queries/candidates")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                   help="the attacks' precision (the model limit is measured in it too)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timings per attack, each between two model timings (median reported)")
    p.add_argument("--attacks", default="CA+,CA-,QA+,QA-", help="comma-separated attacks")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--attack", default="QA+", help=argparse.SUPPRESS)
    args = p.parse_args()
    from advrank.core.execution import ExecutionPolicy

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = ExecutionPolicy(args.precision)
    if args.child is not None:
        child(args.child, args.attack, args.batch, args.device, policy)
        return

    from advrank.core.runtime import hardware_string, resolve_device

    device = resolve_device(args.device)
    model, gallery = setup(args.gallery, device)
    images = torch.rand(args.batch, 1, 28, 28, device=device)
    fp32 = ExecutionPolicy()
    rows = []
    print(f"hardware: {hardware_string(device)}; |X| = {args.gallery}, batch = {args.batch}, "
          f"w = m = {args.k}, eps = 0.3, eta = 30 steps, precision {args.precision}, "
          f"median of {args.rounds} rounds")
    print(f"{'attack':7s} {'attacks/s':>10s} {'ms/iter':>8s} {'fwd+bwd ms':>11s} "
          f"{'iter/fwd+bwd':>13s} {'iter/fp32 fwd+bwd':>18s}")
    fbs = []
    for attack in [a.strip() for a in args.attacks.split(",") if a.strip()]:
        rounds = []
        for _ in range(args.rounds):  # the model is timed right before and after each attack,
            before = time_forward_backward(model, images, policy=policy)  # so that a shared
            before32 = time_forward_backward(model, images, policy=fp32)  # machine's load
            t = time_attack(model, gallery, attack, args.batch, device, k=args.k,  # hits both
                            policy=policy)
            fb = (before + time_forward_backward(model, images, policy=policy)) / 2
            fb32 = (before32 + time_forward_backward(model, images, policy=fp32)) / 2
            rounds.append((t / 30 / fb, t, fb, t / 30 / fb32, fb32))
        ratio, t, fb, ratio32, fb32 = sorted(rounds)[len(rounds) // 2]
        fbs.append(fb)
        per_iter = t / 30
        rows.append({"attack": attack, "attacks_per_s": args.batch / t,
                     "iter_ms": per_iter * 1000, "fwd_bwd_ms": fb * 1000,
                     "fp32_fwd_bwd_ms": fb32 * 1000, "ratio_iter_over_fwd_bwd": ratio,
                     "ratio_iter_over_fp32_fwd_bwd": ratio32,
                     "ratios": [r[0] for r in rounds]})
        print(f"{attack:7s} {args.batch / t:10.1f} {per_iter * 1000:8.1f} {fb * 1000:11.1f} "
              f"{ratio:13.2f} {ratio32:18.2f}")
    fb = sorted(fbs)[len(fbs) // 2]

    memory = []
    for attack in ("CA+", "QA+"):
        for n in (int(s) for s in args.memory_sizes.split(",") if s):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--attack", attack,
                 "--batch", str(args.batch), "--device", args.device,
                 "--precision", args.precision] + (["--threads", str(args.threads)]
                                                   if args.threads else []),
                capture_output=True, text=True, check=True)
            memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("peak memory growth during one attack batch (beyond model + gallery):")
    for m in memory:
        print(f"  {m['attack']} |X| = {m['gallery']:>7d}: {m['peak_growth_mib']:8.1f} MiB "
              f"(gallery embeddings themselves: {m['gallery_mib']:.0f} MiB)")
    print(json.dumps({"hardware": hardware_string(device), "gallery": args.gallery,
                      "batch": args.batch, "k": args.k, "precision": args.precision,
                      "fwd_bwd_ms": fb * 1000, "attacks": rows, "memory": memory}))


if __name__ == "__main__":
    main()
