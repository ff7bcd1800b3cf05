"""The stores: what the CRI flows remember, apart from the flows themselves.

As containerd keeps ``internal/cri/store/container`` and ``store/sandbox``
apart from ``criService``: a store holds the in-memory index (so ListContainers,
called every second, reads no file), the lookup by unique id prefix
(GetRealContainerOrSandboxID), the names reserved while a create runs, the
records on disk (written whole or not at all) and the one load policy.
The managers (``manager/``) hold the flows and take the stores.
"""
