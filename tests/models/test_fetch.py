"""fetch-weights against a real HTTP server on 127.0.0.1: good, corrupt, dropped, 404, offline."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_models import FileServer, make_original_module, no_builtin_modules, random_resnet_state, single_torch_thread, zip_folder  # noqa: F401

from mimir.models import fetch
from mimir.utils.hashing import file_sha256
from mimir.models.modules import TargetSpec, verify_module, write_module
from mimir.utils.paths import home_dir, modules_dir
from mimir.models.registry import get_module, installed_modules

pytestmark = pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")
runner = CliRunner()


def _cli():
    from mimir.cli import app

    return app


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)
    monkeypatch.setattr(fetch, "RETRIES", 3)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two module archives: one in our format, one in the original MIMIR format."""
    root = tmp_path_factory.mktemp("archives")
    targets = [TargetSpec(name="AtlasVatVolume", unit="L", field=22407, divisor=1000.0, mean=3000.0, sd=1000.0)]
    write_module(root / "ours" / "demo_small", name="demo_small", version="0.3", targets=targets,
                 state_dicts=[random_resnet_state(1, 8, 21), random_resnet_state(1, 8, 22)])
    make_original_module(root / "orig" / "module_organs", width=8, seed=23)
    return {
        "ours": zip_folder(root / "ours" / "demo_small", root / "demo_small.zip").read_bytes(),
        "orig": zip_folder(root / "orig" / "module_organs", root / "module_organs.zip", top=False).read_bytes(),
    }


def _manifest(tmp_path: Path, entries: list[dict]) -> str:
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(entries))
    return str(p)


def _entry(name: str, url: str, data: bytes, version: str = "0.3", sha: str | None = None) -> dict:
    return {"name": name, "version": version, "url": url, "sha256": sha or hashlib.sha256(data).hexdigest(),
            "size": len(data), "targets": ["AtlasVatVolume"]}


def _registry_state() -> list[str]:
    root = modules_dir()
    return sorted(os.listdir(root)) if root.exists() else []


def test_good_download_installs_verified_module(tmp_path: Path, archives) -> None:
    data = archives["ours"]
    with FileServer() as srv:
        url = srv.add("/mods/demo_small.zip", data)
        man = _manifest(tmp_path, [_entry("demo_small", url, data)])
        r = runner.invoke(_cli(), ["fetch-weights", "demo_small", "--manifest", man])
        assert r.exit_code == 0, r.stderr
        assert "installed demo_small 0.3 (1 targets, 2 members)" in r.stdout
        spec = get_module("demo_small")
        verify_module(spec)
        assert _registry_state() == ["demo_small"]
        assert not any((home_dir() / "downloads").iterdir())  # archive removed after install
        # a second run finds it installed and does not download again
        n = len(srv.log)
        r = runner.invoke(_cli(), ["fetch-weights", "demo_small", "--manifest", man])
        assert r.exit_code == 0 and "already installed" in r.stdout and len(srv.log) == n
        # the manifest itself can come from a URL
        murl = srv.add("/manifest.json", Path(man).read_bytes())
        r = runner.invoke(_cli(), ["fetch-weights", "--manifest", murl, "--force"])
        assert r.exit_code == 0, r.stderr
        assert "installed demo_small" in r.stdout


def test_original_format_download_is_converted(tmp_path: Path, archives) -> None:
    data = archives["orig"]  # files at the top level of the archive
    with FileServer() as srv:
        url = srv.add("/module_organs.zip", data)
        man = _manifest(tmp_path, [_entry("module_organs", url, data, version="1.0")])
        r = runner.invoke(_cli(), ["fetch-weights", "module_organs", "--manifest", man])
    assert r.exit_code == 0, r.stderr
    spec = get_module("module_organs")
    assert spec.version == "1.0" and spec.num_targets == 3
    assert spec.source["archive_sha256"] == hashlib.sha256(data).hexdigest()
    assert "snapshot.pth.tar" in spec.source["original_files"]


def test_corrupt_download_leaves_registry_unchanged(tmp_path: Path, archives) -> None:
    good = archives["ours"]
    with FileServer() as srv:
        # install a first version, then try to replace it with a corrupt download
        url = srv.add("/demo_small.zip", good)
        runner.invoke(_cli(), ["fetch-weights", "--manifest", _manifest(tmp_path, [_entry("demo_small", url, good)])])
        before = {p: file_sha256(p) for p in (modules_dir() / "demo_small").iterdir()}
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        url2 = srv.add("/v2/demo_small.zip", bytes(bad))
        man = _manifest(tmp_path, [_entry("demo_small", url2, good, version="0.4")])
        r = runner.invoke(_cli(), ["fetch-weights", "demo_small", "--manifest", man])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256 mismatch" in lines[0] and "nothing was installed" in lines[0], r.stderr
    assert {p: file_sha256(p) for p in (modules_dir() / "demo_small").iterdir()} == before
    assert get_module("demo_small").version == "0.3"
    assert _registry_state() == ["demo_small"]
    assert list((home_dir() / "downloads").iterdir()) == []  # the bad bytes are gone


