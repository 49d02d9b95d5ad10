"""The install recipe stays consistent: the package declares what it imports, the pins cover the stack, the conda env
mirrors them; the CLI is wired."""
import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
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


def distribution(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_distributions() -> set[str]:
    """The installed distributions of every third-party module the package imports anywhere (lazily included)."""
    modules = set()
    for path in (REPO / "microdit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    providers = importlib.metadata.packages_distributions()
    third_party = modules - set(sys.stdlib_module_names) - {"microdit"}
    missing = sorted(m for m in third_party if m not in providers)
    assert not missing, f"imported but not installed: {missing}"
    return {distribution(providers[m][0]) for m in third_party}


def test_the_package_declares_every_distribution_it_imports_and_make_pins_them_all():
    declared = {distribution(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    needed = imported_distributions()
    assert needed <= declared, f"imported, not in pyproject.toml's dependencies: {sorted(needed - declared)}"
    requirements = _pins((REPO / "envs" / "requirements.txt").read_text().splitlines())
    assert all("==" in line for line in requirements), [line for line in requirements if "==" not in line]
    pinned = {distribution(line) for line in requirements}
    assert declared <= pinned, f"declared, not pinned: {sorted(declared - pinned)}"
    # and nothing is pinned that neither the package, the workflow nor the tests use
    used_otherwise = {"snakemake", "snakemake-executor-plugin-slurm", "accelerate", "timm", "pytest", "pytest-xdist",
                      "open-clip-torch"}
    assert pinned <= declared | used_otherwise, sorted(pinned - declared - used_otherwise)


def test_version_through_the_entry_point():
    out = subprocess.run([str(Path(sys.executable).with_name("microdit")), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"microdit {importlib.metadata.version('microdit')}"
