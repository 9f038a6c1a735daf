"""Kernel functions a model may call: their schemas from their signatures, the checks on
what the model sends, the loop that runs the calls and asks again, and the prompted
protocol for models without a native tool template.

Below the router (which runs the loop for ``Router.complete(..., tools=[f, g])``), above
the values in ``model/``. Knows no provider, no notebook.
"""

from timmy_magic.tools.functions import Tool, ToolArgumentsError, result_text
from timmy_magic.tools.loop import Approve, PendingCall, ToolLoop

__all__ = ["Approve", "PendingCall", "Tool", "ToolArgumentsError", "ToolLoop", "result_text"]
