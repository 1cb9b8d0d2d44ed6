"""Builds the optional compiled pre-check module (gateway/_precheck.pyx, Cython); everything else is in
pyproject.toml. The extension is optional: where it cannot be compiled (no C compiler or Python headers, or
Cython missing from a build without isolation), the install goes on and the gateway runs the pure-Python
parsers (gateway/jose/precheck.py says which is active)."""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pip's isolated build always has it (pyproject.toml [build-system] requires)
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("gateway._precheck", ["gateway/_precheck.pyx"], optional=True)],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
