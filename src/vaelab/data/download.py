"""Download the official IDX files of MNIST and Fashion-MNIST, verified by md5.

Each file is streamed into a temporary file in the target folder and renamed into place only
once its md5 matches the published one, so an interrupted or corrupted download never leaves
a file that looks complete.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path

from vaelab.errors import VaelabError

# Where each dataset is published. A mirror (the ``base_url`` argument) must serve the same
# file names; $VAELAB_MIRROR names a root holding one folder per dataset, like a data root.
BASE_URLS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

# md5 of each published .gz file. MNIST: the official md5s (as torchvision checks them);
# Fashion-MNIST: Zalando's list in github.com/zalandoresearch/fashion-mnist.
# Module-level so that tests can point it at files they generate.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

MIRROR_ENV = "VAELAB_MIRROR"
_CHUNK = 1 << 16
_TIMEOUT_S = 60


def download_dataset(name: str, root: str | os.PathLike, base_url: str | None = None,
                     progress: bool = True) -> Path:
    """Fetch the 4 IDX files of ``name`` into ``<root>/<name>/`` and return that folder.

    The files come from ``base_url`` if given, else from ``$VAELAB_MIRROR/<name>/`` if that is
    set, else from the official site. A file already there with the right md5 is kept. A file
    whose md5 does not match is discarded and raises :class:`VaelabError`, as do network errors.
    ``progress`` shows a progress bar on stderr.
    """
    if name not in MD5:
        raise VaelabError(f"{name!r} cannot be downloaded: the downloadable datasets are "
                          f"{', '.join(sorted(MD5))}.")
    base = _base_url(name, base_url)
    folder = Path(root).expanduser() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"cannot create the download folder {folder}: "
                          f"{e.strerror or e}.") from None
    for filename, md5 in MD5[name].items():
        dest = folder / filename
        if dest.is_file() and file_md5(dest) == md5:
            continue  # a verified copy is already here; fetching it again would only cost time
        _fetch_verified(base + filename, dest, md5, progress)
    return folder


def file_md5(path: Path) -> str:
    """Hex md5 of a file's bytes, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _base_url(name: str, base_url: str | None) -> str:
    if base_url is None:
        mirror = os.environ.get(MIRROR_ENV)
        base_url = f"{mirror.rstrip('/')}/{name}/" if mirror else BASE_URLS[name]
    # Without the slash, joining "…/mnist" and a file name would drop the last path segment.
    return base_url if base_url.endswith("/") else base_url + "/"


def _fetch_verified(url: str, dest: Path, md5: str, progress: bool) -> None:
    """Stream ``url`` into a temporary file beside ``dest``; rename it to ``dest`` only if its
    md5 is ``md5``. On any failure the temporary file is removed."""
    # A hidden, uniquely named file in the same folder: os.replace is then an atomic rename,
    # and two concurrent downloads cannot write into the same temporary file.
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        got_md5, got, length = _stream(url, tmp, dest.name, progress)
        if length is not None and got < length:
            raise VaelabError(f"the download of {dest.name} from {url} stopped after {got} of "
                              f"{length} bytes (md5 {got_md5}, expected {md5}); it was discarded, "
                              f"try again.")
        if got_md5 != md5:
            raise VaelabError(f"{dest.name} downloaded from {url} has md5 {got_md5}, expected "
                              f"{md5}; it was discarded (a corrupt or truncated download, or a "
                              f"mirror serving other files).")
        os.replace(tmp, dest)
    finally:
        # Also on KeyboardInterrupt: nothing partial may stay behind.
        tmp.unlink(missing_ok=True)


def _stream(url: str, tmp: Path, label: str, progress: bool) -> tuple[str, int, int | None]:
    """Write the body of ``url`` to ``tmp``; return (md5, bytes received, Content-Length)."""
    h = hashlib.md5()
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            length = _content_length(resp)
            # 0o666 and the umask, as for any file the user creates (mkstemp would give 0o600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as out, _progress_bar(label, length, progress) as bar:
                for chunk in _chunks(resp):
                    h.update(chunk)
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        e.close()  # it holds the connection; dropped unclosed, its socket is left to the collector
        raise VaelabError(f"could not download {url}: the server answered HTTP {e.code} "
                          f"{e.reason}.") from None
    except urllib.error.URLError as e:
        raise VaelabError(f"could not download {url}: {e.reason}.") from None
    except (OSError, http.client.HTTPException) as e:
        # Timeouts, resets and protocol errors in the middle of the body.
        raise VaelabError(f"could not download {url}: {e or type(e).__name__}.") from None
    return h.hexdigest(), got, length


def _chunks(resp):
    """The body in chunks, ending quietly at a connection closed early: the caller then sees a
    short read (fewer bytes than Content-Length, and a wrong md5) and says so."""
    while True:
        try:
            chunk = resp.read(_CHUNK)
        except http.client.IncompleteRead as e:
            if e.partial:
                yield e.partial
            return
        if not chunk:
            return
        yield chunk


def _content_length(resp) -> int | None:
    value = resp.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _progress_bar(label: str, total: int | None, enabled: bool):
    from tqdm import tqdm  # imported here so that importing vaelab.data stays cheap

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                file=sys.stderr, disable=not enabled, leave=False)
