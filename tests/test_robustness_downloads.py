"""Issue 9, items 6 and 16: downloads never cache a truncated file or an HTML page, only https (and
file:// mirrors) are fetched, cache file names stay inside the cache, concurrent downloads of one file
fetch it once, and AST's ImageNet (DeiT) weights come through the same cache and fail fast offline.

The HTTP tests run a server on 127.0.0.1 in a thread; plain http is allowed for them only through the
test/local-mirror escape EFFICIENT_TAGGING_ALLOW_HTTP_LOCALHOST=1 (localhost addresses only).
"""
from __future__ import annotations

import io
import threading
import time
import urllib.error
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from efficient_tagging import get_model, hub
from efficient_tagging.labels import AUDIOSET_LABELS_FILENAME, AUDIOSET_LABELS_URL, audioset_labels
from efficient_tagging.models import ast as ast_module
from efficient_tagging.models.ast import MODEL_SIZES, ASTSize

ALLOW_HTTP = "EFFICIENT_TAGGING_ALLOW_HTTP_LOCALHOST"


def _torch_bytes(obj=None) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj if obj is not None else {"weight": torch.arange(2000, dtype=torch.float32)}, buffer)
    return buffer.getvalue()


def _offline(monkeypatch) -> list:
    """Make every network request fail at once, as on a machine without a network; returns the attempts."""
    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(hub.urllib.request, "urlopen", offline)
    return attempts


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server: `routes[path] = (body, headers, delay_s)`; `requests` lists the GETs it got."""
    monkeypatch.setenv(ALLOW_HTTP, "1")
    routes: dict = {}
    requests: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            body, headers, delay = routes[self.path]
            time.sleep(delay)
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)  # HTTP/1.0: the connection closes after the body

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", routes=routes, requests=requests)
    httpd.shutdown()
    httpd.server_close()


def _files(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------------------------------------
# item 6: what a download must be before it is renamed into the cache
# ---------------------------------------------------------------------------------------------
def test_truncated_download_is_not_cached(server, tmp_path):
    body = b"index,mid,display_name\n" + b"0,/m/x,X\n" * 1000
    half = body[: len(body) // 2]
    server.routes["/labels.csv"] = (half, {"Content-Length": str(len(body)), "Content-Type": "text/csv"}, 0)
    cache = tmp_path / "cache"
    with pytest.raises(hub.DownloadError) as error:
        hub.cached_file(server.url + "/labels.csv", cache=cache, progress=False)
    message = str(error.value)
    assert f"received {len(half):,} of {len(body):,} bytes" in message
    assert str(cache / "labels.csv") in message
    assert _files(cache) == []  # no file, no .part, no lock left behind


def test_truncated_checkpoint_without_content_length_is_not_cached(server, tmp_path):
    data = _torch_bytes()
    server.routes["/model.pt"] = (data[: len(data) // 2], {"Content-Type": "application/octet-stream"}, 0)
    cache = tmp_path / "cache"
    with pytest.raises(hub.DownloadError, match="not a loadable PyTorch checkpoint"):
        hub.cached_file(server.url + "/model.pt", cache=cache, progress=False)
    assert _files(cache) == []


@pytest.mark.parametrize("name", ["model.pt", "class_labels.csv"])
def test_html_page_is_not_cached(server, tmp_path, name):
    page = b"<!DOCTYPE html>\n<html><body>Please log in to the network</body></html>\n"
    server.routes["/" + name] = (page, {"Content-Length": str(len(page)), "Content-Type": "text/html"}, 0)
    cache = tmp_path / "cache"
    with pytest.raises(hub.DownloadError, match="HTML page"):
        hub.cached_file(f"{server.url}/{name}", cache=cache, progress=False)
    assert _files(cache) == []


def test_good_download_over_the_localhost_escape(server, tmp_path):
    data = _torch_bytes()
    server.routes["/model.pt"] = (data, {"Content-Length": str(len(data))}, 0)
    path = hub.cached_file(server.url + "/model.pt", cache=tmp_path, progress=False)
    assert path.read_bytes() == data and _files(tmp_path) == ["model.pt"]


def test_concurrent_downloads_of_one_file_fetch_it_once(server, tmp_path):
    data = _torch_bytes()
    server.routes["/model.pt"] = (data, {"Content-Length": str(len(data))}, 0.5)
    start = threading.Barrier(2)
    results, errors = [], []

    def download():
        start.wait()
        try:
            results.append(hub.cached_file(server.url + "/model.pt", cache=tmp_path, progress=False))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(results) == 2 and results[0] == results[1] == tmp_path / "model.pt"
    assert results[0].read_bytes() == data
    assert server.requests == ["/model.pt"]  # the second one waited on the lock and found the file
    assert _files(tmp_path) == ["model.pt"]


# ---------------------------------------------------------------------------------------------
# item 6: schemes and file names
# ---------------------------------------------------------------------------------------------
def test_plain_http_is_refused_before_any_request(tmp_path, monkeypatch):
    attempts = _offline(monkeypatch)
    monkeypatch.delenv(ALLOW_HTTP, raising=False)
    for url in ("http://example.org/weights/model.pt", "http://127.0.0.1:9/model.pt", "ftp://example.org/model.pt"):
        with pytest.raises(hub.DownloadError, match="https://") as error:
            hub.cached_file(url, cache=tmp_path)
        assert url in str(error.value)
    monkeypatch.setenv(ALLOW_HTTP, "1")  # the escape is for localhost only
    with pytest.raises(hub.DownloadError, match="plain http"):
        hub.cached_file("http://example.org/weights/model.pt", cache=tmp_path)
    assert attempts == []
    assert _files(tmp_path) == []


def test_redirect_to_plain_http_is_refused(tmp_path, monkeypatch):
    class Redirected(io.BytesIO):  # what urlopen returns after following https -> http
        headers = {"Content-Length": "3"}

        def geturl(self):
            return "http://downgraded.example.org/model.pt"

    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda url, timeout=None: Redirected(b"abc"))
    with pytest.raises(hub.DownloadError, match="redirected") as error:
        hub.cached_file("https://example.org/model.pt", cache=tmp_path)
    assert "http://downgraded.example.org/model.pt" in str(error.value)
    assert _files(tmp_path) == []


def test_http_mirror_is_refused(tmp_path, monkeypatch):
    attempts = _offline(monkeypatch)
    monkeypatch.delenv(ALLOW_HTTP, raising=False)
    monkeypatch.setenv("EFFICIENT_TAGGING_MIRROR", "http://mirror.example.org/efficientat")
    with pytest.raises(hub.DownloadError, match="EFFICIENT_TAGGING_MIRROR"):
        get_model("mn04_as", cache_dir=tmp_path)
    assert attempts == []


def test_audioset_label_list_is_fetched_over_https():
    assert AUDIOSET_LABELS_URL.startswith("https://storage.googleapis.com/")


@pytest.mark.parametrize("filename", ["../escaped.pt", "sub/model.pt", "..", ".", "", "/tmp/abs.pt",
                                      "a\\b.pt", "nul\x00.pt"])
def test_cache_file_names_cannot_leave_the_cache(tmp_path, filename):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="plain file name"):
        hub.cached_file(source.as_uri(), filename, cache=cache)
    with pytest.raises(ValueError, match="plain file name"):
        hub.copy_into_cache(source, filename, cache=cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.bin"]  # nothing written anywhere


# ---------------------------------------------------------------------------------------------
# item 6: a bad file already in the cache (left by an older version, or copied there by hand)
# ---------------------------------------------------------------------------------------------
def test_bad_cached_checkpoint_is_moved_aside_and_downloaded_again(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    cache.mkdir()
    data = _torch_bytes()
    (mirror / "model.pt").write_bytes(data)
    (cache / "model.pt").write_bytes(data[: len(data) // 2])  # what the old code cached from a cut connection
    path = hub.cached_file((mirror / "model.pt").as_uri(), cache=cache, progress=False)
    assert path.read_bytes() == data
    kept = [p for p in cache.iterdir() if p.name.startswith("model.pt.bad-")]
    assert len(kept) == 1 and kept[0].read_bytes() == data[: len(data) // 2]


def test_bad_cached_checkpoint_offline_names_the_file(tmp_path, monkeypatch):
    _offline(monkeypatch)
    (tmp_path / "mn04_as_mAP_432.pt").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(hub.DownloadError) as error:
        get_model("mn04_as", cache_dir=tmp_path)
    message = str(error.value)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("mn04_as_mAP_432.pt.bad-")]
    assert len(kept) == 1
    assert str(kept[0]) in message  # where the unusable copy went
    assert str(tmp_path / "mn04_as_mAP_432.pt") in message  # where a good copy goes


def test_unloadable_cached_checkpoint_says_which_file_to_delete(tmp_path, monkeypatch):
    _offline(monkeypatch)
    target = tmp_path / "mn04_as_mAP_432.pt"
    with zipfile.ZipFile(target, "w") as archive:  # looks like a torch zip file, does not unpickle
        archive.writestr("archive/data.pkl", b"\x80\x02garbage")
    with pytest.raises(hub.DownloadError) as error:
        get_model("mn04_as", cache_dir=tmp_path)
    # moved aside (issue 24: a bad cached copy no longer blocks every later call) and fetched again
    assert "was not usable and was moved to" in str(error.value) and "not a readable PyTorch checkpoint" in str(error.value)
    assert not target.exists() and len(list(tmp_path.glob(f"{target.name}.bad-*"))) == 1
    assert f"good copy of" in str(error.value) and str(target) in str(error.value)


@pytest.mark.skipif(not (hub.Path(__file__).resolve().parents[2] / "shared").is_dir(), reason="needs ../shared")
def test_bad_cached_label_list_is_downloaded_again(tmp_path, monkeypatch):
    from conftest import LABELS_CSV

    monkeypatch.setattr("efficient_tagging.labels.AUDIOSET_LABELS_URL", LABELS_CSV.resolve().as_uri())
    (tmp_path / AUDIOSET_LABELS_FILENAME).write_text("<html><body>captive portal</body></html>\n")
    assert len(audioset_labels(cache=tmp_path)) == 527


# ---------------------------------------------------------------------------------------------
# item 16: AST's ImageNet (DeiT) initialisation goes through the cache and fails fast offline
# ---------------------------------------------------------------------------------------------
TINY_DEIT_URL = "https://dl.fbaipublicfiles.com/deit/deit_tiny_distilled_patch16_224-b40b3cf7.pth"
TINY_DEIT_FILE = "deit_tiny_distilled_patch16_224-b40b3cf7.pth"


def _no_timm_hub(monkeypatch) -> list:
    """timm's own hub download (what the old code used) records the call and fails like it would offline."""
    import timm

    calls = []

    def create_model(name, *args, pretrained=False, **kwargs):
        calls.append(name)
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return original(name, *args, **kwargs)

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", create_model)
    return calls


