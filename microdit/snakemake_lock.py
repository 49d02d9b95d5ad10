"""`microdit unlock-stale [--snakemake PATH] -- SNAKEMAKE_ARGS`: clear the lock a killed Snakemake left behind.

A run killed with SIGKILL leaves its lock (.snakemake/locks/), and every later run stops on it. The lock records no
process, so a stale one is told apart by looking: no Snakemake process on this machine works in this directory.
"""
import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path


def held_locks(workdir: Path) -> list[Path]:
    return sorted((workdir / ".snakemake" / "locks").glob("*.lock"))


def is_snakemake(argv: list[str]) -> bool:
    """`snakemake ...`, `python .../snakemake ...` or `python -m snakemake ...` (how Snakemake starts its jobs)."""
    names = [os.path.basename(arg) for arg in argv[:3]]
    if names and names[0].startswith("snakemake"):
        return True
    return bool(names) and names[0].startswith("python") and (names[1:2] == ["snakemake"]
                                                               or names[1:3] == ["-m", "snakemake"])


def snakemakes_in(workdir: Path) -> list[int]:
    """Process ids of the Snakemake processes on this machine working in `workdir` (from /proc; other users'
    processes whose directory cannot be read are not counted)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if cwd == workdir and is_snakemake(argv):
            found.append(int(entry.name))
    return sorted(found)


def unlock_stale(snakemake: str, args: list[str], workdir: str | os.PathLike = ".") -> int:
    """0 when there is no lock or a stale one was removed; 1, with what to run, when a live Snakemake holds it."""
    workdir = Path(workdir).resolve()
    if not held_locks(workdir):
        return 0
    unlock = [snakemake, *args, "--unlock"]
    if pids := snakemakes_in(workdir):
        listed = " ".join(map(str, pids))
        print(f"{workdir}: Snakemake is running here (pid {listed}) and holds its lock: let it finish, or stop it "
              f"(kill {listed}) and run: {shlex.join(unlock)}", file=sys.stderr)
        return 1
    print(f"{workdir}: a stale Snakemake lock (no Snakemake process runs here on this machine; the last run was "
          f"killed): removing it with: {shlex.join(unlock)}", file=sys.stderr, flush=True)
    done = subprocess.run(unlock, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        print(f"{workdir}: the unlock failed ({done.stderr.strip().splitlines()[-1:] or done.returncode}); run it "
              f"yourself: {shlex.join(unlock)}", file=sys.stderr)
    return done.returncode


def run(args) -> int:
    rest = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    return unlock_stale(args.snakemake, rest)


def register(subparsers) -> None:
    parser = subparsers.add_parser("unlock-stale", help="remove the lock a killed Snakemake left in this directory",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--snakemake", default="snakemake", help="the Snakemake to run --unlock with")
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                        help="after --: the arguments of the run (profile, config file), for the unlock")
    parser.set_defaults(func=run)
