"""Command line: ``python -m lossbook <command>``, one command per job: train, search, grid, paper-arm,
atras, exact, landscape (compute results); book, run, reproduce, teaching (the book). See ``--help``
of each; a chapter's ``run`` takes the chapters of :mod:`lossbook.chapters.registry`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lossbook import params
from lossbook.config import DATASETS, FAILURE_MODES, MODEL_SCALES, NETS, NORMS, SCALES, SETTINGS, TRAININGS
from lossbook.params import EPS_RULES, eps_rule


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: an integer >= 1") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not allowed; allowed: an integer >= 1")
    return v


def checked(kind: type, rule: str, *args):
    """argparse type: text -> ``kind``, accepted by the chapter parameters' validator ``params.<rule>(*args)``
    (so a CLI option and its chapter twin allow the same values)."""
    validator = getattr(params, rule)(*args)

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        why = validator(value)
        if why is not None:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {why}")
        return value
    return convert


def eps_value(text: str):
    """argparse type: 'auto', 'paper', 'calibrate' or a number > 0 (the rule of chapter 03's ``eps``)."""
    why = eps_rule(text)
    if why is not None:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {why}")
    return text if text in EPS_RULES else float(text)


def architecture_index(text: str) -> int:
    """argparse type: an index into the 40 ATRAS architectures."""
    from lossbook.chapters.atras_sweep import ARCHITECTURES

    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v < len(ARCHITECTURES) or str(v) != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: an index 0..{len(ARCHITECTURES) - 1}")
    return v


def _train(args) -> None:
    from lossbook.config import train_config
    from lossbook.core.train import train, write_accuracies

    for dataset in args.dataset:
        for net in args.net:
            for training in args.training:
                rec = train(train_config(dataset, net, training, args.scale, seed=args.seed), force=args.force)
                print(f"{dataset}-{net}-{training} [{args.scale}]: {'skipped, already trained: ' * bool(rec.get('skipped'))}"
                      f"test acc {rec['test_acc']:.4f}, {rec['train_seconds']:.0f}s")
    print("accuracies:", write_accuracies(args.scale))


def _search(args) -> None:
    from lossbook.config import check_dataset_eps
    from lossbook.search.engine import with_overrides
    from lossbook.search.runs import search_setting
    from lossbook.search.settings import SEARCH_PRESETS, resolve_setting

    cfg = with_overrides(SEARCH_PRESETS[args.scale], gn=args.generations, ps=args.population,
                         st=args.population, n_images=args.images, semantic_cache=args.semantic_cache)
    if not isinstance(args.eps, str):  # a number: checked under every chosen norm before any search runs
        for norm in args.norm:
            check_dataset_eps(args.dataset, norm, args.eps)
    for norm in args.norm:
        setting = resolve_setting(args.dataset, args.net, args.training, norm, args.scale, args.eps, cfg.n_images)
        print(f"searching {setting.name()} at eps={setting.eps:.3g} [{args.scale}]")
        done = [] if args.force else search_setting(setting, args.scale, runs=args.runs, seed=args.seed, cfg=cfg,
                                                    load_only=True)
        if done:
            print(f"  skipped, finished earlier: run seeds {', '.join(str(r['seed']) for r in done)} (--force to redo)")
        for rec in search_setting(setting, args.scale, runs=args.runs, seed=args.seed, cfg=cfg, force=args.force):
            b = rec["baselines"]
            print(f"  run seed {rec['seed']}: R''={rec['best_fitness']:.3f} (CE {b['ce']:.3f}, C&W {b['cw']:.3f}, "
                  f"DLR {b['dlr']:.3f}; gain over CE {rec['gain_over_ce_pp']:+.1f} pp) in {rec['seconds']:.0f}s, "
                  f"{rec.get('attacked', rec['evaluations'])} of {rec.get('asked', '?')} trees attacked: "
                  f"{rec['best_pretty']}")


def _grid(args) -> None:
    from lossbook.chapters.gp_search import run_grid

    print("summary:", run_grid(args.scale, settings=args.settings, progress=not args.quiet, backend=args.backend,
                               address=args.address))


def _paper_arm(args) -> None:
    from lossbook.chapters.paper_arm import arm_settings, run_arm

    settings = args.settings or [s for s in arm_settings(args.arm) if s.split("-")[0] in args.datasets]
    print("summary:", run_arm(args.arm, settings=settings, progress=not args.quiet, seeded=not args.no_seeded))


def _atras(args) -> None:
    from lossbook.chapters.atras_sweep import (
        atras_config,
        chapter_architectures,
        dataset_results,
        depth_summary,
        failure_architectures,
        transfer_architectures,
    )

    archs = chapter_architectures("all" if args.architectures is None else ",".join(map(str, args.architectures)),
                                  args.scale)
    if args.failure_mode != "none" and args.architectures is None:  # the chapter's choice: the deepest MLPs
        archs = failure_architectures(archs, args.scale)
    configs = [atras_config(ds, args.scale, eps=args.eps, epochs=args.epochs, adv_epochs=args.adv_epochs,
                            seed=args.seed, failure_mode=args.failure_mode) for ds in args.dataset]  # all checked first
    for cfg in configs:
        df, _ = dataset_results(cfg, archs, transfer_architectures(archs, args.scale), compute=True)
        print(depth_summary(df).to_string(index=False))


def _exact(args) -> None:
    from dataclasses import replace

    from lossbook.chapters.exact_risk import eps_curve, exact_summary, run_paper_net, run_study, select_studies

    if args.paper_net:  # the paper's networks: the decided-share curve, then every attack at the chosen eps
        for name in args.paper_net:
            table = run_paper_net(name, args.scale, progress=not args.quiet)
            print(eps_curve(name, args.scale).to_string(index=False))
            if table is not None:
                s = exact_summary(table)
                print(f"{name}: R in [{s['R_low']:.3f}, {s['R_high']:.3f}] on {s['images']} images")
        return
    chosen = select_studies(",".join(args.studies) if args.studies else "all", args.scale, args.images or 0,
                            args.time_limit or 0.0)
    if args.eps is not None:  # every study checked (its norm's bound) before any solver runs
        chosen = [replace(st, eps=args.eps) for st in chosen]
    for st in chosen:
        table = run_study(st, args.scale, progress=not args.quiet, backend=args.backend, address=args.address)
        s = exact_summary(table)
        r = f"R = {s['R_low']:.3f}" if not s["unknown"] else f"R in [{s['R_low']:.3f}, {s['R_high']:.3f}]"
        print(f"{st.name()}: {r} ({s['robust']} robust, {s['vulnerable']} vulnerable, {s['unknown']} unknown of "
              f"{s['images']}); solver median {s['milp_median_s']:.1f} s")


def _landscape(args) -> None:
    from lossbook.chapters.landscape import chapter_studies

    studies, missing, steps = chapter_studies(args.source, args.datasets, args.scale, args.images or 0, args.steps,
                                              args.resolution or 0, seed=args.seed, recompute=True)
    for d, (items, _, meta) in studies.items():
        print(f"{args.source} on {d} (PGD-{steps}): {meta['outcomes']}")
    if missing:
        print("not available at this scale:", ", ".join(missing))


def _book(args) -> None:
    from lossbook.publish.build import build

    build(scale=args.scale, recompute=args.recompute, chapters=args.chapters, execute=not args.no_execute)


def _run(args) -> None:
    from lossbook.publish.build import export_html, run_chapter

    bad = [p for p in args.param if "=" not in p]
    if bad:
        raise ValueError(f"-p {bad[0]!r} is not of the form NAME=VALUE (e.g. -p seed=1)")
    extra = dict(p.split("=", 1) for p in args.param)
    for name in args.chapters:
        executed = run_chapter(name, args.scale, args.recompute, extra=extra, out_dir=Path(args.out))
        print(f"executed: {executed}\nto read it, open in a browser: {export_html(executed)}")


def _reproduce(args) -> None:
    from lossbook.publish.reproduce import reproduce

    reproduce(args.scale, datasets=args.datasets, steps=args.steps, dry_run=args.dry_run)


def _teaching(args) -> None:
    from lossbook.publish.teaching import measure

    measure()


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default, or there is
    none to say (None, or an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _train_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``train`` subcommand."""
    t = sub.add_parser("train", help="train NET-1/NET-2 models (ST or PGD-AT); resumes interrupted runs",
                       formatter_class=fmt, description="Trains into results/models/<scale>/ (a finished model is "
                       "skipped; --force retrains it). Cost for all 8: smoke seconds, cpu about an hour on 2 cores, "
                       "paper 160 epochs each (GPU hours).")
    t.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    t.add_argument("--net", nargs="+", choices=NETS, default=list(NETS))
    t.add_argument("--training", nargs="+", choices=TRAININGS, default=list(TRAININGS))
    t.add_argument("--scale", choices=MODEL_SCALES, default="cpu",
                   help="cpu-long: the CIFAR-10 AT models at 30 epochs (the paper arm's training-length sensitivity)")
    t.add_argument("--seed", type=checked(int, "whole"), default=0,
                   help="seed 0 is the book's model; others are saved as ...-seed<k>.pt")
    t.add_argument("--force", action="store_true", help="train again a model that is already trained (replaced when done)")
    t.set_defaults(func=_train)


def _search_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``search`` subcommand."""
    s = sub.add_parser("search", help="AutoLoss-AR: GP search for a surrogate loss (resumes interrupted runs)",
                       formatter_class=fmt, description="Runs into results/search/<scale>/<setting>/run-<seed>.json "
                       "(finished runs are loaded, not searched again; --force searches them again, replacing each "
                       "file only when complete). Cost per run: smoke seconds, cpu about a minute on 2 cores (MNIST), "
                       "paper Table IV (GPU hours).")
    s.add_argument("--dataset", choices=DATASETS, required=True)
    s.add_argument("--net", choices=NETS, required=True)
    s.add_argument("--training", choices=TRAININGS, required=True)
    s.add_argument("--norm", nargs="+", choices=NORMS, default=["linf"])
    s.add_argument("--scale", choices=SCALES, default="cpu")
    s.add_argument("--runs", type=positive_int, default=None, help="independent runs (default: 1 smoke, 2 cpu, 20 paper)")
    s.add_argument("--seed", type=checked(int, "whole"), default=0, help="seed of the first run; run r uses seed + r")
    s.add_argument("--eps", type=eps_value, default="auto",
                   help="'auto' (Table III unless CE's R'' at it is outside 0.5-0.9, "
                   "then calibrated), 'paper' (Table III), 'calibrate' (CE R''=0.7) or a number")
    s.add_argument("--generations", type=positive_int, default=None, help="GP generations (default: the preset's)")
    s.add_argument("--population", type=positive_int, default=None, help="GP population (default: the preset's)")
    s.add_argument("--images", type=positive_int, default=None, help="evaluation images (default: the preset's)")
    s.add_argument("--force", action="store_true", help="search finished runs again")
    s.add_argument("--no-semantic-cache", dest="semantic_cache", action="store_false",
                   help="attack every new tree (no sharing of one attack among trees of equal behaviour)")
    s.set_defaults(func=_search)


def _grid_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``grid`` subcommand."""
    g = sub.add_parser("grid", formatter_class=fmt,
                       help="AutoLoss-AR's 24 settings: GP runs, held-out re-evaluation with paired statistics "
                       "and verdicts in results/search/<preset>/summary.csv (skips finished runs, resumes interrupted ones)",
                       description="cpu: the 'grid' preset (3 runs per setting, 2 of them with the paper's initialisation) "
                       "on the cpu models, results in results/search/grid/; about 12 CPU-hours for all 24 settings. "
                       "paper: Table IV, 20 runs per setting, on the paper-scale models (GPU hours). smoke: seconds.")
    g.add_argument("--scale", choices=SCALES, default="cpu", help="the models' scale (default: cpu)")
    g.add_argument("--settings", nargs="+", choices=SETTINGS, default=None, metavar="SETTING",
                   help="only these settings, e.g. mnist-net1-st-linf (default: all 24)")
    g.add_argument("--quiet", action="store_true", help="no progress bars (one line per finished run and setting)")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this process; ray: one Ray task per (setting, run) on the cluster at --address "
                        "(pip install 'lossbook[cluster]'; results in LOSSBOOK_RESULTS, a folder every node can write)")
    g.add_argument("--address", default=None, help="the Ray cluster (default: RAY_ADDRESS, else 'auto')")
    g.set_defaults(func=_grid)


def _paper_arm_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``paper-arm`` subcommand."""
    pa = sub.add_parser("paper-arm", formatter_class=fmt, help="Question 1 by the protocol of book/protocol_q1.md: "
                        "unseeded runs, held-out verdicts, results/search/paper-arm/summary.csv (resumes)",
                        description="paper: MNIST on the 160-epoch models (5 unseeded runs per setting), CIFAR-10 on "
                        "the cpu models (3; the grid's unseeded runs of the same request count), eps by the paper's "
                        "rule; then one seeded run per setting (a labelled sensitivity arm). smoke: seconds.")
    pa.add_argument("--arm", choices=("paper", "smoke", "long-at", "lexicase"), default="paper",
                    help="which plan; long-at: the 6 CIFAR-10 AT settings on the 30-epoch models (train --scale cpu-long); "
                    "lexicase: MNIST's 12 with the released code's lexicase selection and 25-node limit")
    pa.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="only these datasets")
    pa.add_argument("--settings", nargs="+", choices=SETTINGS, default=None, metavar="SETTING",
                    help="only these settings (overrides --datasets)")
    pa.add_argument("--no-seeded", action="store_true", help="skip the seeded sensitivity runs")
    pa.add_argument("--quiet", action="store_true", help="no progress bars (one line per finished run and setting)")
    pa.set_defaults(func=_paper_arm)


def _atras_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``atras`` subcommand."""
    a = sub.add_parser("atras", help="the ATRAS sweep: FGSM and FGSM-AT over the 40 MLPs (resumes)",
                       formatter_class=fmt, description="Rows into results/atras/<scale>/<dataset>.csv, one per "
                       "finished architecture (finished ones are skipped). Cost for 40 MLPs on both datasets: smoke "
                       "seconds (3 MLPs), cpu about an hour on 2 cores, paper 10+10 epochs each.")
    a.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    a.add_argument("--scale", choices=SCALES, default="cpu")
    a.add_argument("--architectures", nargs="+", type=architecture_index, default=None,
                   help="indices 0..39 (default: all)")
    a.add_argument("--eps", type=checked(float, "number"), default=None, help="FGSM radius (l_inf)")
    a.add_argument("--epochs", type=positive_int, default=None, help="standard-training epochs (default: the scale's)")
    a.add_argument("--adv-epochs", type=positive_int, default=None,
                   help="adversarial-training epochs (default: the scale's)")
    a.add_argument("--seed", type=checked(int, "whole"), default=0)
    a.add_argument("--failure-mode", choices=FAILURE_MODES, default="none")
    a.set_defaults(func=_atras)


def _atras_regime(args) -> None:
    from lossbook.chapters.atras_regime import REGIMES, claim_line, claim_rows, plan_for, run_sweep, run_transfer

    plan = plan_for(args.scale)
    for ds in args.dataset:
        sweep = run_sweep(ds, plan, progress=not args.quiet)
        transfer = run_transfer(ds, plan, progress=not args.quiet) if not args.no_transfer else None
        for regime in REGIMES:
            for r in claim_rows(ds, regime, sweep, transfer, plan.bootstrap):
                print(claim_line(ds, regime, r))


def _atras_regime_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``atras-regime`` subcommand."""
    from lossbook.chapters.atras_regime import PLANS

    a = sub.add_parser("atras-regime", formatter_class=fmt,
                       help="ATRAS's claims in ATRAS's regime (book/protocol_atras.md): calibrated FGSM eps, "
                       "early-stopped training, 3 seeds, bootstrap intervals (resumes)",
                       description="Into results/atras/regime/<scale>/: the calibration, one sweep row per "
                       "(architecture, seed, regime) as each model finishes, then the transfer rows per seed. "
                       "cpu: 40 MLPs x 3 seeds per dataset, about 12 CPU-hours for both; smoke: seconds.")
    a.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    a.add_argument("--scale", choices=tuple(PLANS), default="cpu")
    a.add_argument("--no-transfer", action="store_true", help="the sweep only")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=_atras_regime)