def test_ast_imagenet_init_offline_fails_fast_naming_file_and_cache(tmp_path, monkeypatch):
    attempts = _offline(monkeypatch)
    timm_calls = _no_timm_hub(monkeypatch)
    started = time.monotonic()
    with pytest.raises(hub.DownloadError) as error:
        get_model(arch="ast", model_size="tiny224", input_tdim=128, cache_dir=tmp_path)
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert TINY_DEIT_URL in message  # what to download
    assert str(tmp_path / TINY_DEIT_FILE) in message  # where to put it
    assert "imagenet_pretrain=False" in message and "imagenet_state_dict" in message
    assert attempts == [TINY_DEIT_URL] and timm_calls == []


def test_ast_imagenet_weights_load_from_the_cache_without_network(tmp_path, monkeypatch):
    _offline(monkeypatch)
    timm_calls = _no_timm_hub(monkeypatch)
    original = MODEL_SIZES["tiny224"]  # one block keeps the test fast
    monkeypatch.setitem(MODEL_SIZES, "tiny224", ASTSize(original.embed_dim, original.num_heads, 1, original.deit_grid,
                                                        original.timm_name, original.reference_timm_name))
    size = MODEL_SIZES["tiny224"]
    with torch.device("meta"):
        donor = ast_module.DistilledViT(size, 16, 16, (size.deit_grid, size.deit_grid))
    generator = torch.Generator().manual_seed(0)
    deit = {key: torch.randn(value.shape, generator=generator) for key, value in donor.state_dict().items()}
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    torch.save({"model": deit}, tmp_path / TINY_DEIT_FILE)  # the layout of the DeiT release files
    model = get_model(arch="ast", model_size="tiny224", input_tdim=128)
    assert torch.equal(model.v.blocks[0].attn.qkv.weight.data, deit["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.v.cls_token.data, deit["cls_token"])
    expected_weight, _ = ast_module.adapt_imagenet_patch_embedding(deit["patch_embed.proj.weight"])
    assert torch.equal(model.v.patch_embed.proj.weight.data, expected_weight)
    assert timm_calls == []
