"""File helpers every step shares. Writes go to a temporary file (or folder) in the same directory and are renamed
into place, so a crash never leaves half a file."""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from microdit.errors import UserError


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then rename tmp_path onto path. The data reach the disk before the rename, and the
    rename before this returns: callers delete what the file replaces (older checkpoints), and after a node crash
    the new name must not point at a file whose blocks were never written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # results are shared like any new file: mkstemp makes the file private, and some writers replace it with
        # a private file of their own (safetensors)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    sync_folder(path.parent)


def atomic_folder(path: str | os.PathLike, fill, replace: bool = False) -> None:
    """Call fill(staging folder), then rename it onto `path` (absent or empty; with `replace`, any folder there is
    removed only once fill has succeeded), so the folder is complete or absent. What fill wrote gets the umask's
    permissions, as atomic_write's files do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(staging)
        mask = current_umask()
        for item in [staging, *staging.rglob("*")]:
            if not item.is_symlink():
                os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
        if replace and path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sync_folder(path.parent)


def current_umask() -> int:
    """Read where Linux shows it; setting it to read it back would briefly change it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (some filesystems cannot sync a folder: then there is nothing to do)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(obj, path: str | os.PathLike) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not a valid {what} ({err})") from None


def read_yaml(path: str | os.PathLike, what: str):
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the {what} ({str(err).splitlines()[0]})") from None


def read_jsonl(path: str | os.PathLike, what: str = "JSON lines file") -> list:
    """One object per non-empty line; a broken line is an error naming the file and the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not a JSON line ({err.msg})") from None
    return rows


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_identity(name: str):
    """A model named by a local file or directory (an `hf:` directory included) by its files' contents: a VAE
    retrained in place is another model. A hub id or a built-in name is its own identity."""
    path = Path(name.removeprefix("hf:"))
    if not path.exists():
        return name
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.relative_to(path)) if f != path else f.name: sha256_file(f) for f in files}


def fingerprint(settings) -> str:
    """sha256 of settings (plain JSON values), independent of key order."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


SETTINGS_MARKER = ".settings.sha256"  # in a claimed folder: the fingerprint of the settings it belongs to


def claim_folder(folder: str | os.PathLike, digest: str, marker: str = SETTINGS_MARKER) -> Path | None:
    """Make a resumable step's output folder belong to the settings whose fingerprint is `digest`. A rerun skips
    what the folder already holds, so what other settings made there (the user changed a seed, the input, the
    checkpoint, ...) must not be taken for finished work: the folder is moved aside to `<folder>.stale-<time>`,
    never deleted, and starts empty. Returns where the old contents went, or None."""
    folder = Path(folder)
    mark = folder / marker
    stale = None
    if folder.is_dir() and any(p.name != marker for p in folder.iterdir()) and not is_claimed(folder, digest, marker):
        stale = move_aside(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not is_claimed(folder, digest, marker):
        atomic_write(mark, lambda tmp: Path(tmp).write_text(digest))
    return stale


def is_claimed(folder: str | os.PathLike, digest: str, marker: str = SETTINGS_MARKER) -> bool:
    mark = Path(folder) / marker
    return mark.is_file() and mark.read_text().strip() == digest


def move_aside(folder: str | os.PathLike) -> Path:
    """Rename `folder` to `<folder>.stale-<time>` (kept for the user, out of the way of the step that reruns)."""
    folder = Path(folder)
    name = f"{folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    stale, count = folder.with_name(name), 1
    while stale.exists():  # set aside twice within a second
        stale, count = folder.with_name(f"{name}-{count}"), count + 1
    folder.rename(stale)
    return stale
