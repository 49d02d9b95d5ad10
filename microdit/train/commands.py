"""`microdit train --config <stage.yaml> [--resume auto|none] [--out DIR] [--set key=value ...]`"""
import argparse

from microdit.train.config import load_stage_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train one stage of the recipe (blocks until the job ends)",
        description="Train one stage: submit it with submitit on the cluster named in the config's launch section "
                    "(slurm, local or debug), wait, and exit non-zero with the log path if the job failed. A job "
                    "that a previous run of this command submitted and did not see end is waited on, not "
                    "submitted again; one command at a time drives a stage folder.")
    parser.add_argument("--config", required=True, help="stage YAML, e.g. config/stages/paper/stage1.yaml")
    parser.add_argument("--resume", choices=("auto", "none"), default="auto",
                        help="auto (default): continue from the newest checkpoint in the output directory if any; "
                             "none: start the stage from its init, ignoring existing checkpoints")
    parser.add_argument("--out", help="output directory (overrides out_dir in the config)")
    parser.add_argument("--cancel-on-exit", action="store_true",
                        help="cancel the job when this command is stopped (Ctrl-C, SIGTERM); by default the job runs "
                             "on and the next `microdit train` of the stage waits on it (launch.cancel_on_exit)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config field, value parsed as YAML (repeatable), e.g. --set optim.lr=1e-4 "
                             "--set launch.cluster=debug")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from microdit.train.launch import launch

    cfg = load_stage_config(args.config, args.overrides)
    if args.out:
        cfg.out_dir = args.out
    if args.cancel_on_exit:
        cfg.launch.cancel_on_exit = True
    return launch(cfg, args.resume)
