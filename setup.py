"""Builds the optional C pre-scan of formats/_fastpath.py and the optional C stat check of
lineage.py; everything else is in pyproject.toml.

``optional=True``: without a compiler the install still succeeds and the pure-Python code is used
(``modelkeep.formats._fastpath.SCANNER`` and ``modelkeep.lineage.STAT_CHECK`` say which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "modelkeep.formats._plainscan",
            ["src/modelkeep/formats/_plainscan.c"],
            optional=True,
        ),
        Extension("modelkeep._statscan", ["src/modelkeep/_statscan.c"], optional=True),
    ]
)
