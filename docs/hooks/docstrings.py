"""MkDocs hook: render the reStructuredText bits of rush_dask's docstrings.

The docstrings are written for ``help()`` and doctest: examples are bare
``>>>`` blocks and cross-references are Sphinx roles. This hook adds a
Markdown preprocessor, used by the pages and by mkdocstrings alike, that

* turns each ``>>>`` block (up to the next blank line) into a fenced
  ``pycon`` code block, without the ``# doctest: +SKIP`` markers;
* turns ``:class:`~rush_dask.Rush``` (and ``:meth:``, ``:func:``, ...)
  into inline code ``Rush``;
* turns the reST ``text::`` that opens a literal block into ``text:`` (the
  indented block is a Markdown code block already).
"""

from __future__ import annotations

import re

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):`~?([^`]+)`")
_SKIP = re.compile(r"\s*#\s*doctest:\s*\+\w+\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class _DoctestBlocks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        in_fence = False
        in_doctest = False
        indent = ""
        for line in lines:
            if in_doctest:
                if line.strip():
                    out.append(indent + _SKIP.sub("", line[len(indent) :]))
                    continue
                out += [indent + "```", ""]
                in_doctest = False
            if _FENCE.match(line):
                in_fence = not in_fence
            elif not in_fence and line.lstrip().startswith(">>>"):
                indent = line[: len(line) - len(line.lstrip())]
                if out and out[-1].strip():
                    out.append("")
                out += [indent + "```pycon", indent + _SKIP.sub("", line[len(indent) :])]
                in_doctest = True
                continue
            if not in_fence:
                line = _ROLE.sub(lambda m: f"`{m.group(1).split('.')[-1]}`", line)
                if line.rstrip().endswith("::") and not line.lstrip().startswith(":::"):
                    line = line.rstrip()[:-1]  # reST "text::" before a literal block
            out.append(line)
        if in_doctest:
            out.append(indent + "```")
        return out


class DocstringExtension(Extension):
    def extendMarkdown(self, md) -> None:  # Python-Markdown's name
        md.preprocessors.register(_DoctestBlocks(md), "rush_doctest_blocks", 40)  # before fenced_code (25)


@event_priority(100)  # before mkdocstrings copies the extension list
def on_config(config):
    config.markdown_extensions.append(DocstringExtension())
    return config
