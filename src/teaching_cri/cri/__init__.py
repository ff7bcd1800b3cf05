"""The gRPC servicers: ``runtime.v1.RuntimeService`` and ``runtime.v1.ImageService``.

One module per RPC or small family, as containerd's ``internal/cri/server``
has one file per RPC. Each handler is thin, as iSulad's ``CRIV1`` services:
FromGRPC conversion, a call into the manager (``cb->container.*``), ToGRPC
conversion; and each opens its trace span with the ``@rpc`` line.
"""
