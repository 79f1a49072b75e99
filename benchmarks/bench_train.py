"""Training throughput: advrank's training loop next to a bare PyTorch loop doing the same work.

Both sides train the same model (same initial weights), on the same data, with the same
class-balanced ``MPerClassSampler`` batches (reseeded per epoch), batch size, Adam optimiser and
pytorch-metric-learning ``TripletMarginLoss``. The bare loop is what one would write by hand:
``DataLoader`` -> forward -> loss -> backward -> step, nothing else. Because the two follow the
same random stream, they end with the same weights: the table reports the largest difference,
which shows that the work compared really is the same.

advrank's figure is its own training-loop time (``history[-1]["seconds"]``: batches, loss,
backward, step, running loss / batch recall). Its per-epoch evaluation on the test set and
checkpoint writes are excluded from that figure, and measured and reported separately
(``advrank_wall_s`` covers the whole ``train()`` call, data loading included).

    python benchmarks/bench_train.py                       # digits, c2f1: seconds
    python benchmarks/bench_train.py --dataset mnist --data-root ../shared/data --epochs 1

Prints a small table on stdout, then one JSON line (progress on stderr). Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def bare_loop(train_set, info, args, device):
    """The reference: a plain PyTorch + pytorch-metric-learning training loop."""
    from pytorch_metric_learning import distances, losses
    from pytorch_metric_learning.samplers import MPerClassSampler
    from torch.utils.data import DataLoader, TensorDataset

    from advrank.core.runtime import seed_everything
    from advrank.models import create_model

    seed_everything(args.seed)
    model = create_model(args.arch, info.image_shape, args.embed_dim, info.mean, info.std)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    distance = distances.CosineSimilarity() if args.metric == "cosine" else distances.LpDistance(
        normalize_embeddings=False, p=2)
    loss_fn = losses.TripletMarginLoss(margin=args.margin, distance=distance)
    labels = train_set.labels
    data = TensorDataset(train_set.images, labels) if hasattr(train_set, "images") else train_set
    m, batch_size = sampler_shape(labels, args.batch_size)

    seconds, images = 0.0, 0
    for epoch in range(args.epochs):
        seed_everything(args.seed * 1000 + epoch)
        sampler = MPerClassSampler(labels.numpy(), m=m, batch_size=batch_size,
                                   length_before_new_iter=len(labels))
        loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
    return seconds, images, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def warm_up(train_set, info, args, device, steps=3):
    """A few unmeasured steps, so that one-time start-up costs fall on neither side."""
    from pytorch_metric_learning import losses

    from advrank.models import create_model

    model = create_model(args.arch, info.image_shape, args.embed_dim, info.mean, info.std)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    x = train_set.get_images(torch.arange(min(args.batch_size, len(train_set)))).to(device)
    y = train_set.labels[: x.shape[0]].to(device)
    for _ in range(steps):
        loss = losses.TripletMarginLoss(margin=args.margin)(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def sampler_shape(labels, batch_size):
    """m per class and the effective batch size, chosen as advrank's trainer chooses them."""
    num_classes = int(labels.unique().numel())
    m = max(2, min(16, batch_size // num_classes))
    batch_size = max(m, (batch_size // m) * m)
    return m, min(batch_size, m * num_classes)


def advrank_loop(args, out, n_train):
    from advrank.models.checkpoint import load_checkpoint
    from advrank.training import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset, arch=args.arch, metric=args.metric, loss="triplet",
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, margin=args.margin,
        embed_dim=args.embed_dim, seed=args.seed, data_root=args.data_root, device=args.device,
    )
    t0 = time.perf_counter()
    result = train(config, out, progress=False)
    wall = time.perf_counter() - t0
    loop = result.history[-1]["seconds"]
    # MPerClassSampler yields len(train) rounded down to whole batches, every batch is used
    batch = result.meta.batch_size
    images = len(result.history) * (n_train // batch) * batch
    return loop, images, wall, load_checkpoint(out)["model"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits", help="digits (default), mnist, fashion")
    p.add_argument("--data-root", default=None, help="folder with MNIST/raw etc.")
    p.add_argument("--arch", default="c2f1")
    p.add_argument("--embed-dim", type=int, default=None, help="default: the model's")
    p.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    p.add_argument("--margin", type=float, default=None, help="default: advrank's for the metric")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each loop, interleaved; ratio = median of the paired ratios")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 is steadier on a busy machine")
    args = p.parse_args(argv)

    from advrank.core.distances import get_distance
    from advrank.core.runtime import hardware_string, resolve_device
    from advrank.data import dataset_spec, load_dataset
    from advrank.models import create_model
    from advrank.training import default_margin, evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = dataset_spec(args.dataset)
    if args.margin is None:
        args.margin = default_margin("triplet", args.metric)
    train_set = load_dataset(args.dataset, "train", args.data_root)
    test_set = load_dataset(args.dataset, "test", args.data_root)

    warm_up(train_set, info, args, device)
    adv, bare, walls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            sec, n_img, w_bare = bare_loop(train_set, info, args, device)
            bare.append(n_img / sec)
            loop, n_adv, wall, w_adv = advrank_loop(args, Path(tmp) / f"run{r}.pt", len(train_set))
            adv.append(n_adv / loop)
            walls.append(wall)
            print(f"  run {r + 1}/{args.repeats}: bare {bare[-1]:,.0f} img/s, "
                  f"advrank {adv[-1]:,.0f} img/s", file=sys.stderr, flush=True)
    if n_img != n_adv:
        print(f"warning: image counts differ (bare {n_img}, advrank {n_adv})", file=sys.stderr)
    weight_diff = max((w_adv[k].float() - w_bare[k].float()).abs().max().item() for k in w_adv)

    # what advrank does on top of the loop, each epoch: evaluate on the test set
    model = create_model(args.arch, info.image_shape, args.embed_dim, info.mean, info.std)
    model.to(device)
    t0 = time.perf_counter()
    evaluate_model(model, test_set, get_distance(args.metric), device, ks=(1,))
    eval_s = time.perf_counter() - t0

    best_adv, best_bare = max(adv), max(bare)
    # each advrank run is compared with the bare run just before it (same machine load), and
    # the median of those ratios is the figure: robust to load that changes between runs
    ratio = statistics.median(a / b for a, b in zip(adv, bare, strict=True))
    row = "{:<34}{:>14}{:>14}"
    print(f"training throughput: {args.dataset} / {args.arch} (embed {model.embed_dim}), "
          f"batch {args.batch_size}, {args.epochs} epoch(s) x {args.repeats} runs, "
          f"{hardware_string(device)}")
    print(row.format("", "bare PyTorch", "advrank"))
    print(row.format("images/s (best run)", f"{best_bare:,.0f}", f"{best_adv:,.0f}"))
    print(row.format("images/s (median)", f"{statistics.median(bare):,.0f}",
                     f"{statistics.median(adv):,.0f}"))
    print(row.format("ratio advrank/bare", "", f"{ratio:.3f}")
          + f"   (median of {len(adv)} paired runs; best/best {best_adv / best_bare:.3f}; "
            "target >= 0.9)")
    print(f"excluded from advrank's figure: test-set evaluation {eval_s:.2f} s per epoch "
          f"(+ checkpoint write); whole train() call {min(walls):.2f} s (best)")
    print(f"same work: max |weight difference| after training = {weight_diff:.2e}")
    print(json.dumps({
        "benchmark": "train", "dataset": args.dataset, "arch": args.arch,
        "embed_dim": model.embed_dim, "metric": args.metric, "batch_size": args.batch_size,
        "epochs": args.epochs, "repeats": args.repeats, "images_per_run": n_adv,
        "advrank_images_per_s": round(best_adv, 1), "bare_images_per_s": round(best_bare, 1),
        "ratio": round(ratio, 4), "ratio_best_over_best": round(best_adv / best_bare, 4),
        "target": 0.9, "meets_target": ratio >= 0.9,
        "advrank_images_per_s_all": [round(v, 1) for v in adv],
        "bare_images_per_s_all": [round(v, 1) for v in bare],
        "eval_seconds_per_epoch_excluded": round(eval_s, 3),
        "advrank_train_call_seconds": round(min(walls), 3),
        "max_weight_diff": weight_diff, "device": str(device), "threads": torch.get_num_threads(),
        "hardware": hardware_string(device),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
