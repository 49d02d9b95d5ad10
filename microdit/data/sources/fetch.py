"""Network access for sources: plain HTTP files and Hugging Face hub files."""
import contextlib
import logging
import os
import shutil
from pathlib import Path

from microdit.files import atomic_write
from microdit.errors import UserError

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"


def public_url(url: str) -> str:
    """The link as it may be logged: signed links (SA-1B's) carry credentials in the query."""
    return url.split("?")[0]


@contextlib.contextmanager
def http_stream(url: str, timeout: float = 60.0):
    """A streamed GET (the response); a failed request or a broken transfer is a one-line error naming the link
    without its query (requests' own messages quote the whole URL)."""
    import requests
    import urllib3

    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            yield response
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:  # urllib3's: a broken transfer
        status = getattr(err.response, "status_code", None)
        reason = f"HTTP {status}" if status else type(err).__name__
        raise UserError(f"{public_url(url)}: download failed ({reason})") from None


def http_download(url: str, dest: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Stream url into dest (temp file, then rename); an existing dest is kept, so reruns resume per file."""
    dest = Path(dest)
    if dest.is_file():
        return dest

    def write(tmp: str) -> None:
        with http_stream(url, timeout) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response.raw, f, length=1 << 20)

    log.info("downloading %s", public_url(url))
    atomic_write(dest, write)
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
