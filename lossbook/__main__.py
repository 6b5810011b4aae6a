"""Command line: ``python -m lossbook train | search | run | book`` (see ``--help`` of each)."""
from __future__ import annotations

import argparse
import sys

from .config import DATASETS, FAILURE_MODES, NETS, NORMS, SCALES, TRAININGS


def _train(args) -> None:
    from .config import train_config
    from .train import train, write_accuracies

    for dataset in args.dataset:
        for net in args.net:
            for training in args.training:
                rec = train(train_config(dataset, net, training, args.scale, seed=args.seed))
                print(f"{dataset}-{net}-{training} [{args.scale}]: test acc {rec['test_acc']:.4f}, "
                      f"{rec['train_seconds']:.0f}s")
    print("accuracies:", write_accuracies(args.scale))


def _search(args) -> None:
    from .search import SEARCH_PRESETS, auto_setting, calibrated_setting, make_setting, search_setting, with_overrides

    cfg = with_overrides(SEARCH_PRESETS[args.scale], gn=args.generations, ps=args.population,
                         st=args.population, n_images=args.images)
    for norm in args.norm:
        if args.eps == "calibrate":
            setting = calibrated_setting(args.dataset, args.net, args.training, norm, args.scale, n_images=cfg.n_images)
        elif args.eps == "auto":
            setting = auto_setting(args.dataset, args.net, args.training, norm, args.scale, n_images=cfg.n_images)
        else:
            setting = make_setting(args.dataset, args.net, args.training, norm,
                                   None if args.eps == "paper" else float(args.eps))
        print(f"searching {setting.name()} at eps={setting.eps} [{args.scale}]")
        for rec in search_setting(setting, args.scale, runs=args.runs, seed=args.seed, cfg=cfg):
            b = rec["baselines"]
            print(f"  run seed {rec['seed']}: R''={rec['best_fitness']:.3f} (CE {b['ce']:.3f}, C&W {b['cw']:.3f}, "
                  f"DLR {b['dlr']:.3f}; gain over CE {rec['gain_over_ce_pp']:+.1f} pp) in {rec['seconds']:.0f}s, "
                  f"{rec.get('attacked', rec['evaluations'])} of {rec.get('asked', '?')} trees attacked: {rec['best_pretty']}")


def _atras(args) -> None:
    from .atras import ARCHITECTURES, atras_config, dataset_results, depth_summary, transfer_architectures

    archs = ARCHITECTURES if args.architectures is None else [ARCHITECTURES[i] for i in args.architectures]
    for ds in args.dataset:
        cfg = atras_config(ds, args.scale, eps=args.eps, epochs=args.epochs, adv_epochs=args.adv_epochs,
                           seed=args.seed, failure_mode=args.failure_mode)
        df, _ = dataset_results(cfg, archs, transfer_architectures(archs, args.scale), compute=True)
        print(depth_summary(df).to_string(index=False))


def _book(args) -> None:
    from .book import build

    build(scale=args.scale, recompute=args.recompute, chapters=args.chapters, execute=not args.no_execute)


def _run(args) -> None:
    from .book import run_chapter

    extra = dict(p.split("=", 1) for p in args.param)
    for name in args.chapters:
        print("executed:", run_chapter(name, args.scale, args.recompute, extra=extra))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lossbook", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train NET-1/NET-2 models (ST or PGD-AT); resumes interrupted runs")
    t.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    t.add_argument("--net", nargs="+", choices=NETS, default=list(NETS))
    t.add_argument("--training", nargs="+", choices=TRAININGS, default=list(TRAININGS))
    t.add_argument("--scale", choices=SCALES, default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train)

    s = sub.add_parser("search", help="AutoLoss-AR: GP search for a surrogate loss (resumes interrupted runs)")
    s.add_argument("--dataset", choices=DATASETS, required=True)
    s.add_argument("--net", choices=NETS, required=True)
    s.add_argument("--training", choices=TRAININGS, required=True)
    s.add_argument("--norm", nargs="+", choices=NORMS, default=["linf"])
    s.add_argument("--scale", choices=SCALES, default="cpu")
    s.add_argument("--runs", type=int, default=None, help="independent runs (default: 1 smoke, 2 cpu, 20 paper)")
    s.add_argument("--seed", type=int, default=0, help="seed of the first run; run r uses seed + r")
    s.add_argument("--eps", default="auto", help="'auto' (Table III unless CE's R'' at it is outside 0.5-0.9, "
                   "then calibrated), 'paper' (Table III), 'calibrate' (CE R''=0.7) or a number")
    s.add_argument("--generations", type=int, default=None)
    s.add_argument("--population", type=int, default=None)
    s.add_argument("--images", type=int, default=None)
    s.set_defaults(func=_search)

    a = sub.add_parser("atras", help="the ATRAS sweep: FGSM and FGSM-AT over the 40 MLPs (resumes)")
    a.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    a.add_argument("--scale", choices=SCALES, default="cpu")
    a.add_argument("--architectures", nargs="+", type=int, default=None, help="indices 0..39 (default: all)")
    a.add_argument("--eps", type=float, default=None)
    a.add_argument("--epochs", type=int, default=None)
    a.add_argument("--adv-epochs", type=int, default=None)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--failure-mode", choices=FAILURE_MODES, default="none")
    a.set_defaults(func=_atras)

    b = sub.add_parser("book", help="execute the chapters (from committed results by default) and build the HTML")
    b.add_argument("--scale", choices=SCALES, default="cpu", help="scale of the results the book shows")
    b.add_argument("--recompute", action="store_true", help="recompute results at --scale instead of loading them")
    b.add_argument("--chapters", nargs="+", default=None, help="only these chapters (default: all that exist)")
    b.add_argument("--no-execute", action="store_true", help="build from already executed chapters")
    b.set_defaults(func=_book)

    r = sub.add_parser("run", help="execute chapters with papermill into book/chapters/")
    r.add_argument("chapters", nargs="+", help="e.g. 02_training")
    r.add_argument("--scale", choices=SCALES, default="smoke")
    r.add_argument("--recompute", action="store_true")
    r.add_argument("-p", "--param", action="append", default=[], help="NAME=VALUE (string) for the notebook")
    r.set_defaults(func=_run)

    args = ap.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
