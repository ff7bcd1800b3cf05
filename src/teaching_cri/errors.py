"""Errors that carry their gRPC status code.

The manager raises these; the CRI layer (``cri/_rpc.py``) turns them into the
status the kubelet sees. iSulad maps errors by their text ("Failed to find" →
NOT_FOUND, everything else UNKNOWN, in ``ToGRPCStatus``); naming the code where
the error is raised keeps that decision next to the reason for it.
"""

from __future__ import annotations

import grpc


class CRIError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(CRIError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CRIError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CRIError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CRIError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(CRIError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(CRIError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(CRIError):
    code = grpc.StatusCode.INTERNAL


class DeadlineExceeded(CRIError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(CRIError):
    code = grpc.StatusCode.UNAVAILABLE
