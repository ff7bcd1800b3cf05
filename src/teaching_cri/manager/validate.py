"""What a pod or container config may ask for, checked before anything exists.

The kubelet validates a pod before it sends it (``pkg/apis/core/validation``
in kubernetes/kubernetes): names are DNS-1123, at most 253 characters; a
device's path in the container is absolute; ``oomScoreAdj`` is the kernel's
-1000..1000; a pod's annotations total at most 256 KiB. A CRI server answers
anyone who can open its socket (crictl, critest, a script), so it checks again
what would otherwise fail late, cryptically, or somewhere it must not: a name
with ``/`` or a newline in it, a log file opened through a symlink, one
container's megabytes of annotations in every ListContainers reply.

Each function checks one thing and raises INVALID_ARGUMENT naming the field,
the value (clipped) and the rule. CreateContainer calls :func:`container_config`
from its ``validate container config`` step, and :func:`log_path` from
``UpdateCreateConfig``; RunPodSandbox calls :func:`pod_metadata` from
``PrepareSandboxData``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from ..api import api_pb2
from ..errors import InvalidArgument

NAME_MAX = 253  # DNS-1123 subdomain's length limit (k8s' DNS1123SubdomainMaxLength)
# DNS-1123's characters, upper case too: critest names its pods "PodSandbox-for-...".
# No "_" (it separates the parts of k8s_<container>_<pod>_...), no "/", no
# control character, nothing that starts with "." (so neither "." nor "..").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
NAME_RULE = f"1 to {NAME_MAX} letters, digits, '-' and '.', starting with a letter or digit"

FILE_NAME_MAX = 255  # bytes in one path component (NAME_MAX of limits.h)
PATH_MAX = 4095  # bytes in a whole path, the terminating NUL not counted
OOM_SCORE_ADJ_RANGE = range(-1000, 1001)  # the kernel's (and the kubelet's) bounds
# What one container's labels and annotations may weigh, keys and values
# together: the kubelet's own limit for a pod's annotations (TotalAnnotationSizeLimitB).
# A ListContainers reply carries every container's; 60 of them at most fill it.
METADATA_BUDGET = 256 << 10


def clip(value: str, limit: int = 60) -> str:
    """A value for an error message: repr'd, and cut if it is long."""
    shown = repr(value[:limit])
    return shown if len(value) <= limit else f"{shown}... ({len(value)} characters)"


def name(field: str, value: str) -> None:
    """A name the kubelet could have sent (the rule is :data:`NAME_RULE`)."""
    if not value:
        raise InvalidArgument(f"{field} is empty")
    if len(value) > NAME_MAX or not _NAME.fullmatch(value):
        raise InvalidArgument(f"{field} {clip(value)} is not a valid name: {NAME_RULE}")


def pod_metadata(metadata: api_pb2.PodSandboxMetadata) -> None:
    """The pod's name, namespace and uid, which make its k8s_POD_ name."""
    for field in ("name", "namespace", "uid"):
        name(f"pod sandbox metadata: {field}", getattr(metadata, field))


def container_name(config: api_pb2.ContainerConfig) -> None:
    name("container config: metadata.name", config.metadata.name)


def device_paths(config: api_pb2.ContainerConfig) -> None:
    """A device is made at an absolute path in the container ("x" would be
    relative to whatever runc's working directory is, "../x" outside /dev's
    intent), from an absolute path on the host."""
    for i, d in enumerate(config.devices):
        for field in ("container_path", "host_path"):
            path = getattr(d, field)
            if not path.startswith("/") or ".." in PurePosixPath(path).parts or "\0" in path:
                raise InvalidArgument(
                    f"devices[{i}].{field} {clip(path)} must be an absolute path without '..'"
                )


def oom_score_adj(config: api_pb2.ContainerConfig) -> None:
    value = config.linux.resources.oom_score_adj
    if value not in OOM_SCORE_ADJ_RANGE:
        raise InvalidArgument(
            f"resources: oom_score_adj {value} is outside -1000..1000, the kernel's range"
        )


def read_only_mounts(config: api_pb2.ContainerConfig) -> None:
    """``recursive_read_only``, as api.proto's Mount comment puts it: "when set
    to true, readonly must be explicitly set to true, and propagation must be
    PRIVATE (0)". The mount itself is made with runc's ``rro``
    (``runtime.spec.config_mounts``)."""
    for i, m in enumerate(config.mounts):
        if not m.recursive_read_only:
            continue
        if not m.readonly:
            raise InvalidArgument(
                f"mounts[{i}] ({clip(m.container_path)}): recursive_read_only needs readonly"
            )
        if m.propagation != api_pb2.PROPAGATION_PRIVATE:
            given = api_pb2.MountPropagation.Name(m.propagation)
            raise InvalidArgument(
                f"mounts[{i}] ({clip(m.container_path)}): recursive_read_only needs "
                f"propagation PROPAGATION_PRIVATE, not {given}"
            )


def metadata_size(config: api_pb2.ContainerConfig) -> None:
    """Labels and annotations together within :data:`METADATA_BUDGET`, so that
    no container can make ListContainers too big to send to every client."""
    size = sum(len(k) + len(v) for k, v in config.labels.items())
    size += sum(len(k) + len(v) for k, v in config.annotations.items())
    if size > METADATA_BUDGET:
        raise InvalidArgument(
            f"container config: labels and annotations weigh {size} bytes; "
            f"at most {METADATA_BUDGET} (256 KiB, the kubelet's limit for a pod's annotations)"
        )


def container_config(config: api_pb2.ContainerConfig) -> None:
    """Every check of a container's config that needs nothing but the config."""
    container_name(config)
    metadata_size(config)
    device_paths(config)
    read_only_mounts(config)
    oom_score_adj(config)


def log_path(directory: str, relative: str) -> str:
    """The container's log file: ``relative`` under the pod's log directory,
    staying there. Nothing on the way may be a symlink (the log would be
    written wherever it points) and the file, if it exists, must be a regular
    file (a FIFO would block the shim). The shim opens it with O_NOFOLLOW too."""
    if "\0" in relative or "\0" in directory:
        raise InvalidArgument(f"log_path {clip(relative)}: a path cannot contain NUL")
    if not directory.startswith("/"):
        raise InvalidArgument(
            f"log_path is set but the sandbox's log_directory {clip(directory)} is not absolute"
        )
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or ".." in parts or not parts:
        raise InvalidArgument(f"log_path {clip(relative)} must name a file in log_directory")
    if any(len(os.fsencode(p)) > FILE_NAME_MAX for p in parts) or len(relative) > PATH_MAX:
        raise InvalidArgument(
            f"log_path {clip(relative)}: a name over {FILE_NAME_MAX} bytes "
            f"or a path over {PATH_MAX}"
        )
    path = Path(directory)
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            break  # made by the runtime, a real directory or file
        except OSError as exc:
            raise InvalidArgument(f"log_path {clip(relative)}: {exc.strerror}") from None
        if stat.S_ISLNK(mode):
            raise InvalidArgument(
                f"log_path {clip(relative)} must stay in log_directory: "
                f"{clip(str(path))} is a symlink"
            )
        wanted, ok = (
            ("regular file", stat.S_ISREG(mode))
            if i == len(parts) - 1
            else ("directory", stat.S_ISDIR(mode))
        )
        if not ok:
            raise InvalidArgument(f"log_path {clip(relative)}: {clip(str(path))} is not a {wanted}")
    return str(Path(directory, *parts))
