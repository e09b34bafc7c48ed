"""Models by name (byola.hub): download from a loopback HTTP server started here (127.0.0.1 only), resume,
checksum, licence acceptance, no network; official .pth files loaded in memory. No test touches the internet."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.util
import json
import threading
from pathlib import Path

import pytest
import torch

import byola
from byola import hub
from byola.errors import UsageError

_spec = importlib.util.spec_from_file_location("_ckpt_tests", Path(__file__).with_name("test_checkpoint.py"))
_ckpt_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ckpt_tests)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path, honouring ``Range: bytes=N-``; ``server.cut`` sends only the first
    ``cut`` bytes of a full response and closes the connection (an interrupted download)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        data, start = srv.payload, 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut is not None:
            self.wfile.write(body[:srv.cut])
            srv.cut = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.cut, srv.ranges = b"", None, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(hub.ACCEPT_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def weights(tmp_path) -> tuple[bytes, dict]:
    """An official-layout v1 d=64 state dict saved with torch.save, as bytes."""
    sd = _ckpt_tests.official_state(1, 64)
    path = tmp_path / "generated.pth"
    torch.save(sd, path)
    return path.read_bytes(), sd


def _entry(server, payload: bytes, monkeypatch, **changes) -> hub.ModelInfo:
    """Register a model served by ``server`` (the built-in official entry with the URL and checksums changed)."""
    blob = hashlib.sha1(f"blob {len(payload)}\0".encode() + payload).hexdigest()
    fields = {"name": "test-model", "file": "test-model.pth", "size": len(payload), "git_blob_sha1": blob,
              "url": f"http://127.0.0.1:{server.server_port}/w/test-model.pth",
              "sha256": hashlib.sha256(payload).hexdigest()}
    info = dataclasses.replace(hub.MODELS["byol-a-v1-d512"], **(fields | changes))
    monkeypatch.setitem(hub.MODELS, info.name, info)
    server.payload = payload
    return info


def test_download_verify_and_load_by_name(server, cache, weights, monkeypatch, capsys):
    payload, sd = weights
    _entry(server, payload, monkeypatch)
    with pytest.raises(UsageError, match="needs its licence accepted.*evaluation-only.*--accept_license"):
        hub.resolve("test-model", progress=False)
    assert "Licence text: https://github.com/nttcslab/byol-a" in capsys.readouterr().err
    assert server.ranges == []  # nothing downloaded before the licence is accepted

    model = byola.load("test-model", accept_license=True, norm_stats=(0.0, 1.0))
    assert (cache / "models" / "test-model.pth").read_bytes() == payload
    assert model.model_name == "test-model" and model.embed_dim == 64
    assert not list((cache / "models").glob("*.safetensors"))  # nothing converted is written
    # Accepted once: a second model under the same licence needs no flag; the cached file is not fetched again.
    hub.resolve("test-model", progress=False)
    assert len(server.ranges) == 1


def test_loaded_official_weights_match_the_official_forward(tmp_path, weights):
    payload, sd = weights
    path = tmp_path / "AudioNTT2020-BYOLA-64x96d64.pth"
    path.write_bytes(payload)
    x = _ckpt_tests.logmels()
    with torch.inference_mode():
        expected = _ckpt_tests.official_embedding(sd, x)
        got = byola.load(path, norm_stats=(0.0, 1.0), optimize=False).encoder(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, "generated.pth"]  # nothing written


def test_wrong_checksum_deletes_the_download(server, cache, weights, monkeypatch):
    payload, _ = weights
    _entry(server, payload, monkeypatch, sha256="0" * 64)
    with pytest.raises(UsageError, match="does not match its recorded checksum.*deleted"):
        hub.resolve("test-model", accept_license=True, progress=False)
    assert not list((cache / "models").iterdir())


def test_interrupted_download_resumes_with_range(server, cache, weights, monkeypatch):
    payload, _ = weights
    _entry(server, payload, monkeypatch)
    server.cut = 1000
    with pytest.raises(UsageError, match="interrupted at 1000 of .*rerun the command to resume"):
        hub.resolve("test-model", accept_license=True, progress=False)
    part = cache / "models" / "test-model.pth.part"
    assert part.stat().st_size == 1000
    path = hub.resolve("test-model", progress=False)
    assert server.ranges == [None, "bytes=1000-"]
    assert path.read_bytes() == payload and not part.exists()


def test_placed_links_at_the_part_file_and_licence_record_are_not_written_through(server, cache, weights,
                                                                                  monkeypatch, tmp_path):
    payload, _ = weights
    info = _entry(server, payload, monkeypatch)
    victim, absent = tmp_path / "victim.bin", tmp_path / "absent.txt"
    victim.write_bytes(b"precious")
    part = hub.cached_path(info).with_name(info.file + ".part")
    part.parent.mkdir(parents=True)
    part.symlink_to(victim)
    record = hub._licence_record(info)
    record.parent.mkdir(parents=True)
    record.symlink_to(absent)  # a dangling link: no acceptance yet
    path = hub.resolve("test-model", accept_license=True, progress=False)
    assert path.read_bytes() == payload and server.ranges == [None]  # a fresh download, nothing resumed from the link
    assert victim.read_bytes() == b"precious" and not absent.exists()
    assert not record.is_symlink() and "accepted" in record.read_text()


def test_server_down_names_the_file_to_place_by_hand(server, cache, weights, monkeypatch):
    payload, _ = weights
    info = _entry(server, payload, monkeypatch)
    server.shutdown()
    server.server_close()
    with pytest.raises(UsageError, match=r"cannot download test-model .*place it at .*models/test-model\.pth"):
        hub.resolve("test-model", accept_license=True, progress=False)
    # Placing the file by hand is enough: it is verified and used.
    hub.cached_path(info).write_bytes(payload)
    assert hub.resolve("test-model") == hub.cached_path(info)
    hub.cached_path(info).write_bytes(payload[:-1] + b"x")
    with pytest.raises(UsageError, match="does not match"):
        hub.resolve("test-model")


def test_names_paths_and_user_models(cache, tmp_path, monkeypatch):
    assert hub.resolve(None) == hub.resolve("default") == hub.resolve(hub.DEFAULT_MODEL) == hub.shipped_checkpoint()
    with pytest.raises(UsageError, match="unknown model 'byol-a-v1-d51' \\(did you mean byol-a-v1-d512\\?\\)"):
        hub.resolve("byol-a-v1-d51")
    with pytest.raises(UsageError, match="no such checkpoint file"):
        hub.resolve(tmp_path / "absent.safetensors")
    cache.mkdir(parents=True)
    (cache / "models.json").write_text(json.dumps([{"name": "mine", "url": "http://127.0.0.1:9/m.pth",
                                                    "sha256": "ab" * 32}]))
    assert hub.known_models()["mine"].file == "m.pth" and "mine" in hub.models_table()
    (cache / "models.json").write_text(json.dumps([{"name": "bad"}]))
    with pytest.raises(UsageError, match="models.json"):
        hub.known_models()


def test_registry_matches_the_recorded_official_facts():
    facts = Path("/work/shared/official_weights.json")
    if not facts.is_file():
        pytest.skip("official_weights.json not available")
    recorded = json.loads(facts.read_text())
    official = [m for m in hub.MODELS.values() if m.url]
    assert len(official) == len(recorded["files"]) == 4
    for f in recorded["files"]:
        m = next(m for m in official if m.file == f["name"])
        assert m.url.endswith(f"/{recorded['repository']}/{recorded['commit']}/{f['path']}")
        assert m.git_blob_sha1 == f["git_blob_sha1"] and m.sha256 == f.get("sha256") and m.size == f.get("size")


def test_cli_embeds_with_an_official_pth_and_a_model_name(server, cache, weights, tmp_path):
    """`--checkpoint FILE.pth` converts in memory; `--model NAME` downloads (licence accepted once) and embeds."""
    import subprocess
    import sys

    import numpy as np

    payload, _ = weights
    pth = tmp_path / "official.pth"
    pth.write_bytes(payload)
    examples = Path(__file__).resolve().parents[1] / "examples"
    base = [sys.executable, "-m", "byola", "embed", str(examples), "--num_workers", "0", "--progress", "false"]
    done = subprocess.run(base + ["--checkpoint", str(pth), "--out", str(tmp_path / "a")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "a" / "embeddings.npy").shape[1] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "generated.pth", "official.pth"]

    models = json.dumps([{"name": "lab-model", "url": f"http://127.0.0.1:{server.server_port}/lab.pth",
                          "sha256": hashlib.sha256(payload).hexdigest(), "licence": "lab internal"}])
    cache.mkdir(parents=True)
    (cache / "models.json").write_text(models)
    server.payload = payload
    done = subprocess.run(base + ["--model", "lab-model", "--out", str(tmp_path / "b")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "a" / "embeddings.npy"), np.load(tmp_path / "b" / "embeddings.npy"))
