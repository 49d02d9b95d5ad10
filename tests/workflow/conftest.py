from pathlib import Path

import pytest
import yaml

from microdit.workflow import placeholders

REPO = Path(__file__).resolve().parents[2]

# creates what each command declares, nothing else: enough for Snakemake to see a finished run
FAKE_MICRODIT = r'''#!/usr/bin/env python3
import json, os, sys
command, args = sys.argv[1], sys.argv[2:]
def value(option):
    return args[args.index(option) + 1]
def write(path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    open(path, "w").write(" ".join(sys.argv))
if command in ("convert", "train-vae", "train-clip"):
    os.makedirs(value("--out"), exist_ok=True)
elif command == "download":
    write(value("--summary"))
elif command in ("precompute", "merge-parts"):
    write(os.path.join(value("--out"), "index.json"))
elif command in ("generate", "geneval-generate", "merge-samples", "reference-images"):
    write(os.path.join(value("--out"), "generation.json"))
elif command == "fid-stats":
    write(value("--out"))
    write(value("--halves"))
elif command == "score-shapes":
    write(value("--out"))
    write(value("--results"))
elif command == "train":
    folder = json.loads(next(a for a in args if a.startswith("out_dir=")).partition("=")[2])
    for name in ("final.safetensors", "ema.safetensors", "train_stats.json", "stage.yaml", "metrics.jsonl"):
        write(os.path.join(folder, name))
else:
    write(value("--out"))
'''


@pytest.fixture
def stand_in_microdit(tmp_path) -> Path:
    """A folder holding FAKE_MICRODIT as `microdit`, to put first on PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "microdit").write_text(FAKE_MICRODIT)
    (folder / "microdit").chmod(0o755)
    return folder


@pytest.fixture
def paper_filled(tmp_path) -> Path:
    """An overlay on config/paper.yaml that fills each of its <...> placeholders (a partition name, else a path
    under tmp_path): `--configfile config/paper.yaml <overlay>` then plans."""
    overlay: dict = {}
    for key, _ in placeholders(yaml.safe_load((REPO / "config" / "paper.yaml").read_text())):
        *parents, last = key.split(".")
        section = overlay
        for name in parents:
            section = section.setdefault(name, {})
        section[last] = "gpu" if last == "partition" else str(tmp_path / "filled" / key)
    path = tmp_path / "paper_filled.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path
