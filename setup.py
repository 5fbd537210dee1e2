"""Builds the optional C pre-scan of formats/_fastpath.py; everything else is in pyproject.toml.

``optional=True``: without a compiler the install still succeeds and the pure-Python scan is used
(``modelkeep.formats._fastpath.SCANNER`` says which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "modelkeep.formats._plainscan",
            ["src/modelkeep/formats/_plainscan.c"],
            optional=True,
        )
    ]
)
