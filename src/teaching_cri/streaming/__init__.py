"""The exec/attach/port-forward streaming server (not built yet).

It will follow the seed's Websocket charts: a sans-I/O request cache and
protocol core, wrapped in a thin websocket layer, with sessions that do not
care which protocol (websocket now, SPDY later) carries their streams.
"""
