"""UNIMPLEMENTED, with the RPC named, for every RPC whose issue has not landed.

grpcio's generated base classes answer "Method not implemented!"; a learner
(or the kubelet's log) should instead see which RPC was called. Every method
of the service descriptor that the servicer class does not define gets a
handler that says so; as issues land, their modules replace these.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from ..api import Context

T = TypeVar("T", bound=type)


def _unimplemented(full_name: str) -> Any:
    async def handler(self: object, request: object, context: Context) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{full_name} is not implemented by teaching-cri yet"
        )

    handler.__name__ = full_name.rsplit("/", 1)[-1]
    handler.__doc__ = f"{full_name}: not implemented yet (answers UNIMPLEMENTED)."
    return handler


def fill_unimplemented(service: ServiceDescriptor) -> Any:
    """Class decorator: give ``cls`` a named UNIMPLEMENTED handler for every RPC of
    ``service`` it does not define itself."""

    def decorate(cls: T) -> T:
        missing = []
        for method in service.methods:
            if method.name not in cls.__dict__:
                setattr(cls, method.name, _unimplemented(f"/{service.full_name}/{method.name}"))
                missing.append(method.name)
        cls.UNIMPLEMENTED = tuple(missing)  # type: ignore[attr-defined]
        return cls

    return decorate


def implemented(cls: type, service: ServiceDescriptor) -> list[str]:
    """The RPCs of ``service`` that ``cls`` really implements."""
    missing = set(getattr(cls, "UNIMPLEMENTED", ()))
    return [m.name for m in service.methods if m.name not in missing]
