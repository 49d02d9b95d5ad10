"""Network access for sources: plain HTTP files and Hugging Face hub files."""
import contextlib
import logging
import os
from pathlib import Path

from microdit.errors import UserError
from microdit.progress import progress

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"


def public_url(url: str) -> str:
    """The link as it may be logged: signed links (SA-1B's) carry credentials in the query."""
    return url.split("?")[0]


@contextlib.contextmanager
def http_stream(url: str, timeout: float = 60.0, start: int = 0):
    """A streamed GET (the response), from byte `start` on with a Range request (a server that ignores it answers
    200 with the whole file; one past the end answers 416); a failed request or a broken transfer is a one-line error
    naming the link without its query (requests' own messages quote the whole URL)."""
    import requests
    import urllib3

    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if not (start and response.status_code == 416):
                response.raise_for_status()
            yield response
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:  # urllib3's: a broken transfer
        status = getattr(getattr(err, "response", None), "status_code", None)  # urllib3 errors have none
        reason = f"HTTP {status}" if status else type(err).__name__
        raise UserError(f"{public_url(url)}: download failed ({reason})") from None


def http_download(url: str, dest: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Stream url into dest through .<dest>.partial, renamed once whole; an existing dest is kept (reruns resume per
    file) and a partial file left by a broken transfer is continued where the server honours a Range request."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    partial = dest.with_name(f".{dest.name}.partial")
    have = partial.stat().st_size if partial.is_file() else 0
    log.info("downloading %s%s", public_url(url), f" from byte {have}" if have else "")
    with http_stream(url, timeout, start=have) as response:
        if response.status_code == 416:  # nothing past `have`: whole only if the file is that long
            if response.headers.get("Content-Range") != f"bytes */{have}":
                partial.unlink()
                raise UserError(f"{public_url(url)}: {partial} is longer than the file; removed it, run again")
        else:
            if response.status_code != 206:  # the server sent the whole file
                have = 0
            size = response.headers.get("Content-Length")
            with open(partial, "ab" if have else "wb") as f, progress(
                    total=have + int(size) if size else None, initial=have, desc=dest.name, unit="B",
                    unit_scale=True, unit_divisor=1024) as bar:
                for chunk in iter(lambda: response.raw.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    os.replace(partial, dest)
    return dest


def hub_token(required: bool) -> str | None:
    """The Hugging Face token from the environment; its value is never printed or logged."""
    token = os.environ.get(TOKEN_ENV) or None
    if required and token is None:
        raise UserError(f"this dataset is gated: accept its terms on huggingface.co and export {TOKEN_ENV}=<token>")
    return token


@contextlib.contextmanager
def asking_hub(what: str):
    """What the hub client raises when the hub cannot be reached, refuses the request or breaks a transfer, as one
    line naming the dataset file; the client's own messages run to many lines of retries and URLs. A full disk is
    an OSError of another kind: the CLI reports it."""
    import requests
    import urllib3
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        yield
    except (requests.RequestException, urllib3.exceptions.HTTPError, OfflineModeIsEnabled) as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status:
            reason = f"HTTP {status}" + HTTP_HINTS.get(status, "")
        elif constants.HF_HUB_OFFLINE:
            reason = "offline mode is on (HF_HUB_OFFLINE): unset it to download"
        else:
            reason = f"the hub cannot be reached ({type(err).__name__})"
        raise UserError(f"hub dataset {what}: download failed ({reason})") from None


HTTP_HINTS = {401: ": not signed in; for a gated dataset export " + TOKEN_ENV,
              403: ": its terms not accepted on huggingface.co, or the token lacks access",
              404: ": no such dataset, file or revision"}


def hub_download(repo_id: str, filename: str, cache_dir: str | os.PathLike, token_required: bool = False,
                 revision: str | None = None) -> Path:
    """A dataset repo file through huggingface_hub (which resumes partial files itself)."""
    from huggingface_hub import hf_hub_download

    token = hub_token(token_required)
    with asking_hub(f"{repo_id}, file {filename}"):
        path = hf_hub_download(repo_id, filename, repo_type="dataset", local_dir=str(cache_dir), revision=revision,
                               token=token)
    return Path(path)


def hub_files(repo_id: str, token_required: bool = False, revision: str | None = None) -> list[str]:
    from huggingface_hub import HfApi

    token = hub_token(token_required)
    with asking_hub(f"{repo_id} (its file list)"):
        return HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision, token=token)
