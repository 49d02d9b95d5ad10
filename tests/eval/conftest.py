"""Fixtures for the evaluation tests: the real GenEval metadata and the offline feature network."""
import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("MICRODIT_SHARED", Path(__file__).resolve().parents[3] / "shared"))


@pytest.fixture(scope="session")
def geneval_metadata() -> Path:
    path = SHARED / "geneval" / "evaluation_metadata.jsonl"
    if not path.is_file():
        pytest.fail(f"GenEval metadata not found at {path} (set MICRODIT_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def efficientnet_extractor():
    from microdit.eval.fid import build_extractor

    return build_extractor("efficientnet-lite0", "clean", "cpu")
