"""phonehome-jump: persistent, prompt-framed SSH sessions through jump-host chains.

Layers, in order of dependency: :mod:`inventory` (YAML → resolved targets) → :mod:`chain`
(shared hop transports) → :mod:`session` (one framed shell) → :mod:`manager` (owns sessions).
Adapters (:mod:`cli`, :mod:`mcp_server`, the ET Phone Home agent :mod:`rpc`) call only the
manager; :mod:`routing` sends the MCP server's sessions to per-site agents.
"""

from .errors import PhonehomeJumpError

__all__ = ["PhonehomeJumpError", "__version__"]
__version__ = "0.1.0"
