from pathlib import Path

import pytest
import yaml

from microdit.workflow import placeholders

REPO = Path(__file__).resolve().parents[2]


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
