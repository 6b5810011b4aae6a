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

    args = ap.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
