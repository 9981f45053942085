"""The first input made in a second process: the same image, QC record, error and log lines as in-process."""

from __future__ import annotations

import logging
import multiprocessing

import numpy as np
import pytest
from hostile import die_in_child

from mimir.errors import NotAZipError
from mimir.preprocessing import prefetch
from mimir.preprocessing.pipeline import load_input_with_qc
from mimir.synth import generate_subject


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    """A small subject whose station 3 has water and fat swapped: a QC flag, logged as a warning."""
    return generate_subject(tmp_path_factory.mktemp("pf"), seed=31, small=True, variant="fat_water_swap",
                            swap_station=3).zip_path


def _mimir_lines(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "mimir"]


def test_prefetched_input_equals_reading_it_here(swapped, caplog, monkeypatch):
    monkeypatch.setattr(prefetch, "_cores", lambda: 2)
    caplog.set_level(logging.WARNING, logger="mimir")
    image, qc = load_input_with_qc(swapped, cache=False)
    here = _mimir_lines(caplog)
    assert any("fat_water_swap:station=3" in text for _, text in here)
    caplog.clear()
    with prefetch.first_input_prefetched([str(swapped)], cache=False) as load:
        assert multiprocessing.active_children()  # the second process is at work
        got_image, got_qc = load(str(swapped))
    assert np.array_equal(got_image, image) and got_image.dtype == np.uint8
    assert got_qc == qc and got_qc.flags == qc.flags
    assert _mimir_lines(caplog) == here  # the child's warnings, re-emitted here, in order
    assert not [p for p in multiprocessing.active_children() if p.name == "mimir-prefetch"]


def test_an_error_in_the_second_process_is_the_same_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "_cores", lambda: 2)
    bad = tmp_path / "1000001_20201_2_0.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(NotAZipError) as here:
        load_input_with_qc(bad, cache=False)
    with prefetch.first_input_prefetched([str(bad)], cache=False) as load, pytest.raises(NotAZipError) as there:
        load(str(bad))
    assert str(there.value) == str(here.value)
    assert "\n" not in str(there.value)


def test_a_dead_second_process_means_reading_it_here(swapped, monkeypatch):
    monkeypatch.setattr(prefetch, "_cores", lambda: 2)
    monkeypatch.setattr(prefetch, "_child_main", die_in_child)  # exits at once, sending nothing
    with prefetch.first_input_prefetched([str(swapped)], cache=False) as load:
        image, _ = load(str(swapped))
    assert np.array_equal(image, load_input_with_qc(swapped, cache=False)[0])


def test_one_core_or_only_npy_inputs_start_no_process(swapped, tmp_path, monkeypatch):
    started = []
    real = multiprocessing.get_context

    def spy(method=None):
        started.append(method)
        return real(method)

    monkeypatch.setattr(prefetch.multiprocessing, "get_context", spy)
    monkeypatch.setattr(prefetch, "_cores", lambda: 1)
    with prefetch.first_input_prefetched([str(swapped)], cache=False) as load:
        assert load(str(swapped))[0].shape == (3, 256, 256)
    monkeypatch.setattr(prefetch, "_cores", lambda: 4)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((3, 256, 256), np.uint8))
    with prefetch.first_input_prefetched([str(npy)], cache=False) as load:
        assert load(str(npy))[1] is None
    assert started == []


def test_leaving_early_stops_the_second_process(swapped, monkeypatch):
    monkeypatch.setattr(prefetch, "_cores", lambda: 2)
    with pytest.raises(RuntimeError, match="module failed to load"):
        with prefetch.first_input_prefetched([str(swapped)], cache=False):
            raise RuntimeError("module failed to load")  # before the image was wanted
    assert not [p for p in multiprocessing.active_children() if p.name == "mimir-prefetch"]


def test_an_unguarded_script_calling_the_cli_is_not_run_twice(swapped, tmp_path):
    """A spawned child re-imports the main script; one that calls the CLI at its top level without
    ``if __name__ == "__main__":`` would predict again there. The prefetch is skipped for it."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from mimir.cli import main\n"
        f"sys.argv = ['mimir', 'predict', {str(swapped)!r}, '-m', 'phantom-demo', '--no-cache']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("liver_fat_percent") == 1  # one table: the script ran once
    assert prefetch._spawn_is_safe()  # pytest's own main is guarded


def test_no_second_process_possible_means_reading_it_here(swapped, monkeypatch):
    monkeypatch.setattr(prefetch, "_cores", lambda: 2)

    class NoProcesses:
        def Pipe(self, duplex=True):  # noqa: N802 - multiprocessing's name
            raise OSError(24, "Too many open files")

    monkeypatch.setattr(prefetch.multiprocessing, "get_context", lambda method=None: NoProcesses())
    with prefetch.first_input_prefetched([str(swapped)], cache=False) as load:
        image, qc = load(str(swapped))
    assert image.shape == (3, 256, 256) and qc is not None