def _exact_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``exact`` subcommand."""
    from lossbook.chapters.exact_risk import PAPER_NETS, STUDIES

    e = sub.add_parser("exact", formatter_class=fmt, help="chapter 07: exact risk of small ReLU MLPs (MILP) and every "
                       "attack's error E = R - R'' (resumes: each image is saved as it ends)",
                       description="Trains the verified MLPs where missing, verifies each image (HiGHS), runs every "
                       "attack on "
                       "the same images; results in results/exact/<scale>/. Cost: smoke seconds; cpu hours on one core "
                       "(the solver's time per image is in Table 7.1).")
    e.add_argument("--scale", choices=SCALES, default="cpu")
    e.add_argument("--studies", nargs="+", default=None, metavar="STUDY",
                   choices=sorted({s.name() for v in STUDIES.values() for s in v}),
                    help="default: the scale's studies and every saved study of the paper networks")
    e.add_argument("--images", type=positive_int, default=None, help="images per study (default: the study's)")
    e.add_argument("--time-limit", type=checked(float, "number"), default=None,
                   help="solver seconds per image (default: the study's)")
    e.add_argument("--eps", type=checked(float, "number"), default=None, help="another radius for the chosen studies")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="ray: the verification as Ray tasks over shards of 50 images (results shared as for grid)")
    e.add_argument("--address", default=None, help="the Ray cluster (default: RAY_ADDRESS, else 'auto')")
    e.add_argument("--paper-net", nargs="+", default=None, choices=PAPER_NETS, metavar="NET",
                   help=f"instead of the studies: the paper's 160-epoch network(s) ({', '.join(PAPER_NETS)}): the "
                   "share of images decided against eps, then every attack at the largest eps with 90%% decided "
                   "(hours on one core)")
    e.set_defaults(func=_exact)


def _audit(args) -> None:
    from lossbook.chapters.exact_risk import audit_study, paper_net_saved_studies, select_studies

    chosen = select_studies(",".join(args.studies) if args.studies else "all", args.scale)
    if not args.studies:
        chosen += paper_net_saved_studies(args.scale)
    problems = []
    for st in chosen:
        found = audit_study(st, args.scale, lp_dual=args.lp_dual)
        print(f"{st.name()}: {'passes' if not found else f'{len(found)} problem(s)'}")
        problems += found
    for p in problems:
        print(f"  {p}")
    if problems:
        raise SystemExit(1)


def _audit_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``audit`` subcommand."""
    from lossbook.chapters.exact_risk import AUDIT_LP_DUAL, STUDIES

    au = sub.add_parser("audit", formatter_class=fmt, help="chapter 07: re-check every stored exact verdict without a "
                        "solver (witnesses in the ball and the box exactly, certified margins, proofs per class, the "
                        "record's rule and settings); exit status 1 on any problem",
                        description="Reads results/exact/<scale>/ and the datasets; seconds per study.")
    au.add_argument("--scale", choices=SCALES, default="cpu")
    au.add_argument("--studies", nargs="+", default=None, metavar="STUDY",
                    choices=sorted({s.name() for v in STUDIES.values() for s in v}),
                    help="default: the scale's studies and every saved study of the paper networks")
    au.add_argument("--lp-dual", type=_lp_dual_count, default=AUDIT_LP_DUAL, metavar="N|all",
                    help="robust images per study whose LP-dual proofs are derived again (the LPs solved afresh, each "
                         "bound read from the dual); 'all' takes every one (minutes per study)")
    au.set_defaults(func=_audit)


