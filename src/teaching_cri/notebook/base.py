"""What the notebook's widgets share: a live view in JupyterLab, and a static
rendering of the same thing wherever no widget front end runs.

A Jupyter output carries several representations of one object; the page
shows the richest it can. A widget's own is only a reference to a model
that lives in the kernel, which nbclient, the book and a terminal IPython
cannot draw, so each widget adds what they can: SVG or text of what it shows
at that moment. JupyterLab with the widget manager picks the live view.
"""

from __future__ import annotations

from typing import Any

import anywidget


class LiveWidget(anywidget.AnyWidget):
    def fallback(self) -> dict[str, str]:
        """The static renderings, by MIME type ("text/plain" at least). Each
        widget gives its SVG or text of what it shows; this one only says what
        the output is, for a widget that has nothing better."""
        return {"text/plain": f"<{type(self).__name__}: live in JupyterLab>"}

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        live = super()._repr_mimebundle_(**kwargs)
        data, metadata = live if isinstance(live, tuple) else (live or {}, {})
        return {**data, **self.fallback()}, metadata
