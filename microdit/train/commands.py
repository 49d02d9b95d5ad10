"""`microdit train --config <stage.yaml> [--resume auto|none] [--out DIR] [--set key=value ...]`"""
import argparse

from microdit.train.config import load_stage_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train one stage of the recipe (blocks until the job ends)",
        description="Train one stage: submit it with submitit on the cluster named in the config's launch section "
                    "(slurm, local or debug), wait, and exit non-zero with the log path if the job failed.")
    parser.add_argument("--config", required=True, help="stage YAML, e.g. config/stages/paper/stage1.yaml")
    parser.add_argument("--resume", choices=("auto", "none"), default="auto",
                        help="auto (default): continue from the newest checkpoint in the output directory if any; "
                             "none: start the stage from its init, ignoring existing checkpoints")
    parser.add_argument("--out", help="output directory (overrides out_dir in the config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config field, value parsed as YAML (repeatable), e.g. --set optim.lr=1e-4 "
                             "--set launch.cluster=debug")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from microdit.train.launch import launch

    cfg = load_stage_config(args.config, args.overrides)
    if args.out:
        cfg.out_dir = args.out
    return launch(cfg, args.resume)