def _lp_dual_count(text: str) -> int | None:
    """``audit --lp-dual``: a whole number, or 'all' (None)."""
    if text == "all":
        return None
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: a whole number >= 0, or 'all'")


def _landscape_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``landscape`` subcommand."""
    ls = sub.add_parser("landscape", formatter_class=fmt, help="chapter 05: PGD races, loss planes and the explanation "
                        "rule for a searched loss (results in results/landscape/<scale>/)",
                        description="Uses the scale's presets (smoke: 1 image, 9x9 grid, at most 20 steps; cpu: 200 "
                        "images, 61x61; paper: 1000, 101x101) unless given. Cost: smoke seconds, cpu minutes.")
    ls.add_argument("--source", choices=SETTINGS, default="mnist-net1-at-linf", metavar="SETTING")
    ls.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ls.add_argument("--scale", choices=SCALES, default="cpu")
    ls.add_argument("--images", type=positive_int, default=None, help="raced images (default: the scale's)")
    ls.add_argument("--steps", type=positive_int, default=100)
    ls.add_argument("--resolution", type=positive_int, default=None, help="grid points per axis (default: the scale's)")
    ls.add_argument("--seed", type=checked(int, "whole"), default=0)
    ls.set_defaults(func=_landscape)


def _book_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``book`` subcommand."""
    b = sub.add_parser("book", help="execute the chapters (from committed results by default) and build the HTML")
    b.add_argument("--scale", choices=SCALES, default="cpu", help="scale of the results the book shows")
    b.add_argument("--recompute", action="store_true", help="recompute results at --scale instead of loading them")
    b.add_argument("--chapters", nargs="+", default=None, help="only these chapters (default: all that exist)")
    b.add_argument("--no-execute", action="store_true", help="build from already executed chapters")
    b.set_defaults(func=_book)


