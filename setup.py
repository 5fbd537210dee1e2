"""Builds the optional C pre-scan of formats/_fastpath.py, the optional C check of a decision
tree's node links (formats/tree_links.py) and the optional C stat check of lineage.py; everything
else is in pyproject.toml.

``optional=True``: without a compiler the install still succeeds and the pure-Python code is used
(``modelkeep.formats._fastpath.SCANNER``, ``modelkeep.formats.tree_links.TREE_SCANNER`` and
``modelkeep.lineage.STAT_CHECK`` say which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "modelkeep.formats._plainscan",
            ["src/modelkeep/formats/_plainscan.c"],
            optional=True,
        ),
        Extension("modelkeep.formats._treelinks", ["src/modelkeep/formats/_treelinks.c"], optional=True),
        Extension("modelkeep._statscan", ["src/modelkeep/_statscan.c"], optional=True),
    ]
)
