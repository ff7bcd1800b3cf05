"""teaching-cri in a notebook: a live server, and widgets that draw its calls.

    from teaching_cri.notebook import start
    lab = start()                      # a private server for this kernel
    lab.call(lab.runtime.Version, api_pb2.VersionRequest())   # its chart lights up

``start()`` runs ``teaching-cri serve`` for the kernel and cleans up after it;
``connect(socket)`` uses a server that is already running. The widgets
(ChartView, Timeline, PullProgress, Terminal) are live in JupyterLab and fall
back to SVG or text wherever no widget front end runs.
"""

from .chart import ChartView
from .lab import LOCAL_IMAGE, CallFailed, Lab, ServerGone, connect, start
from .progress import PullProgress
from .terminal import Terminal, frames
from .timeline import Timeline

__all__ = [
    "LOCAL_IMAGE",
    "CallFailed",
    "ChartView",
    "Lab",
    "PullProgress",
    "ServerGone",
    "Terminal",
    "Timeline",
    "connect",
    "frames",
    "start",
]
