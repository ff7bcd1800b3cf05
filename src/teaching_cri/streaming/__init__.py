"""The exec/attach/port-forward streaming server.

It follows the seed's Websocket charts: a sans-I/O request cache
(``request_cache.py``) and channel protocol core (``channel.py``), a thin
websocket layer on the websockets library (``server.py``), sessions that do
not care which protocol carries their streams (``session.py``), and
port-forward into a pod's network namespace (``portforward.py`` over
``nsconnect.py``). SPDY/3.1, which a stock kubelet and crictl speak, is not
built yet.
"""