def _run_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``run`` subcommand."""
    r = sub.add_parser("run", help="execute chapters with papermill into book/chapters/ (a notebook and an HTML "
                       "page each)")
    r.add_argument("chapters", nargs="+", help="e.g. 02_training")
    r.add_argument("--scale", choices=SCALES, default="smoke")
    r.add_argument("--recompute", action="store_true")
    r.add_argument("-p", "--param", action="append", default=[],
                   help="NAME=VALUE for the notebook, converted to the parameter's type (lossbook.chapters.registry)")
    r.add_argument("--out", default="runs", help="folder of the executed notebooks and their HTML pages (the book's own, "
                   "book/chapters/, is left alone)")
    r.set_defaults(func=_run)


def _reproduce_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``reproduce`` subcommand."""
    from lossbook.publish.reproduce import STEPS

    rp = sub.add_parser("reproduce", formatter_class=fmt, help="the whole chain in order with resume (models, eps, the "
                        "24-setting grid, the computing chapters, the book), printing what is done, what remains and "
                        "an estimate of the time left", description="paper: 8 models at 160 epochs, 24 settings x 20 "
                        "GP runs (GPU days). --dry-run prints the status only. With one dataset the chain stops after "
                        "the grid (the chapters and the book need both).")
    rp.add_argument("--scale", choices=SCALES, default="paper")
    rp.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    rp.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="only these steps")
    rp.add_argument("--dry-run", action="store_true", help="print what is done and what remains; run nothing")
    rp.set_defaults(func=_reproduce)


def _teaching_command(sub, fmt=DefaultsHelpFormatter) -> None:
    """The ``teaching`` subcommand."""
    te = sub.add_parser("teaching", help="time every command of the 90-minute lesson on a fresh results folder "
                        "(a few minutes on 2 cores) for the Teaching page")
    te.set_defaults(func=_teaching)


#: the subcommands, in the order ``--help`` lists them
COMMANDS = (_train_command, _search_command, _grid_command, _paper_arm_command, _atras_command,
            _atras_regime_command, _exact_command,
            _audit_command, _landscape_command, _book_command, _run_command, _reproduce_command, _teaching_command)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: one subcommand per job, each with ``func`` set to the function it calls."""
    ap = argparse.ArgumentParser(prog="python -m lossbook", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lossbook.core.data import DataError

    try:
        args.func(args)
    except (ValueError, OSError, DataError) as exc:  # what a user can fix (a full disk too): one line, no traceback
        print(f"python -m lossbook {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
