"""Build of mimir's one C extension, ``mimir.preprocessing._kernels`` (everything else is in pyproject.toml).

The extension is optional: where it cannot be compiled (no C compiler) the
install still succeeds, with a warning, and preprocessing runs its plain
NumPy code, which gives the same images more slowly (docs/performance.md).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Bit-identical results need IEEE arithmetic as written: no fast-math, and no
# contraction of a * b + c into one fused multiply-add (GCC contracts by default
# on targets that have FMA, such as aarch64).
_STRICT_FP = {"msvc": ["/fp:precise"], "unix": ["-ffp-contract=off", "-fno-fast-math"]}


class _BuildExt(build_ext):
    def build_extensions(self) -> None:
        flags = _STRICT_FP.get(self.compiler.compiler_type, _STRICT_FP["unix"])
        for ext in self.extensions:
            ext.extra_compile_args = [*flags, *ext.extra_compile_args]
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "mimir.preprocessing._kernels",
            sources=["mimir/preprocessing/_kernels.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": _BuildExt},
)
