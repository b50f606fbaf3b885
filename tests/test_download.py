"""The downloader, against a local HTTP server on 127.0.0.1 serving generated IDX files (no
other host is ever contacted: the md5 table is pointed at the generated files)."""
import gzip
import hashlib
import shutil
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from vaelab.data import download_dataset, load_dataset
from vaelab.data import datasets as datasets_mod
from vaelab.data import download as download_mod
from vaelab.errors import VaelabError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx_gz(arr: np.ndarray) -> bytes:
    """uint8 array -> gzipped IDX bytes (0, 0, 0x08, ndim, big-endian sizes, data)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return gzip.compress(header + arr.tobytes(), mtime=0)


def make_files(n_train=30, n_test=10, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = idx_gz(
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = idx_gz(
            rng.integers(0, 10, size=n, dtype=np.uint8))
    return files


FAKE = make_files()


class Handler(BaseHTTPRequestHandler):
    """Serves ``files`` under /mnist/; a name in ``short`` gets its real Content-Length but
    only half its bytes before the connection is closed."""

    files: dict[str, bytes] = {}
    short: set[str] = set()
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        body = self.files.get(name) if self.path.startswith("/mnist/") else None
        if body is None:
            self.send_error(404, "File not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if name in self.short else body)
        self.close_connection = True

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(monkeypatch):
    """A local server with fresh per-test state; yields its base URL for mnist."""
    # A proxy from the environment must not see requests meant for 127.0.0.1.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setattr(Handler, "files", dict(FAKE))
    monkeypatch.setattr(Handler, "short", set())
    monkeypatch.setattr(Handler, "requests", [])
    monkeypatch.setitem(download_mod.MD5, "mnist",
                        {f: hashlib.md5(FAKE[f]).hexdigest() for f in FILES})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.delenv("VAELAB_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(datasets_mod, "SYSTEM_DIRS", {})
    return tmp_path


def test_download_then_load(server, isolated):
    folder = download_dataset("mnist", isolated / "root", base_url=server + "/mnist/",
                              progress=False)
    assert folder == isolated / "root" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    for f in FILES:
        assert (folder / f).read_bytes() == FAKE[f]
    ds = load_dataset("mnist", isolated / "root", val_size=0)
    assert ds.train.x.shape == (30, 1, 28, 28) and ds.test.x.shape == (10, 1, 28, 28)
    assert ds.source == str(folder)
    assert torch.equal(ds.test.y, torch.from_numpy(
        np.frombuffer(gzip.decompress(FAKE[FILES[3]])[8:], np.uint8).astype(np.int64)))


def test_base_url_without_slash_and_good_files_kept(server, isolated):
    folder = isolated / "root" / "mnist"
    folder.mkdir(parents=True)
    (folder / FILES[0]).write_bytes(FAKE[FILES[0]])    # already there and right: kept
    (folder / FILES[1]).write_bytes(b"stale partial")  # already there but wrong: replaced
    download_dataset("mnist", isolated / "root", base_url=server + "/mnist", progress=False)
    assert Handler.requests == [f"/mnist/{f}" for f in FILES[1:]]
    assert (folder / FILES[1]).read_bytes() == FAKE[FILES[1]]


def test_load_dataset_download_flag_uses_mirror_and_first_root(server, isolated, monkeypatch):
    monkeypatch.setenv("VAELAB_MIRROR", server)  # a root with one folder per dataset
    with pytest.raises(VaelabError, match="--download"):
        load_dataset("mnist")
    ds = load_dataset("mnist", download=True)
    # No --data-dir and no $VAELAB_DATA: the user's data folder, not ./data.
    assert ds.source == str(isolated / "xdg" / "vaelab" / "mnist")
    assert len(ds.train) + len(ds.val) == 30
    assert not (isolated / "data").exists()
    n_requests = len(Handler.requests)
    load_dataset("mnist", download=True)  # found now: nothing fetched again
    assert len(Handler.requests) == n_requests
    ds = load_dataset("mnist", isolated / "flag", download=True)
    assert ds.source == str(isolated / "flag" / "mnist")
    shutil.rmtree(isolated / "xdg")  # else that copy would be found, and nothing fetched
    monkeypatch.setenv("VAELAB_DATA", str(isolated / "env"))
    ds = load_dataset("mnist", download=True)
    assert ds.source == str(isolated / "env" / "mnist")


def _assert_failed_cleanly(err, folder, filename, url):
    msg = str(err.value)
    assert filename in msg and url in msg
    assert list(folder.iterdir()) == []  # neither the file nor a temporary one


def test_corrupted_file_is_discarded(server, isolated):
    bad = bytearray(FAKE[FILES[0]])
    bad[len(bad) // 2] ^= 0xFF
    Handler.files[FILES[0]] = bytes(bad)
    with pytest.raises(VaelabError, match="md5") as err:
        download_dataset("mnist", isolated / "root", base_url=server + "/mnist/", progress=False)
    good_md5, bad_md5 = hashlib.md5(FAKE[FILES[0]]).hexdigest(), hashlib.md5(bad).hexdigest()
    assert good_md5 in str(err.value) and bad_md5 in str(err.value)
    _assert_failed_cleanly(err, isolated / "root" / "mnist", FILES[0],
                           f"{server}/mnist/{FILES[0]}")


def test_connection_closed_early_is_discarded(server, isolated):
    Handler.short.add(FILES[0])
    with pytest.raises(VaelabError, match="stopped after") as err:
        download_dataset("mnist", isolated / "root", base_url=server + "/mnist/", progress=False)
    assert hashlib.md5(FAKE[FILES[0]]).hexdigest() in str(err.value)
    _assert_failed_cleanly(err, isolated / "root" / "mnist", FILES[0],
                           f"{server}/mnist/{FILES[0]}")


def test_truncated_file_is_discarded(server, isolated):
    # The server is consistent (Content-Length of what it sends), but the file is cut short:
    # only the md5 can tell.
    Handler.files[FILES[0]] = FAKE[FILES[0]][:-100]
    with pytest.raises(VaelabError, match="md5") as err:
        download_dataset("mnist", isolated / "root", base_url=server + "/mnist/", progress=False)
    _assert_failed_cleanly(err, isolated / "root" / "mnist", FILES[0],
                           f"{server}/mnist/{FILES[0]}")


def test_missing_file_on_server(server, isolated):
    del Handler.files[FILES[0]]
    with pytest.raises(VaelabError, match="404") as err:
        download_dataset("mnist", isolated / "root", base_url=server + "/mnist/", progress=False)
    _assert_failed_cleanly(err, isolated / "root" / "mnist", FILES[0],
                           f"{server}/mnist/{FILES[0]}")


def test_unreachable_server(isolated, monkeypatch):
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    with socket.socket() as s:  # a port that was free a moment ago, now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mnist/"
    with pytest.raises(VaelabError, match="could not download") as err:
        download_dataset("mnist", isolated / "root", base_url=url, progress=False)
    _assert_failed_cleanly(err, isolated / "root" / "mnist", FILES[0], url + FILES[0])


def test_only_idx_datasets_download(isolated):
    with pytest.raises(VaelabError, match="digits"):
        download_dataset("digits", isolated / "root", progress=False)


def test_official_md5_table():
    # A typo here would make every real download fail: pin the published values.
    assert download_mod.MD5["mnist"]["train-images-idx3-ubyte.gz"] == \
        "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert download_mod.MD5["fashion-mnist"]["t10k-labels-idx1-ubyte.gz"] == \
        "bb300cfdad3c16e7a12a480ee83cd310"
    for table in download_mod.MD5.values():
        assert list(table) == list(FILES)
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in table.values())
