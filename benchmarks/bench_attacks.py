"""Benchmark: K losses evaluated by PGD-10, (a) one after another vs (b) all at once, vs (c) the floor.

(a) naive  -- the textbook loop, as the paper's code: for each loss, PGD-10 over the N images in
              batches, every sample attacked for all 10 steps, a prediction check at each iterate.
(b) batched -- ``lossbook.attacks.evaluate_losses`` on the same K losses (broken samples leave).
(b0) batched, "final" mode -- the same, but no sample leaves early: the engine's own overhead.
(c) floor  -- the bare model: forward + input-gradient over the same K x N x 10 image-steps
              (in the same chunk size as (b)), nothing else.

Prints the median of ``--repeats`` runs of each, losses per second, and the ratios a/b and b/c.
Usage: ``python benchmarks/bench_attacks.py --dataset mnist --k 32 --n 1000 [--device cuda]``.
Needs the trained models (``results/models/<scale>``) and the data (``LOSSBOOK_DATA``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lossbook import data
from lossbook.attacks import default_chunk, evaluate_losses, evaluation_set, project, step_sizes
from lossbook.config import paper_eps
from lossbook.losses import HANDCRAFTED, compile_formula, per_sample
from lossbook.train import load_model

EXTRA = ["Mul(Log(Softmax(p)), q)", "Neg(Sum(Mul(q, Softmax(p))))", "Add(Max(p), Neg(Sum(Mul(q, p))))",
         "Neg(Mul(Sum(Mul(q, Softmax(p))), Sqrt(Abs(p))))"]


def loss_pool(k: int) -> list:
    base = list(HANDCRAFTED.values()) + [compile_formula(f) for f in EXTRA]
    return [base[i % len(base)] for i in range(k)]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def naive(model, x, y, losses, norm, eps, steps, batch=1000):
    """One PGD per loss, all samples for all steps; returns the risks."""
    risks = []
    for loss in losses:
        broken_all = []
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            q = F.one_hot(yb, 10).float()
            gen = torch.Generator().manual_seed(0)
            delta = ((torch.rand(xb.shape, generator=gen) * 2 - 1) * eps).to(xb.device)
            delta = project(delta, xb, norm, eps)
            broken = torch.zeros(len(xb), dtype=torch.bool, device=xb.device)
            for a in step_sizes(eps, steps):
                xa = (xb + delta).requires_grad_(True)
                logits = model(xa)
                broken |= logits.argmax(1).ne(yb)
                (g,) = torch.autograd.grad(per_sample(loss(logits, q), len(xb)).mean(), xa)
                delta = project(delta + a * g.sign(), xb, norm, eps)
            with torch.no_grad():
                broken |= model(xb + delta).argmax(1).ne(yb)
            broken_all.append(broken)
        risks.append(float(torch.cat(broken_all).float().mean()))
    return risks


def floor(model, x, k, steps, chunk):
    """Forward + input gradient over k * N * steps image-steps."""
    xs = x.repeat(k, 1, 1, 1)
    for _ in range(steps):
        for i in range(0, len(xs), chunk):
            xa = xs[i:i + chunk].clone().requires_grad_(True)
            torch.autograd.grad(model(xa).sum(), xa)


def timed(fn, dev, repeats):
    times, out = [], None
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        out = fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    ap.add_argument("--net", default="net1", choices=["net1", "net2"])
    ap.add_argument("--scale", default="cpu", help="which trained models to load")
    ap.add_argument("--k", type=int, default=32, help="number of losses")
    ap.add_argument("--n", type=int, default=1000, help="number of images")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    model = load_model(args.dataset, args.net, "st", args.scale, device=dev)
    xt, yt = data.load(args.dataset, "test")
    x, y, _ = evaluation_set(model, xt, yt, n=args.n)
    x, y = x.to(dev), y.to(dev)
    eps = paper_eps(args.dataset, args.net, "st", "linf")
    losses = loss_pool(args.k)
    chunk = args.chunk or default_chunk(dev)
    print(f"{args.dataset} {args.net} [{args.scale}] on {dev} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads): K={args.k} losses, N={len(x)} images, PGD-{args.steps} linf "
          f"eps={eps}, chunk={chunk}, median of {args.repeats}")

    tb, tb_all, res = timed(lambda: evaluate_losses(model, x, y, losses, "linf", eps, args.steps, chunk=chunk), dev,
                            args.repeats)
    tb0, tb0_all, _ = timed(lambda: evaluate_losses(model, x, y, losses, "linf", eps, args.steps, chunk=chunk,
                                                    mode="final"), dev, args.repeats)
    tc, tc_all, _ = timed(lambda: floor(model, x, args.k, args.steps, chunk), dev, args.repeats)
    ta, ta_all, naive_risks = timed(lambda: naive(model, x, y, losses, "linf", eps, args.steps), dev, args.repeats)

    out = {
        "dataset": args.dataset, "net": args.net, "device": str(dev), "k": args.k, "n": len(x), "steps": args.steps,
        "eps": eps, "chunk": chunk, "repeats": args.repeats,
        "naive_s": ta, "batched_s": tb, "batched_final_s": tb0, "floor_s": tc, "naive_all": ta_all,
        "batched_all": tb_all, "batched_final_all": tb0_all, "floor_all": tc_all,
        "ratio_batched_final_over_floor": tb0 / tc,
        "losses_per_s_naive": args.k / ta, "losses_per_s_batched": args.k / tb,
        "ratio_naive_over_batched": ta / tb, "ratio_batched_over_floor": tb / tc,
        "mean_risk_batched": float(res.risk.mean()), "mean_risk_naive": statistics.mean(naive_risks),
    }
    print(f"(a) naive   {ta:8.2f} s  {out['losses_per_s_naive']:7.2f} losses/s")
    print(f"(b) batched {tb:8.2f} s  {out['losses_per_s_batched']:7.2f} losses/s")
    print(f"(b0) batched, no early exit {tb0:8.2f} s  (b0/c = {tb0 / tc:.2f})")
    print(f"(c) floor   {tc:8.2f} s")
    print(f"a/b = {out['ratio_naive_over_batched']:.2f}   b/c = {out['ratio_batched_over_floor']:.2f}   "
          f"(mean R'': batched {out['mean_risk_batched']:.3f}, naive {out['mean_risk_naive']:.3f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
