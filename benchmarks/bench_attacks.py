"""Benchmark: K losses evaluated by PGD-10 -- the naive loop, the engine, the floor and a peer.

(a)  naive   -- the textbook loop, as the paper's code: for each loss, PGD-10 over the N images in
               batches, every sample attacked for all 10 steps, a prediction check at each iterate.
(b)  engine  -- ``lossbook.core.attacks.evaluate_losses`` on the same K losses (broken samples leave),
               at its default chunk (measured per model: :func:`lossbook.core.attacks.default_chunk`).
(b2) engine at the former fixed default chunk (2,048 on a CPU, 32,768 on a GPU), for comparison.
(b0) engine, "final" mode -- no sample leaves early: the engine's own overhead.
(c)  floor   -- the bare model: forward + input gradient over the same K x N x 10 image-steps at the
               fastest batch size found by a sweep over batch sizes (not at the engine's chunk).
(d)  peer    -- torchattacks' PGD (l_inf, CE, the same eps and steps) for one loss on the N images.

Prints medians of ``--repeats`` runs, and the ratios a/b, b2/b, b0/c and (b per loss)/d, all
measured in one run. R'' of (b) and (b2) must be identical (printed).
Usage: ``python benchmarks/bench_attacks.py --dataset mnist --k 32 --n 1000 [--device cuda]``.
Needs the trained models (``results/models/<scale>``), the data (``LOSSBOOK_DATA``) and, for (d),
``pip install --no-deps torchattacks==3.5.1`` (its metadata pins an old ``requests``).
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

from lossbook.config import paper_eps
from lossbook.core.attacks import (
    CHUNK_CANDIDATES,
    default_chunk,
    evaluate_losses,
    evaluation_images,
    measure_chunk,
    project,
    step_sizes,
)
from lossbook.core.losses import HANDCRAFTED, compile_formula, per_sample
from lossbook.core.train import load_model

EXTRA = ["Mul(Log(Softmax(p)), q)", "Neg(Sum(Mul(q, Softmax(p))))", "Add(Max(p), Neg(Sum(Mul(q, p))))",
         "Neg(Mul(Sum(Mul(q, Softmax(p))), Sqrt(Abs(p))))"]
FORMER_CHUNK = {"cpu": 2048, "cuda": 32768}


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


def floor_throughput(model, img_shape, dev, min_images: int) -> tuple[int, float, dict]:
    """The best forward + input-gradient throughput over a sweep of batch sizes (images/s)."""
    sizes = CHUNK_CANDIDATES["cuda" if dev.type == "cuda" else "cpu"] + ((4096,) if dev.type != "cuda" else ())
    speed = measure_chunk(model, img_shape, dev, candidates=sizes, min_images=min_images, repeats=3)
    best = max(speed, key=speed.get)
    return best, speed[best], speed


def peer(model, x, y, eps, steps):
    """torchattacks' PGD with CE (random start, step 2.5 eps / steps); returns R''."""
    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    x_adv = atk(x, y)
    with torch.no_grad():
        return float(model(x_adv).argmax(1).ne(y).float().mean())


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
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    model = load_model(args.dataset, args.net, "st", args.scale, device=dev)
    x, y, _ = evaluation_images(model, args.dataset, args.n)
    x, y = x.to(dev), y.to(dev)
    img_shape = tuple(x.shape[1:])
    eps = paper_eps(args.dataset, args.net, "st", "linf")
    losses = loss_pool(args.k)
    chunk = default_chunk(model, img_shape, dev)
    former = FORMER_CHUNK[dev.type if dev.type == "cuda" else "cpu"]
    image_steps = args.k * len(x) * args.steps
    print(f"{args.dataset} {args.net} [{args.scale}] on {dev} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads): K={args.k} losses, N={len(x)} images, PGD-{args.steps} linf "
          f"eps={eps}; engine chunk {chunk} (measured), former {former}; median of {args.repeats}")

    run = lambda c, mode="any": evaluate_losses(model, x, y, losses, "linf", eps, args.steps, chunk=c, mode=mode)
    tb, tb_all, res = timed(lambda: run(chunk), dev, args.repeats)
    tb2, tb2_all, res2 = timed(lambda: run(former), dev, args.repeats)
    tb0, tb0_all, _ = timed(lambda: run(chunk, "final"), dev, args.repeats)
    floor_batch, floor_speed, sweep = floor_throughput(model, img_shape, dev, min_images=2 * max(CHUNK_CANDIDATES["cpu"]))
    tc = image_steps / floor_speed
    ta, ta_all, naive_risks = timed(lambda: naive(model, x, y, losses, "linf", eps, args.steps), dev, args.repeats)
    try:
        td, td_all, peer_risk = timed(lambda: peer(model, x, y, eps, args.steps), dev, args.repeats)
    except ImportError:
        td, td_all, peer_risk = float("nan"), [], float("nan")

    out = {
        "dataset": args.dataset, "net": args.net, "device": str(dev), "threads": torch.get_num_threads(),
        "k": args.k, "n": len(x), "steps": args.steps, "eps": eps, "chunk": chunk, "former_chunk": former,
        "repeats": args.repeats, "naive_s": ta, "engine_s": tb, "engine_former_chunk_s": tb2, "engine_final_s": tb0,
        "floor_s": tc, "floor_batch": floor_batch, "floor_images_per_s": floor_speed,
        "floor_sweep_images_per_s": {str(k): round(v) for k, v in sweep.items()}, "peer_s": td,
        "naive_all": ta_all, "engine_all": tb_all, "engine_former_chunk_all": tb2_all, "engine_final_all": tb0_all,
        "peer_all": td_all,
        "ratio_naive_over_engine": ta / tb, "ratio_former_over_engine": tb2 / tb,
        "ratio_engine_final_over_floor": tb0 / tc, "ratio_engine_per_loss_over_peer": (tb / args.k) / td,
        "risk_identical_to_former_chunk": bool(torch.equal(res.broken, res2.broken)),
        "mean_risk_engine": float(res.risk.mean()), "mean_risk_naive": statistics.mean(naive_risks),
        "risk_ce_engine": float(res.risk[0]), "risk_ce_peer": peer_risk,
    }
    print(f"(a)  naive loop            {ta:8.2f} s  {args.k / ta:7.2f} losses/s")
    print(f"(b)  engine, chunk {chunk:<6d}  {tb:8.2f} s  {args.k / tb:7.2f} losses/s")
    print(f"(b2) engine, chunk {former:<6d}  {tb2:8.2f} s  (former default)")
    print(f"(b0) engine, no early exit {tb0:8.2f} s")
    print(f"(c)  floor at batch {floor_batch:<5d}  {tc:8.2f} s  ({floor_speed:,.0f} images/s; sweep "
          + ", ".join(f"{k}: {v:,.0f}" for k, v in sweep.items()) + ")")
    print(f"(d)  torchattacks PGD, 1 loss {td:6.2f} s")
    print(f"a/b = {ta / tb:.2f}   b2/b = {tb2 / tb:.2f}   b0/c = {tb0 / tc:.2f}   (b/K)/d = {(tb / args.k) / td:.2f}")
    print(f"R'': engine mean {out['mean_risk_engine']:.4f} (identical at the former chunk: "
          f"{out['risk_identical_to_former_chunk']}), naive mean {out['mean_risk_naive']:.4f}; CE: engine "
          f"{out['risk_ce_engine']:.3f}, torchattacks {peer_risk:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
