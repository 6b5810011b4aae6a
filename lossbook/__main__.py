"""Command line: ``python -m lossbook train | search | run | book`` (see ``--help`` of each)."""
from __future__ import annotations

import argparse
import sys

from .config import DATASETS, NETS, SCALES, TRAININGS


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
