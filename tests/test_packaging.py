"""The install recipe stays consistent: the conda env mirrors the pip pins; the CLI is wired."""
from pathlib import Path

import yaml

from microdit.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]


def _pins(lines):
    return sorted(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def test_conda_env_mirrors_pip_pins():
    env = yaml.safe_load((REPO / "envs" / "microdit.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    requirements = _pins((REPO / "envs" / "requirements.txt").read_text().splitlines())
    assert _pins(p for p in pip_section if not p.startswith("-e")) == requirements


def test_every_command_is_registered_by_the_module_it_is_looked_up_in():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"sample", "checkpoint", "bench", "download", "convert", "precompute", "train-vae",
            "train", "eval-captions", "generate", "fid-stats", "fid", "geneval-metadata", "geneval-generate",
            "geneval-summary", "report"} <= set(commands)
    assert set(commands) == set(COMMANDS)
    for name in COMMANDS:  # a command's own module registers it
        assert name in build_parser(name)._subparsers._group_actions[0].choices
