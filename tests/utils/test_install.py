"""Install hints: one helper says how to install an extra, right for a release and for a checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mimir.utils import install
from mimir.utils.install import checkout_command, extra_help, extra_hint, release_command, source_checkout

ROOT = Path(__file__).resolve().parents[2]


def test_the_distribution_is_ukb_mimir_and_the_commands_are_right() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^name = "ukb-mimir"$', text, re.MULTILINE)
    assert release_command("report") == "pip install 'ukb-mimir[report]'"
    assert checkout_command("report") == "pip install -e '.[report]'"
    assert extra_help("ray") == "pip install 'ukb-mimir[ray]' (in a checkout: pip install -e '.[ray]')"
    for extra in install.EXTRAS:  # every extra the hints name exists in pyproject.toml
        assert re.search(rf"^{extra} = \[", text, re.MULTILINE), extra


def test_hint_in_a_checkout_names_the_checkout() -> None:
    assert source_checkout() == ROOT  # these tests run from the checkout (editable install)
    hint = extra_hint("report")
    assert hint == f"Install the report extra (matplotlib and jinja2): pip install -e '{ROOT}[report]'."


def test_hint_of_an_installed_release_names_the_distribution(tmp_path: Path) -> None:
    # a copy of the module outside any checkout, as in site-packages
    pkg = tmp_path / "site" / "mimir" / "utils"
    pkg.mkdir(parents=True)
    shutil.copy(install.__file__, pkg / "install.py")
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('m', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.extra_hint('codecs'))")
    out = subprocess.run([sys.executable, "-c", code, str(pkg / "install.py")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ("Install the codecs extra (pylibjpeg and its libjpeg, openjpeg and rle plugins): "
                   "pip install 'ukb-mimir[codecs]'.")


def test_no_hint_anywhere_names_the_wrong_distribution() -> None:
    """`pip install mimir` / `'mimir[x]'` would install an unrelated PyPI project."""
    wrong = re.compile(r"""pip install\s+(-e\s+)?["']?mimir(\[|["'\s]|$)""", re.MULTILINE)
    places = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("mimir/**/*.py"), *ROOT.glob("examples/*"),
              *ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")]
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in places if p.is_file()
           for m in wrong.finditer(p.read_text(errors="replace"))]
    assert bad == []


def test_runtime_hints_come_from_the_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    from mimir.batch.ray_engine import import_ray
    from mimir.errors import UsageError
    from mimir.outputs import figures

    monkeypatch.setitem(sys.modules, "ray", None)  # "not installed"
    with pytest.raises(UsageError) as err:
        import_ray()
    assert str(err.value).endswith(extra_hint("ray"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError) as err:
        figures.require_matplotlib("explain")
    assert str(err.value).endswith(extra_hint("report"))
    from mimir.analysis.evaluate import _need_report_extra
    from mimir.inference.registration import require_simpleitk
    from mimir.outputs.nifti import require_nibabel
    from mimir.outputs.parquet import require_pyarrow

    with pytest.raises(UsageError) as err:
        _need_report_extra()
    assert extra_hint("report").rstrip(".") in str(err.value)
    for module, extra, require in (("nibabel", "volumes", lambda: require_nibabel("preprocess --volumes")),
                                   ("pyarrow", "parquet", require_pyarrow),
                                   ("SimpleITK", "register", require_simpleitk)):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(UsageError) as err:
            require()
        assert str(err.value).endswith(extra_hint(extra)), extra
        assert f"'{ROOT}[{extra}]'" in str(err.value)  # in this checkout: the checkout's command


def test_no_runtime_hint_hard_codes_the_release_command() -> None:
    """A literal `pip install 'ukb-mimir[...]'` in a message would be wrong in a checkout: use extra_hint."""
    literal = re.compile(r"""(hint=|HINT\s*=|raise \w+\().*pip install '?ukb-mimir\[""")
    bad = [f"{p.relative_to(ROOT)}: {line.strip()}" for p in ROOT.glob("mimir/**/*.py")
           for line in p.read_text().splitlines() if literal.search(line)]
    assert bad == []
