"""SA-1B images with the PixArt LLaVA captions. Meta's tar links are signed and expire, so the user supplies the
current link list (file_name<TAB>cdn_link per line, as Meta serves it). Each tar is streamed from the network and
repacked on the fly into one shard, keeping only images that have a caption: no 11 GB temporary copies."""
import fcntl
import logging
import tarfile
from pathlib import Path
from typing import Callable

from microdit.data.sources.common import (iter_tar_images, run_shards, select_part, select_subset,
                                          write_paired_shard)
from microdit.errors import UserError

log = logging.getLogger(__name__)

HELP = "SA-1B (user-supplied tar link list) with LLaVA captions from PixArt-alpha/SAM-LLaVA-Captions10M"
CAPTIONS_REPO = "PixArt-alpha/SAM-LLaVA-Captions10M"
CAPTIONS_FILE = "SA1B_caption.tar.gz"


def add_arguments(parser) -> None:
    parser.add_argument("--links", required=True, help="Meta's SA-1B link list (file_name<TAB>cdn_link lines)")
    parser.add_argument("--captions", required=True,
                        help="directory of <image stem>.txt captions; fetched from the hub when it has none")


def parse_links(path: str) -> list[tuple[str, str]]:
    """[(tar file name, url)]; the header line and blank lines are skipped, anything else malformed is an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: unreadable link list ({err})") from None
    links = []
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if not line.strip() or fields[0] == "file_name":
            continue
        if len(fields) != 2 or not fields[0].endswith(".tar") or not fields[1].startswith("http"):
            raise UserError(f"{path}:{number}: expected 'sa_NNNNNN.tar<TAB>https://...', got {line[:80]!r}")
        links.append((fields[0], fields[1]))
    if not links:
        raise UserError(f"{path}: no links")
    return links


def caption_lookup(captions_dir: str) -> Callable[[str], str | None]:
    """stem -> caption text from <dir>/<stem>.txt; missing, empty or non-UTF-8 files give None (counted skip)."""
    root = Path(captions_dir)

    def caption_for(stem: str) -> str | None:
        try:
            text = (root / f"{stem}.txt").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text or None

    return caption_for


CAPTIONS_DONE = ".unpacked"  # written once every caption file is out: an interrupted unpack is redone whole


def fetch_captions(captions_dir: str) -> None:
    """Download and unpack the caption archive flat into captions_dir (once). A directory of captions the user
    made (no archive fetched) is used as it is. The parts of a download run as parallel jobs that share the folder:
    one fetches and unpacks, the others wait for it (a lock file beside the folder) and then find it done."""
    root = Path(captions_dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(f".{root.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        unpack_captions(root)


def unpack_captions(root: Path) -> None:
    from microdit.data.sources.fetch import hub_download

    archive_dir = root / "_archive"
    if (root / CAPTIONS_DONE).exists() or (
            root.is_dir() and not archive_dir.exists() and next(root.glob("*.txt"), None) is not None):
        return
    archive = hub_download(CAPTIONS_REPO, CAPTIONS_FILE, archive_dir)
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".txt"):
                member.name = Path(member.name).name  # flat: <stem>.txt directly under captions_dir
                tar.extract(member, root, filter="data")
    (root / CAPTIONS_DONE).touch()
    archive.unlink()


def stream_shard(out: Path, shard_id: int, url: str, caption_for) -> dict:
    """One archive, read as it arrives (never stored whole), with the bytes read as its progress."""
    from tqdm.utils import CallbackIOWrapper

    from microdit.data.sources.fetch import http_stream, public_url
    from microdit.progress import progress

    with http_stream(url) as response, progress(
            total=int(response.headers.get("Content-Length") or 0) or None, desc=f"sa_{shard_id:06d}.tar", unit="B",
            unit_scale=True, unit_divisor=1024) as bar:
        archive = CallbackIOWrapper(bar.update, response.raw, "read")
        return write_paired_shard(out, shard_id, iter_tar_images(archive, public_url(url)), caption_for)


def archive_number(file_name: str) -> int:
    """sa_000020.tar -> 20: a shard's id, so that a fresh link list (Meta's links expire) in any order resumes."""
    digits = file_name.removeprefix("sa_").removesuffix(".tar")
    if not digits.isdigit():
        raise UserError(f"--links: {file_name!r} is not an SA-1B archive name (sa_NNNNNN.tar)")
    return int(digits)


def download(args) -> dict:
    urls = {archive_number(name): url for name, url in parse_links(args.links)}
    shard_ids = select_part(select_subset(sorted(urls), args.subset), args)
    fetch_captions(args.captions)
    caption_for = caption_lookup(args.captions)
    out = Path(args.out)
    return run_shards(out, shard_ids, lambda i: stream_shard(out, i, urls[i], caption_for))
