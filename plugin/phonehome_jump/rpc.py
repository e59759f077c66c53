"""The ET Phone Home agent protocol (compatibility module).

The protocol now lives in three modules, by role: :mod:`.wire` (the framing both ends share),
:mod:`.agent_server` (requests → :class:`SessionManager`: ``Dispatcher``, ``AgentServer``,
``serve_agent``) and :mod:`.agent_client` (``RemoteAgent``). The names stay importable from
here.
"""

from __future__ import annotations

from .agent_client import (RemoteAgent, RemoteConnectError, RemoteError,  # noqa: F401
                           RemoteInventoryError, RemoteLimitError, RemoteSessionError,
                           RemoteUnknownSessionError, remote_error)
from .agent_server import (BACKLOG, CALLER_TIMEOUT, MAX_WAIT, AgentServer,  # noqa: F401
                           CommandParams, Dispatcher, OpenParams, ReadParams, SendParams,
                           StateFile, default_state_file, serve_agent)
from .wire import (INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, MAX_FRAME,  # noqa: F401
                   METHOD_NOT_FOUND, NOT_RESTORED, PARSE_ERROR, FrameError, RpcError, decode,
                   encode, error_reply, is_loopback, parse_listen, read_frame)
