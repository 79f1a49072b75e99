"""Scale benchmark: CA+ and QA+ attacks per second and peak extra memory as the gallery grows
to millions of items, per precision, next to the model-only limit.

For each precision, gallery size |X| and attack it runs T attacks (MNIST-shaped C2F1 with
random weights, a random unit-norm gallery [|X|, D], random Q/C and C_SP, eps = 0.3, eta
steps) through the protocol's batching (``attack_batches``: sub-batches sized from the memory
budget, out-of-memory splitting), and reports

* attacks/s, and its ratio to the model-only limit (forward + input-gradient backward of the
  model alone, eta times per attack, at the same batch: the most any attack could reach) in
  the same precision and in fp32;
* peak extra memory: CUDA ``torch.cuda.max_memory_allocated`` beyond the model and the gallery
  embeddings; CPU peak RSS growth (``--isolate``: one fresh process per case);
* with ``--processes 1,2,...``: the same under ``torchrun`` (attacks sharded over processes,
  one GPU each), and the speed-up over one process.

It prints a table and writes one JSON file (``--out``, default
``results/bench_scale-<device>.json``) with the hardware, the command, the commit, every row
and the issue's targets evaluated on them. Speed does not depend on what a model learnt, so
random weights and data are enough.

    python benchmarks/bench_scale.py                                    # GPU, 10k/100k/1M
    python benchmarks/bench_scale.py --sizes 10000000 --dim 512 --precisions fp32,bf16 \\
        --memory-budget auto --out results/bench_scale-cuda-10M.json   # 10M x 512
    python benchmarks/bench_scale.py --device cpu --sizes 10000,100000 --batch 128 \\
        --num-attacks 128 --precisions fp32,bf16                        # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


class SyntheticImages:
    """Images ``[B, 1, 28, 28]`` in [0, 1] for any index, drawn on demand (a 10M-item gallery
    has no room for its images; the attack only ever needs a batch of them)."""

    def __init__(self, n: int, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0):
        self.n, self.shape, self.seed = n, shape, seed

    def __len__(self) -> int:
        return self.n

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index[:1].sum()))
        return torch.rand(index.numel(), *self.shape, generator=gen)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(dim: int, device: torch.device):
    from advrank.models import create_model

    torch.manual_seed(0)
    return create_model("c2f1", (1, 28, 28), dim).to(device).eval()


def make_gallery(n: int, dim: int, device: torch.device):
    """A random unit-norm gallery ``[n, dim]`` made on the device, 16k rows at a time (small
    temporaries: a CPU's peak RSS is then the gallery's, not that of its making)."""
    from advrank.core.distances import CosineDistance
    from advrank.core.gallery import Gallery

    gen = torch.Generator(device=device).manual_seed(1)
    emb = torch.empty(n, dim, device=device)
    for s in range(0, n, 1 << 14):
        block = torch.randn(min(n, s + (1 << 14)) - s, dim, device=device, generator=gen)
        emb[s : s + block.shape[0]] = torch.nn.functional.normalize(block, dim=1)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    return Gallery(SyntheticImages(n), emb, labels, CosineDistance())


def model_limit(model, batch: int, steps: int, precision: str, device: torch.device,
                repeats: int = 5) -> dict:
    """Attacks/s if an attack cost only the model: ``batch / (steps * forward+backward)``."""
    from advrank.attacks.pgd import frozen
    from advrank.core.execution import ExecutionPolicy

    policy = ExecutionPolicy(precision)
    images = torch.rand(batch, 1, 28, 28, device=device)
    with frozen(model), policy.products(device):
        for i in range(repeats + 1):
            if i == 1:
                sync(device)
                t0 = time.perf_counter()
            x = images.clone().requires_grad_(True)
            with policy.model_context(device):
                emb = model(x)
            torch.autograd.grad(emb, x, grad_outputs=torch.ones_like(emb))
        sync(device)
    fb = (time.perf_counter() - t0) / repeats
    return {"precision": precision, "fwd_bwd_ms": fb * 1000, "attacks_per_s": batch / (steps * fb)}


def selection_for(kind, n: int, t: int, k: int):
    """T attacks on random anchors with random Q/C (and C_SP for QA): what the §4 rules draw
    for CA+/QA+, without the cost of drawing them at 10M."""
    from advrank.attacks.selection import Selection

    gen = torch.Generator().manual_seed(2)
    anchors = torch.randperm(n, generator=gen)[:t] if n < 1 << 24 else \
        torch.randint(0, n, (t,), generator=gen)
    targets = torch.randint(0, n, (t, k), generator=gen)
    g = kind.options.get("g", 0) if kind.options.get("xi") else 0
    sp = torch.randint(0, n, (t, g), generator=gen) if g else None
    return Selection(anchors, targets, sp)


def run_case(args, attack: str, n: int, precision: str) -> dict:
    """One (attack, |X|, precision) case in this process (one rank's share under torchrun)."""
    from advrank.attacks import LinfThreatModel, get_attack
    from advrank.core import distributed
    from advrank.core.execution import PREPARED, ExecutionPolicy
    from advrank.core.runtime import resolve_device
    from advrank.experiments.protocol import attack_batches, plan_batches

    device = resolve_device(args.device)
    policy = ExecutionPolicy(precision, args.budgets.get(attack, args.budgets["*"]),
                             args.compile)
    kind = get_attack(attack)
    threat = LinfThreatModel(0.3, steps=args.steps)
    PREPARED.clear()
    model = make_model(args.dim, device)
    gallery = make_gallery(n, args.dim, device)
    selection = selection_for(kind, n, args.num_attacks, args.k)
    plan = plan_batches(model, gallery, kind, args.k, args.batch, (1, 28, 28), policy,
                        log=False)
    warm = selection.slice(0, min(len(selection), plan.sub))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (a peak: before warm-up)
    for _ in attack_batches(model, gallery, kind, LinfThreatModel(0.3, steps=1), warm, 0,
                            args.batch, policy=policy, k=args.k):
        pass  # compile, cuBLAS workspaces, the prepared gallery copy
    start, end = distributed.shard_range(len(selection), args.batch)
    mine = selection.slice(start, end)
    sync(device)
    if device.type == "cuda":
        PREPARED.clear()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    distributed.barrier()
    t0 = time.perf_counter()
    for _ in attack_batches(model, gallery, kind, threat, mine, 0, args.batch, policy=policy,
                            k=args.k):
        pass
    sync(device)
    seconds = max(distributed.gather_objects(time.perf_counter() - t0))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    peak = max(distributed.gather_objects(int(peak)))
    return {"attack": attack, "gallery": n, "dim": args.dim, "precision": precision,
            "k": args.k, "batch": args.batch, "sub_batch": plan.sub,
            "memory_budget": plan.budget, "num_attacks": len(selection), "steps": args.steps,
            "processes": distributed.world_size(), "compile": args.compile,
            "seconds": seconds, "attacks_per_s": len(selection) / seconds,
            "peak_extra_bytes": int(peak), "status": "ok"}


def child_main(args) -> None:
    """``--case ATTACK:SIZE:PRECISION`` in a fresh process (under torchrun when asked)."""
    from advrank.core import distributed

    distributed.init_from_env(args.device)
    try:
        attack, n, precision = args.case.split(":")
        row = run_case(args, attack, int(n), precision)
        if distributed.is_main():
            print("ROW " + json.dumps(row), flush=True)
    finally:
        distributed.shutdown()


def spawn_case(args, attack: str, n: int, precision: str, processes: int) -> dict:
    """Run one case in a fresh process (torchrun for several); a failure becomes a row."""
    base = [a for a in sys.argv[1:]]
    cmd = [sys.executable, __file__, *base, "--case", f"{attack}:{n}:{precision}"]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(processes), __file__, *base, "--case",
               f"{attack}:{n}:{precision}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        return {"attack": attack, "gallery": n, "precision": precision,
                "processes": processes, "status": f"timeout after {args.case_timeout}s"}
    for line in out.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    err = [line for line in out.stderr.strip().splitlines() if line.strip()]
    return {"attack": attack, "gallery": n, "precision": precision, "processes": processes,
            "status": "failed: " + (err[-1] if err else f"exit status {out.returncode}")}


