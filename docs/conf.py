"""Sphinx configuration of taskmgr's documentation.

Build from the repository's root, with warnings as errors::

    pip install -e '.[docs]'
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The API reference documents the public names only (``taskmgr.__all__``,
``taskmgr.testing``, ``taskmgr.rest.create_app``), never the private modules
behind them, so the code behind those names can move without breaking the
build. Warnings raised by the docstrings of the package itself are reported
(on stderr, as ``docstring warning: ...``) without failing the build: they are
the code owners' to fix. Set ``TASKMGR_DOCS_STRICT=1`` to make them fail it
like any other warning.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.logging import WarningStreamHandler, get_node_location

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import taskmgr  # importable from the checkout, installed or not
from taskmgr import TRANSITIONS, TaskStatus

project = "taskmgr"
author = "the taskmgr authors"
copyright = "the taskmgr authors"
release = taskmgr.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "An embedded task manager", "page_width": "1100px"}

# Unresolved cross references in the package's docstrings (to private modules such as
# taskmgr.store, or to peewee's classes) stay plain text instead of failing the build.
nitpicky = False
default_role = "literal"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# The REST API's module imports Falcon, an optional extra (``server``): stand it in when it is
# not installed, so the docs build needs only the package's own dependencies.
autodoc_mock_imports = [name for name in ("falcon", "waitress") if importlib.util.find_spec(name) is None]


class TransitionTable(Directive):
    """``.. transition-table::``: the table of allowed moves, read from ``taskmgr.TRANSITIONS``."""

    def run(self) -> list[nodes.Node]:
        order = list(TaskStatus)
        rows = []
        for frm in order:
            tos = [s.name for s in order if s in TRANSITIONS[frm]]
            rows.append((frm.name, ", ".join(tos) if tos else "nothing (terminal)"))
        width = max(len(f) for f, _ in rows)
        rule = "=" * width + "  " + "=" * max(len(t) for _, t in rows)
        lines = [rule, "from".ljust(width) + "  to", rule]
        lines += [f.ljust(width) + "  " + t for f, t in rows]
        lines.append(rule)
        node = nodes.container()
        self.state.nested_parse(StringList(lines, source="taskmgr.TRANSITIONS"), self.content_offset, node)
        return list(node.children)


def _data_docs(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """The ``#:`` comment of a module-level constant re-exported by ``taskmgr``.

    autodoc looks for it in the module it documents (``taskmgr``), not in the private module
    that defines it, and otherwise shows the docstring of the value's type (``frozenset``,
    ``str``): find the module that holds the same object, and take the comment from there."""
    if what != "data" or not name.startswith("taskmgr."):
        return
    short = name.rsplit(".", 1)[1]
    for modname in sorted(m for m in sys.modules if m == "taskmgr" or m.startswith("taskmgr.")):
        if getattr(sys.modules[modname], short, lines) is not obj:
            continue
        try:
            found = ModuleAnalyzer.for_module(modname).find_attr_docs().get(("", short))
        except PycodeError:
            continue
        if found:
            lines[:] = [*found, ""]
            return
    type_doc = type(obj).__doc__
    if type_doc and lines and " ".join(lines).split() == type_doc.split():
        lines[:] = []


def _public_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``taskmgr.<private module>.<name>`` (how the docstrings name things) to the public
    ``taskmgr.<name>`` that this reference documents, when there is one."""
    if node.get("refdomain") != "py":
        return None
    parts = str(node.get("reftarget", "")).split(".")
    if len(parts) < 3 or parts[0] != "taskmgr":
        return None
    public = ".".join([parts[0], *parts[2:]])
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"], public, node,
                                             contnode)


class _DocstringWarnings(logging.Filter):
    """Turn a warning whose source is a docstring of the package into a note on stderr.

    Put first on Sphinx's warning handler, before the filter that counts warnings (and, with
    ``-W``, fails the build), so what it takes out is neither counted nor raised."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        location = getattr(record, "location", None)
        if isinstance(location, nodes.Node):
            where = get_node_location(location) or ""
        elif isinstance(location, str):
            where = location
        else:  # (docname, line): a page of these docs, not a docstring
            where = ""
        if "docstring of taskmgr" not in where:
            return True
        text = f"{where}: {record.getMessage()}"
        if text not in self.seen:
            self.seen.append(text)
            print(f"docstring warning: {text}", file=sys.stderr)
        return False


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("transition-table", TransitionTable)
    app.connect("missing-reference", _public_name)
    app.connect("autodoc-process-docstring", _data_docs)
    if os.environ.get("TASKMGR_DOCS_STRICT") != "1":
        demote = _DocstringWarnings()
        for handler in logging.getLogger("sphinx").handlers:
            if isinstance(handler, WarningStreamHandler):
                handler.filters.insert(0, demote)

        def report(app: Any, exc: Exception | None) -> None:
            if demote.seen:
                print(f"docs: {len(demote.seen)} warning(s) from the package's docstrings, not counted as errors "
                      "(TASKMGR_DOCS_STRICT=1 counts them)", file=sys.stderr)

        app.connect("build-finished", report)
    return {"parallel_read_safe": True}
