"""docs/config.md names every key the schema accepts, so the reference cannot fall behind the configs."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def schema_keys(node: dict, prefix: str = ""):
    """Dotted paths of every property in a JSON schema; `<name>` stands for a free mapping key."""
    for key, sub in (node.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(sub, dict):
            yield from schema_keys(sub, path)
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_keys(node["additionalProperties"], f"{prefix}.<name>")


def undocumented(schema: dict, doc: str) -> list[str]:
    """Keys whose last part is on no reference line of their top-level section (`- \\`section...`)."""
    lines = [line for line in doc.splitlines() if line.startswith("- `")]
    return [path for path in schema_keys(schema)
            if not any(line.startswith(f"- `{path.split('.')[0]}") and path.split(".")[-1] in line for line in lines)]


def test_every_schema_key_has_a_line_in_docs_config():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    assert undocumented(schema, (REPO / "docs" / "config.md").read_text()) == []


def test_a_key_missing_from_the_reference_is_found():
    schema = {"properties": {"eval": {"properties": {"stage": {}, "parts": {}}}}}
    assert undocumented(schema, "- `eval.stage`: the stage evaluated.\n") == ["eval.parts"]
