"""Stand-in for ET Phone Home's client/agent.py: the class whose handle_request serves the tunnel."""

from shared.protocol import Request, Response

OWN_SESSION_METHODS = ("ssh_session_open", "ssh_session_command", "ssh_session_send",
                       "ssh_session_read", "ssh_session_list", "ssh_session_close",
                       "ssh_session_restore")


class Agent:
    def __init__(self, allowed_paths=None):
        self.allowed_paths = allowed_paths

    def shutdown(self) -> None:     # never called by the client, as in the original
        pass

    def handle_request(self, request: Request) -> Response:
        if request.method == "heartbeat":
            return Response(id=request.id, result={"status": "alive"})
        if request.method == "client_name":
            return Response(id=request.id, result={"name": "stand-in"})
        if request.method in OWN_SESSION_METHODS:
            return Response(id=request.id, result={"answered_by": "the client's own agent"})
        return Response(id=request.id, error={"code": -32601,
                                              "message": f"Unknown method: {request.method}"})
