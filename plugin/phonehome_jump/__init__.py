"""phonehome-jump: persistent, prompt-framed SSH sessions through jump-host chains.

Layers, in order of dependency: :mod:`inventory` (YAML → resolved targets) → :mod:`chain`
(shared hop transports) → :mod:`session` (one framed shell) → :mod:`manager` (owns sessions).
Adapters (:mod:`cli`, later MCP and the ET Phone Home agent) call only the manager.
"""

from .errors import PhonehomeJumpError

__all__ = ["PhonehomeJumpError", "__version__"]
__version__ = "0.1.0"
