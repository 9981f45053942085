"""Helpers shared by the model, registry, fetch and predict tests.

Not a conftest (the lead owns tests/conftest.py): test files import from here.
Builds modules in the original MIMIR layout with random weights, random
images, and a local HTTP server with failure modes.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import pytest

from mimir.models.resnet import ResNet50


@pytest.fixture
def no_builtin_modules(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hide the package's built-in modules (the demo one), so tests see only what they install."""
    from mimir.models import registry

    empty = tmp_path_factory.mktemp("no-builtin")
    monkeypatch.setattr(registry, "builtin_modules_dir", lambda: empty)
    return empty


@pytest.fixture
def single_torch_thread():
    """One torch thread while the test runs (then the previous count).

    The test machines are shared; with several processes on two cores, torch's
    spinning worker threads made these tiny forward passes 10x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

#: (name, field, unit, divisor, mean, sd, calibration)
DEFAULT_TARGETS = [
    ("AtlasVatVolume", 22407, "L", 1000.0, 3500.0, 1500.0, 1.3),  # mL in the network, L shown
    ("age", None, "years", 1.0, 64.0, 7.5, 0.8),
    ("liverFat", 22402, "%", 1.0, 5.0, 4.0, 1.1),
]


def random_resnet_state(num_targets: int, width: int, seed: int, out_scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A ResNet50 state dict with random weights and BN statistics whose outputs are O(out_scale)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see single_torch_thread
    try:
        return _random_resnet_state(num_targets, width, seed, out_scale)
    finally:
        torch.set_num_threads(threads)


def _random_resnet_state(num_targets: int, width: int, seed: int, out_scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ResNet50(num_outputs=2 * num_targets, width=width).eval()
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        for name, p in net.named_parameters():
            if ".bn" in name or name.startswith("bn1") or "downsample.1" in name:
                if name.endswith("weight"):
                    p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        # scale fc so that outputs on 0..255 images are of order out_scale
        x = torch.rand(2, 3, 256, 256, generator=g) * 255
        feats = net.features(x)
        scale = float(feats.norm(dim=1).mean()) or 1.0
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=g) * out_scale / scale)
        net.fc.bias.copy_(torch.randn(net.fc.bias.shape, generator=g) * out_scale)
    return {k: v.clone() for k, v in net.state_dict().items()}


def make_original_module(
    folder: Path,
    *,
    targets=DEFAULT_TARGETS,
    width: int = 8,
    seed: int = 0,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Write a module in the original MIMIR layout; return the network's state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else random_resnet_state(len(targets), width, seed)
    # as the MIMIR training code saves it: a dict with the state dict and bookkeeping
    torch.save({"epoch": 10000, "state_dict": sd}, folder / "snapshot.pth.tar")
    lines = ["Name,Field,Unit,Divisor"] + [
        f"{n},{'' if f is None else f},{u},{d:g}" for n, f, u, d, *_ in targets
    ]
    (folder / "metadata.txt").write_text("\n".join(lines) + "\n")
    (folder / "standardization_parameters.txt").write_text(
        "mean,stdev\n" + "".join(f"{m!r},{s!r}\n" for _, _, _, _, m, s, _ in targets)
    )
    (folder / "calibration_factors.txt").write_text(
        "calibration_factor" + "".join(f"\n{c!r}" for *_, c in targets)
    )
    return sd


def zip_folder(folder: Path, zip_path: Path, *, top: bool = True, compress: bool = False) -> Path:
    """Zip ``folder`` (with its name as top folder when ``top``)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(zip_path, "w", method) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                arc = p.relative_to(folder.parent if top else folder)
                zf.write(p, arc.as_posix())
    return zip_path


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 256, 256), dtype=np.uint8)


def save_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    imgs = random_images(len(names), seed)
    paths = []
    for name, img in zip(names, imgs):
        p = folder / f"{name}.npy"
        np.save(p, img)
        paths.append(p)
    return paths


def reference_prediction(state_dicts, images: np.ndarray, targets=DEFAULT_TARGETS):
    """The issue's formulas, computed independently of mimir's numerics.

    Returns (mean, variance), each (N, T), combining members as a uniform mixture.
    """
    means, variances = [], []
    x = torch.from_numpy(images).float()
    for sd in state_dicts:
        net = ResNet50(num_outputs=sd["fc.weight"].shape[0], width=sd["conv1.weight"].shape[0])
        net.load_state_dict(sd, strict=True)
        net.eval()
        with torch.no_grad():
            out = net(x).double().numpy()
        n, t = out.shape[0], len(targets)
        m_ = np.empty((n, t))
        v_ = np.empty((n, t))
        for j, (_, _, _, d, mu, s, c) in enumerate(targets):
            m = out[:, 2 * j]
            lv = out[:, 2 * j + 1]
            m_[:, j] = (m * s + mu) / d
            v_[:, j] = np.exp(lv) * s * s * c / (d * d)
        means.append(m_)
        variances.append(v_)
    k = len(means)
    mean = sum(means) / k
    var = sum(variances) / k + sum((m - mean) ** 2 for m in means) / k
    return mean, var


# --------------------------------------------------------------------------- HTTP server


@dataclass
class Served:
    data: bytes
    #: "ok", "drop" (first request: half the body, then the connection closes), "404", "500-once"
    mode: str = "ok"
    requests: list[dict] = field(default_factory=list)


class FileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 serving in-memory files, with Range support."""

    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                f = server.files.get(self.path)
                if f is None or f.mode == "404":
                    body = b"not found"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                f.requests.append({"range": rng})
                if f.mode == "500-once" and len(f.requests) == 1:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                data = f.data
                if start >= len(data) and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                if start:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if f.mode == "drop" and len(f.requests) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                # A client that hangs up (after a 404, a dropped transfer) is
                # normal here; socketserver would print its traceback to
                # sys.stderr, which CliRunner captures as the CLI's own stderr.
                # Other errors are kept for the test to see, not printed.
                err = sys.exc_info()[1]
                if not isinstance(err, (ConnectionResetError, BrokenPipeError)):
                    server.errors.append(repr(err))

        self.errors: list[str] = []
        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, path: str, data: bytes, mode: str = "ok") -> str:
        self.files[path] = Served(data, mode)
        return self.base + path

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if exc[0] is None:
            assert not self.errors, f"the test HTTP server failed: {self.errors}"
