"""teaching-cri: a heavily instrumented Python reimplementation of iSulad's CRI manager.

The layers mirror iSulad's so a learner can lay one over the other:

- ``cri``: the gRPC servicers (iSulad's ``src/daemon/entry/connect/grpc/cri`` and
  ``entry/cri/v1``): FromGRPC conversion, a call into the manager, ToGRPC conversion.
- ``manager``: what iSulad's ``cb->container.*`` callbacks do.
- ``store``: the container and sandbox stores (index, id lookup, names, records,
  the load policy), apart from the flows as in containerd's ``internal/cri/store``.
- ``runtime``: OCI bundles, the shim and the backends.
- ``image``: content store, registry client, unpacking, snapshots.
- ``streaming``: the exec/attach/port-forward streaming server.
- ``trace``: events, sinks, the live trace service and the chart renderer.
- ``notebook``: a server and widgets for JupyterLab.
"""

__version__ = "0.1.0"