def check_targets(rows: list[dict], limits: dict) -> list[dict]:
    """The issue's targets that these rows can decide (one process)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("processes", 1) == 1]

    def best(attack, n, precision=None):
        found = [r for r in ok if r["attack"] == attack and r["gallery"] == n
                 and (precision is None or r["precision"] == precision)]
        return max(found, key=lambda r: r["attacks_per_s"], default=None)

    out = []
    row = best("QA+", 1_000_000, "bf16")
    if row:
        out.append({"target": "|X| = 1M: QA+ >= 2,000 attacks/s in bf16",
                    "value": row["attacks_per_s"], "pass": row["attacks_per_s"] >= 2000})
    fits = [r for r in ok if r["attack"] == "CA+" and r["gallery"] == 1_000_000
            and r["peak_extra_bytes"] <= 4 * GIB]
    if any(r["attack"] == "CA+" and r["gallery"] == 1_000_000 for r in ok):
        row = max(fits, key=lambda r: r["attacks_per_s"], default=None)
        out.append({"target": "|X| = 1M: CA+ >= 8,000 attacks/s with <= 4 GiB extra",
                    "value": row["attacks_per_s"] if row else 0.0,
                    "pass": bool(row) and row["attacks_per_s"] >= 8000})
    for attack in ("CA+", "QA+"):
        row = best(attack, 10_000, "bf16")
        if row and "bf16" in limits:
            ratio = row["attacks_per_s"] / limits["bf16"]["attacks_per_s"]
            out.append({"target": f"|X| = 10k: {attack} in bf16 >= 0.8 of the bf16 model limit",
                        "value": ratio, "pass": ratio >= 0.8})
    big = [r for r in rows if r.get("gallery", 0) >= 10_000_000]
    if big:
        out.append({"target": "10M gallery: CA+ and QA+ run without out-of-memory",
                    "value": [f"{r['attack']} {r['precision']}: {r['status']}" for r in big],
                    "pass": all(r.get("status") == "ok" for r in big)})
    return out


def print_row(row: dict, limits: dict) -> None:
    if row.get("status") != "ok":
        print(f"{row['attack']:4s} {row['gallery']:>9,d} {row['precision']:5s} "
              f"{row.get('processes', 1):>2d}  {row['status']}", flush=True)
        return
    lim = limits.get(row["precision"], limits.get("fp32"))
    ratio = row["attacks_per_s"] / lim["attacks_per_s"] if lim else float("nan")
    ratio32 = row["attacks_per_s"] / limits["fp32"]["attacks_per_s"]
    print(f"{row['attack']:4s} {row['gallery']:>9,d} {row['precision']:5s} "
          f"{row['processes']:>2d} {row['attacks_per_s']:>11,.1f} "
          f"{row['peak_extra_bytes'] / GIB:>10.2f} {row['sub_batch']:>6d} {ratio:>9.2f} "
          f"{ratio32:>9.2f}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated |X|")
    p.add_argument("--dim", type=int, default=1024, help="embedding size D")
    p.add_argument("--attacks", default="CA+,QA+")
    p.add_argument("--precisions", default="fp32,tf32,bf16")
    p.add_argument("--batch", type=int, default=2000, help="attacks per batch (--batch-size)")
    p.add_argument("--num-attacks", type=int, default=None,
                   help="T attacks per case (default: 2 batches)")
    p.add_argument("--steps", type=int, default=30, help="PGD steps (eta)")
    p.add_argument("--k", type=int, default=1, help="w (CA) or m (QA)")
    p.add_argument("--memory-budget", default="CA+=4GiB,auto",
                   help="the attacks' memory budget: a size or auto (from the device), for all "
                        "attacks or per attack as ATTACK=SIZE (default: 4GiB for CA+, the "
                        "issue's bound at 1M, auto for the rest)")
    p.add_argument("--compile", action="store_true", help="fuse the comparison passes")
    p.add_argument("--processes", default="1",
                   help="comma-separated process counts (>1: torchrun, one GPU each)")
    p.add_argument("--isolate", action="store_true",
                   help="each case in a fresh process (default on a CPU: its peak RSS)")
    p.add_argument("--in-process", action="store_true",
                   help="every case in this process, even on a CPU (quick; RSS growth is then "
                        "only what a case adds to the earlier peak)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--case-timeout", type=int, default=1800)
    p.add_argument("--out", default=None, help="JSON output (default results/bench_scale-"
                                               "<device>.json)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.budgets = parse_budgets(args.memory_budget)
    args.num_attacks = args.num_attacks or 2 * args.batch
    return args


def parse_budgets(text: str) -> dict[str, int | None]:
    """``"CA+=4GiB,auto"`` -> ``{"CA+": 4 GiB, "*": None}`` (None: from the device)."""
    from advrank.core.execution import parse_bytes

    budgets: dict[str, int | None] = {"*": None}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        attack, _, size = item.rpartition("=")
        budgets[attack or "*"] = None if size == "auto" else parse_bytes(size)
    return budgets


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        child_main(args)
        return
    from advrank.core.io import atomic_write_json
    from advrank.core.runtime import git_commit, hardware_string, resolve_device

    device = resolve_device(args.device)
    out = Path(args.out or REPO / "results" / f"bench_scale-{device.type}.json")
    isolate = args.isolate or (device.type == "cpu" and not args.in_process)
    model = make_model(args.dim, device)
    limits = {p: model_limit(model, args.batch, args.steps, p, device)
              for p in dict.fromkeys(["fp32", "bf16", *args.precisions.split(",")])}
    del model
    print(f"{hardware_string(device)}; D = {args.dim}, batch {args.batch}, T = "
          f"{args.num_attacks}, {args.steps} steps, k = {args.k}, memory budget "
          f"{args.memory_budget}")
    for p, lim in limits.items():
        print(f"model-only limit {p}: {lim['attacks_per_s']:,.0f} attacks/s "
              f"(forward+backward {lim['fwd_bwd_ms']:.2f} ms)")
    print(f"{'':4s} {'|X|':>9s} {'prec':5s} {'P':>2s} {'attacks/s':>11s} {'peak GiB':>10s} "
          f"{'sub':>6s} {'/limit':>9s} {'/fp32 lim':>9s}")
    record = {"hardware": hardware_string(device), "device": device.type,
              "torch": torch.__version__, "commit": git_commit(REPO),
              "command": "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
              "args": {k: v for k, v in vars(args).items() if k not in ("case", "budgets")},
              "limits": limits, "rows": []}
    for processes in (int(x) for x in args.processes.split(",")):
        for precision in args.precisions.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                for attack in args.attacks.split(","):
                    if processes > 1 or isolate:
                        row = spawn_case(args, attack, n, precision, processes)
                    else:
                        try:
                            row = run_case(args, attack, n, precision)
                        except Exception as exc:  # a failed case is a result, not the end
                            row = {"attack": attack, "gallery": n, "precision": precision,
                                   "processes": 1, "status": f"failed: {exc}"}
                    record["rows"].append(row)
                    print_row(row, limits)
                    speedup(record["rows"], row)
                    record["targets"] = check_targets(record["rows"], limits)
                    atomic_write_json(out, record)
    for target in record.get("targets", []):
        print(f"{'PASS' if target['pass'] else 'FAIL'}  {target['target']}: {target['value']}")
    print(f"wrote {out}")


def speedup(rows: list[dict], row: dict) -> None:
    """Add ``speedup`` (over one process, same case) to a row run with several processes."""
    if row.get("status") != "ok" or row.get("processes", 1) == 1:
        return
    one = [r for r in rows if r.get("status") == "ok" and r.get("processes", 1) == 1
           and (r["attack"], r["gallery"], r["precision"]) ==
           (row["attack"], row["gallery"], row["precision"])]
    if one:
        row["speedup"] = row["attacks_per_s"] / one[0]["attacks_per_s"]
        print(f"     speed-up over 1 process: {row['speedup']:.2f}x", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
