"""Griffe extensions for the docs build.

``PlainRoles`` renders the Sphinx roles some docstrings use (``:class:`X```) as inline code.

"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|exc|obj):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class PlainRoles(griffe.Extension):
    """Render Sphinx roles (``:class:`X```, ``:func:`~a.b```) as inline code, as Markdown shows them."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
