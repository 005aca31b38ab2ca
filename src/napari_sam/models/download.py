"""Checkpoint downloads: verified, cached, atomic, with a progress bar.

Built on pooch (the scientific-Python standard for fetching data files):

- the file is streamed into a temporary file *in the cache folder*, its
  checksum checked, and only then renamed to its final name (an atomic
  rename): an interrupted or corrupt download never leaves a file that looks
  complete, and a checksum mismatch deletes the temporary file;
- a cached file is re-verified against the published checksum each time it
  is used, and re-downloaded if it does not match;
- for checkpoints whose authors publish no checksum, the SHA-256 of the first
  download is recorded beside the file (``<name>.sha256``) and checked on
  every later use (trust on first use: this catches a corrupted or swapped
  cache file, not a file that was wrong from the start);
- the cache folder is ``$NAPARI_SAM_MODEL_DIR`` if set, else the user cache
  (``~/.cache/napari-sam/models`` on Linux, via ``pooch.os_cache``).

Every failure is a one-line :class:`~napari_sam.errors.ModelError` that says
what to do: offline -> download elsewhere and pass ``--checkpoint PATH``;
read-only cache -> set ``NAPARI_SAM_MODEL_DIR``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelError
from .checkpoints import sha256_of

#: environment variable that overrides the cache folder
CACHE_ENV = "NAPARI_SAM_MODEL_DIR"


def model_cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$NAPARI_SAM_MODEL_DIR`` or the user cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam")) / "models"


def _split_hash(known_hash: str | None) -> tuple[str, str] | None:
    if not known_hash:
        return None
    algo, _, value = known_hash.partition(":")
    return (algo.lower(), value.lower()) if value else ("sha256", algo.lower())


def _check_writable(directory: Path) -> None:
    """Raise ModelError unless a file can be created in ``directory`` (created if missing)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ModelError(
            f"model cache {directory} is not writable ({exc.strerror or type(exc).__name__}); "
            f"set {CACHE_ENV} to a writable folder, or pass --checkpoint PATH"
        ) from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _network_reason(exc: BaseException) -> str:
    """A few words for why a connection failed (requests' messages are a page long)."""
    text = str(exc)
    for needle, reason in (
        ("NameResolution", "cannot resolve the host name"),
        ("Name or service not known", "cannot resolve the host name"),
        ("Temporary failure in name resolution", "cannot resolve the host name"),
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Timeout", "timed out"),
        ("Network is unreachable", "network unreachable"),
        ("SSLError", "TLS error"),
        ("ProxyError", "proxy error"),
    ):
        if needle in text or needle in type(exc).__name__:
            return reason
    return type(exc).__name__


def _verify_recorded(path: Path) -> None:
    """Check a file against the SHA-256 recorded at its download, if any."""
    record = path.with_name(path.name + ".sha256")
    if not record.is_file():
        return
    expected = record.read_text().split()[0].strip().lower()
    actual = sha256_of(path)
    if actual != expected:
        raise ModelError(
            f"{path}: SHA-256 {actual[:16]}... differs from {expected[:16]}... recorded when it was "
            "downloaded; the cached file is corrupt or was replaced: delete it to download it again"
        )


def _record(path: Path) -> str:
    digest = sha256_of(path)
    record = path.with_name(path.name + ".sha256")
    tmp = record.with_name(record.name + ".tmp")
    try:
        tmp.write_text(f"{digest}  {path.name}\n")
        os.replace(tmp, record)
    except OSError:  # the checkpoint itself is fine; only the record could not be written
        pass
    return digest


def fetch(
    url: str,
    filename: str,
    known_hash: str | None,
    *,
    directory: str | Path | None = None,
    progress: bool = True,
    what: str | None = None,
) -> Path:
    """Download ``url`` into the model cache as ``filename`` (once) and return its path.

    known_hash: "sha256:<hex>", "xxh128:<hex>" (needs the ``xxhash``
        package) or a bare SHA-256; None when none is published (the SHA-256
        of the first download is then recorded and checked afterwards).
    directory: cache folder (default :func:`model_cache_dir`).
    progress: show a tqdm progress bar on stderr while downloading.
    what: a name for messages (default ``filename``).
    Raises ModelError when offline, on HTTP errors, on a checksum mismatch
    (the download is deleted) or when the cache folder is not writable.
    """
    what = what or filename
    folder = Path(directory) if directory is not None else model_cache_dir()
    target = folder / filename
    parsed = _split_hash(known_hash)
    if not target.exists():
        _check_writable(folder)
    elif parsed is None:
        _verify_recorded(target)
        return target
    path = _retrieve(url, folder, filename, parsed, progress, what)
    if parsed is None:
        _record(path)
    return path


def _retrieve(url: str, folder: Path, filename: str, parsed: tuple[str, str] | None, progress: bool, what: str) -> Path:
    """Download ``url`` to ``folder / filename`` through pooch, checked against
    ``parsed`` (algorithm, hex digest) when known; its failures as one-line ModelErrors."""
    import pooch
    import requests

    target = folder / filename
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")  # pooch logs every download at INFO; our progress bar says enough
    try:
        pooch_hash = f"{parsed[0]}:{parsed[1]}" if parsed else None
        return Path(pooch.retrieve(url, known_hash=pooch_hash, fname=filename, path=folder, progressbar=progress))
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise ModelError(f"could not download {what}: HTTP {code} from {url}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        host = urlparse(url).hostname or url
        raise ModelError(
            f"could not download {what} from {host}: no network connection ({_network_reason(exc)}); "
            f"download {url} on a connected machine and pass --checkpoint PATH, "
            f"or copy it to {target}"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise ModelError(f"could not download {what} from {url}: {_short(exc)}") from None
    except ValueError as exc:  # pooch: checksum mismatch (temporary file already deleted) or unknown algorithm
        message = _short(exc)
        if "xxhash" in message:
            raise ModelError(f"verifying {what} needs the 'xxhash' package: pip install xxhash") from None
        raise ModelError(
            f"download of {what} from {url} refused: checksum does not match the published "
            f"{parsed[0] if parsed else ''} {parsed[1][:16] if parsed else ''}...; "
            "the downloaded file was deleted"
        ) from None
    except OSError as exc:
        raise ModelError(
            f"could not write {what} to {folder}: {exc.strerror or _short(exc)}; set {CACHE_ENV} "
            "to a writable folder, or pass --checkpoint PATH"
        ) from None
    finally:
        logger.setLevel(level)
