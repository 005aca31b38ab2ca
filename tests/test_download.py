"""Checkpoint downloads against a local HTTP server on 127.0.0.1.

The server serves one small file and counts the requests it gets, so the
tests can show: a good checksum caches the file; a wrong one refuses it and
leaves nothing behind; a second call makes no request; offline and read-only
caches give one-line errors that say what to do.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from napari_sam.errors import ModelError
from napari_sam.models import download
from napari_sam.models.download import fetch, model_cache_dir

PAYLOAD = b"not really a checkpoint, but bytes to verify\n" * 1000
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.body = PAYLOAD
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                if self.path.startswith("/model.pt"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(owner.body)))
                    self.end_headers()
                    self.wfile.write(owner.body)
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = _Server()
    yield srv
    srv.close()


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_MODEL_DIR", str(tmp_path / "models"))
    assert model_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("NAPARI_SAM_MODEL_DIR")
    assert model_cache_dir().name == "models" and "napari-sam" in str(model_cache_dir())


def test_right_checksum_is_cached_and_second_call_makes_no_request(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_MODEL_DIR", str(tmp_path))
    path = fetch(f"{server.url}/model.pt", "model.pt", f"sha256:{SHA256}", progress=True)
    assert path == tmp_path / "model.pt" and path.read_bytes() == PAYLOAD
    assert server.requests == ["/model.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file left behind"
    again = fetch(f"{server.url}/model.pt", "model.pt", f"sha256:{SHA256}", progress=False)
    assert again == path and server.requests == ["/model.pt"], "the cached, verified file was downloaded again"


def test_wrong_checksum_is_refused_and_removed(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ModelError, match="checksum does not match.*the downloaded file was deleted") as err:
        fetch(f"{server.url}/model.pt", "model.pt", f"sha256:{wrong}", directory=tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [], "a refused download must leave nothing in the cache"
    assert server.requests == ["/model.pt"]


def test_corrupted_cache_is_detected_and_replaced(server, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"truncated")
    path = fetch(f"{server.url}/model.pt", "model.pt", SHA256, directory=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and server.requests == ["/model.pt"]


def test_xxh128_checksum(server, tmp_path):
    xxhash = pytest.importorskip("xxhash", reason="xxhash verifies micro-sam's published xxh128 checksums")
    good = xxhash.xxh128(PAYLOAD).hexdigest()
    fetch(f"{server.url}/model.pt", "a.pt", f"xxh128:{good}", directory=tmp_path, progress=False)
    with pytest.raises(ModelError, match="checksum does not match"):
        fetch(f"{server.url}/model.pt", "b.pt", "xxh128:" + "0" * 32, directory=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_unpublished_checksum_is_recorded_on_first_download(server, tmp_path):
    path = fetch(f"{server.url}/model.pt", "model.pt", None, directory=tmp_path, progress=False)
    record = tmp_path / "model.pt.sha256"
    assert record.read_text().split()[0] == SHA256
    assert fetch(f"{server.url}/model.pt", "model.pt", None, directory=tmp_path) == path
    assert server.requests == ["/model.pt"]
    path.write_bytes(PAYLOAD[:-1] + b"!")  # the cached file changes behind our back
    with pytest.raises(ModelError, match="differs from .* recorded when it was downloaded"):
        fetch(f"{server.url}/model.pt", "model.pt", None, directory=tmp_path)
    assert server.requests == ["/model.pt"]


def test_http_error(server, tmp_path):
    with pytest.raises(ModelError, match=r"could not download missing.pt: HTTP 404"):
        fetch(f"{server.url}/missing.pt", "missing.pt", SHA256, directory=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    """Nothing listens on the port: the same failure as being offline."""
    import socket

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelError) as err:
        fetch(f"http://127.0.0.1:{port}/model.pt", "model.pt", SHA256, directory=tmp_path, progress=False, what="vit_b")
    msg = str(err.value)
    assert msg.startswith("could not download vit_b from 127.0.0.1: no network connection")
    assert "--checkpoint PATH" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_error_says_what_to_do(server, tmp_path):
    """A cache folder that cannot be created (its parent is a file): no request is made."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelError, match=r"model cache .* is not writable .*set NAPARI_SAM_MODEL_DIR"):
        fetch(f"{server.url}/model.pt", "model.pt", SHA256, directory=blocker / "models", progress=False)
    assert server.requests == []


def test_read_only_cache_with_the_file_already_there_works(server, tmp_path, monkeypatch):
    """A verified file in a read-only cache is used as it is (nothing needs writing)."""
    fetch(f"{server.url}/model.pt", "model.pt", SHA256, directory=tmp_path, progress=False)

    def refuse(directory: Path) -> None:
        raise AssertionError("no write check needed for a cached file")

    monkeypatch.setattr(download, "_check_writable", refuse)
    assert fetch(f"{server.url}/model.pt", "model.pt", SHA256, directory=tmp_path).read_bytes() == PAYLOAD
    assert server.requests == ["/model.pt"]


def test_load_model_downloads_through_the_registry(server, tmp_path, monkeypatch):
    """load_model(name) fetches the registry's URL into $NAPARI_SAM_MODEL_DIR and verifies it."""
    import dataclasses

    import torch
    from torch import nn

    from napari_sam.models import mobile_sam
    from napari_sam.models import registry as reg

    torch.manual_seed(0)
    state = nn.ModuleDict(mobile_sam.build_mobile_sam_modules()).state_dict()
    ckpt = tmp_path / "served.pt"
    torch.save(state, ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    server.body = ckpt.read_bytes()
    spec = dataclasses.replace(reg.REGISTRY["vit_t"], url=f"{server.url}/model.pt", sha256=digest)
    monkeypatch.setitem(reg.REGISTRY, "vit_t", spec)
    monkeypatch.setenv("NAPARI_SAM_MODEL_DIR", str(tmp_path / "cache"))
    backend = reg.load_model("vit_t", progress=False)
    assert backend.name == "vit_t" and (tmp_path / "cache" / "mobile_sam.pt").is_file()
    reg.load_model("vit_t", progress=False)
    assert server.requests == ["/model.pt"]
    bad = dataclasses.replace(spec, sha256="f" * 64, filename="other.pt")
    monkeypatch.setitem(reg.REGISTRY, "vit_t", bad)
    with pytest.raises(ModelError, match="checksum does not match"):
        reg.load_model("vit_t", progress=False)
    assert not (tmp_path / "cache" / "other.pt").exists()


def test_cli_download_and_models(server, tmp_path, monkeypatch, capsys):
    """`napari-sam download NAME` fills the cache; `napari-sam models` then says "cached"."""
    import dataclasses

    from napari_sam.cli import main
    from napari_sam.models import registry as reg

    spec = dataclasses.replace(reg.REGISTRY["vit_b_lm"], url=f"{server.url}/model.pt", sha256=SHA256, checksum=None)
    monkeypatch.setitem(reg.REGISTRY, "vit_b_lm", spec)
    monkeypatch.setenv("NAPARI_SAM_MODEL_DIR", str(tmp_path))
    assert main(["download", "vit_b_lm", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"vit_b_lm: {tmp_path / 'vit_b_lm.pt'}"
    assert main(["download", "vit_b_lm", "--quiet"]) == 0 and server.requests == ["/model.pt"]
    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "cached" in lines["vit_b_lm"] and "download" in lines["vit_b"] and "embedded" in lines["lite_medsam"]
    assert main(["download", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