def test_dropped_connection_resumes_with_range(tmp_path: Path, archives) -> None:
    data = archives["ours"]
    with FileServer() as srv:
        url = srv.add("/demo_small.zip", data, mode="drop")
        man = _manifest(tmp_path, [_entry("demo_small", url, data)])
        r = runner.invoke(_cli(), ["fetch-weights", "demo_small", "--manifest", man])
        reqs = srv.files["/demo_small.zip"].requests
    assert r.exit_code == 0, r.stderr
    assert len(reqs) == 2 and reqs[0]["range"] is None
    start = int(reqs[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start < len(data)
    verify_module(get_module("demo_small"))


def test_server_error_is_retried(tmp_path: Path, archives) -> None:
    data = archives["ours"]
    with FileServer() as srv:
        url = srv.add("/demo_small.zip", data, mode="500-once")
        r = runner.invoke(_cli(), ["fetch-weights", "--manifest", _manifest(tmp_path, [_entry("demo_small", url, data)])])
        assert len(srv.files["/demo_small.zip"].requests) == 2
    assert r.exit_code == 0, r.stderr


def test_404_and_partial_failure(tmp_path: Path, archives) -> None:
    data = archives["ours"]
    with FileServer() as srv:
        ok_url = srv.add("/demo_small.zip", data)
        missing = srv.base + "/nothing/here.zip"
        man = _manifest(tmp_path, [_entry("demo_small", ok_url, data), _entry("gone", missing, data)])
        r = runner.invoke(_cli(), ["fetch-weights", "gone", "--manifest", man])
        assert r.exit_code == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "HTTP 404" in lines[0] and "/nothing/here.zip" in lines[0]
        assert _registry_state() == []
        r = runner.invoke(_cli(), ["fetch-weights", "--manifest", man])  # both: one ok, one fails
        assert r.exit_code == 2
        assert [s.name for s in installed_modules()] == ["demo_small"]


def test_offline(tmp_path: Path, archives, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("network used with --offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    data = archives["ours"]
    man = _manifest(tmp_path, [_entry("demo_small", "http://127.0.0.1:9/demo_small.zip", data)])
    r = runner.invoke(_cli(), ["fetch-weights", "demo_small", "--manifest", man, "--offline"])
    assert r.exit_code == 1 and "--offline forbids downloading it" in r.stderr
    r = runner.invoke(_cli(), ["fetch-weights", "--manifest", "http://127.0.0.1:9/m.json", "--offline"])
    assert r.exit_code == 1 and "--offline forbids reading a manifest from a URL" in r.stderr
    # a local archive imports fine offline, and then counts as installed
    archive = tmp_path / "demo_small.zip"
    archive.write_bytes(data)
    r = runner.invoke(_cli(), ["fetch-weights", "--from", str(archive), "--offline"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(_cli(), ["fetch-weights", "demo_small", "--manifest", man, "--offline"])
    assert r.exit_code == 0 and "already installed" in r.stdout


def test_mirror_replaces_url_base(tmp_path: Path, archives, monkeypatch: pytest.MonkeyPatch) -> None:
    data = archives["ours"]
    with FileServer() as srv:
        srv.add("/mirror/demo_small.zip", data)
        monkeypatch.setenv("MIMIR_WEIGHTS_MIRROR", srv.base + "/mirror/")
        man = _manifest(tmp_path, [_entry("demo_small", "https://unreachable.invalid/a/b/demo_small.zip", data)])
        r = runner.invoke(_cli(), ["fetch-weights", "--manifest", man])
        assert r.exit_code == 0, r.stderr
        assert [p for p, _ in srv.log] == ["/mirror/demo_small.zip"]
    assert fetch.mirror_url("https://x.org/a/b.zip") == srv.base + "/mirror/b.zip"


def test_manual_mimir_modules_and_local_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    r = runner.invoke(_cli(), ["fetch-weights", "module_bodycomp"])  # packaged manifest
    assert r.exit_code == 1
    line = r.stderr.strip()
    assert "module_bodycomp cannot be downloaded automatically" in line
    assert "https://uppsala.box.com/s/" in line and "mimir fetch-weights module_bodycomp --from" in line
    r = runner.invoke(_cli(), ["fetch-weights", "--list"])
    assert r.exit_code == 0 and "module_age" in r.stdout and "manual" in r.stdout
    # the instructions' command works on the authors' zip layout (a folder named like the module)
    make_original_module(tmp_path / "module_bodycomp", width=8, seed=5)
    archive = zip_folder(tmp_path / "module_bodycomp", tmp_path / "module_bodycomp.zip")
    r = runner.invoke(_cli(), ["fetch-weights", "module_bodycomp", "--from", str(archive)])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(_cli(), ["fetch-weights", "module_bodycomp"])
    assert r.exit_code == 0 and "module_bodycomp 1.0 is already installed" in r.stdout
    # a zip that is not a module
    junk = tmp_path / "junk.zip"
    import zipfile

    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("readme.txt", "hello")
    r = runner.invoke(_cli(), ["fetch-weights", "--from", str(junk)])
    assert r.exit_code == 1 and "holds no module" in r.stderr
    assert [s.name for s in installed_modules()] == ["module_bodycomp"]


def test_unsafe_archive_is_refused(tmp_path: Path) -> None:
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(Exception, match="unsafe path"):
        fetch.import_module(evil)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path: Path, archives) -> None:
    data = archives["ours"]
    entry = _entry("demo_small", "", data)
    part = home_dir() / "downloads" / f"demo_small-{entry['sha256'][:16]}.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])
    with FileServer() as srv:
        entry["url"] = srv.add("/demo_small.zip", data)
        r = runner.invoke(_cli(), ["fetch-weights", "--manifest", _manifest(tmp_path, [entry])])
        reqs = srv.files["/demo_small.zip"].requests
    assert r.exit_code == 0, r.stderr
    assert [q["range"] for q in reqs] == [f"bytes={len(data) // 3}-"]
    assert not part.exists()
    verify_module(get_module("demo_small"))


def test_test_server_is_silent_when_a_client_hangs_up(capfd) -> None:
    """The CI failure of stop 27: a client reset printed a traceback into the CLI's stderr."""
    import struct
    import time

    with FileServer() as srv:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(4096)  # the 404; the server now waits for the next request line
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST, not FIN: the server's readline raises ConnectionResetError
        time.sleep(0.3)
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Exception occurred" not in err
    assert srv.errors == []
