"""ExecSync (chart: diagrams/ExecSync.toml).

The seed: the container must be running, the command is converted
(ExecSyncFromGRPC), ``m_cb->container.exec`` runs it with string writers for
stdout and stderr (ours: the shim, at most 16 MiB each), and a timeout kills
the process (the shim SIGKILLs its process group: nothing is left behind).

The reply is one gRPC message, and a message is at most 16 MiB (the kubelet's
limit, and ours): 16 MiB of stdout plus anything at all would fail the whole
call with RESOURCE_EXHAUSTED, the exit code lost with the output. So both
streams together are cut to fit (``output fits ?``, ``cut output``), and
stderr ends with a note saying so: the CRI reply has no field for it, and
containerd and CRI-O cut theirs (16 MiB) without a word.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..config import MAX_MESSAGE_BYTES
from ..runtime.backend import ExecResult
from ..trace.tracer import annotate, decide, step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService

# Room left in the reply for the note and the message's own framing (a tag
# and a length before each stream, the exit code): a few dozen bytes, kept generous.
REPLY_HEADROOM = 4096
OUTPUT_BUDGET = MAX_MESSAGE_BYTES - REPLY_HEADROOM  # stdout + stderr, together
CUT_NOTE = (
    "\n[teaching-cri: ExecSync output cut to fit one {limit} MiB reply:"
    " stdout {stdout_kept} of {stdout_written} bytes, stderr {stderr_kept} of {stderr_written}]\n"
)


@rpc("ExecSync")
async def ExecSync(
    svc: RuntimeService, request: api_pb2.ExecSyncRequest, context: Context
) -> api_pb2.ExecSyncResponse:
    result = await svc.containers().exec_sync(
        request.container_id, list(request.cmd), int(request.timeout)
    )
    if not decide("output_fits", output_fits(result)):
        result = cut_output(result)
    return set_exit_code(result)


def output_fits(result: ExecResult) -> bool:
    """Everything the command wrote was kept, and it fits in one reply."""
    complete = len(result.stdout) >= result.stdout_written
    complete = complete and len(result.stderr) >= result.stderr_written
    return complete and len(result.stdout) + len(result.stderr) <= OUTPUT_BUDGET


def shares(stdout: int, stderr: int, budget: int) -> tuple[int, int]:
    """How many bytes of each stream to keep: half the budget each, and a
    stream that needs less than its half leaves the rest to the other."""
    half = budget // 2
    if stdout <= half:
        return stdout, min(stderr, budget - stdout)
    if stderr <= half:
        return min(stdout, budget - stderr), stderr
    return half, budget - half


@step("cut_output")
def cut_output(result: ExecResult) -> ExecResult:
    """The head of each stream, within the budget; the note at the end of stderr."""
    out_n, err_n = shares(len(result.stdout), len(result.stderr), OUTPUT_BUDGET)
    written_out = max(result.stdout_written, len(result.stdout))
    written_err = max(result.stderr_written, len(result.stderr))
    note = CUT_NOTE.format(
        limit=MAX_MESSAGE_BYTES >> 20,
        stdout_kept=out_n,
        stdout_written=written_out,
        stderr_kept=err_n,
        stderr_written=written_err,
    )
    annotate(stdout_kept=str(out_n), stderr_kept=str(err_n))
    return replace(
        result, stdout=result.stdout[:out_n], stderr=result.stderr[:err_n] + note.encode()
    )


@step("set_exit_code")
def set_exit_code(result: ExecResult) -> api_pb2.ExecSyncResponse:
    return api_pb2.ExecSyncResponse(
        stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
    )
