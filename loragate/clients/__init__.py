"""Clients of a running gateway. Imports neither torch nor vLLM.

The OpenAI SDK helpers are here. LangChain (`loragate.clients.langchain`) and the tutorial's
`requests` client (`loragate.clients.legacy`) need the `clients` extra: their own modules.
"""

from loragate.clients.openai_client import (
    GatewaySettings,
    alist_personas,
    async_gateway_client,
    gateway_client,
    list_personas,
    served_base_model,
)
from loragate.wire import PersonaInfo

__all__ = [
    "GatewaySettings",
    "PersonaInfo",
    "alist_personas",
    "async_gateway_client",
    "gateway_client",
    "list_personas",
    "served_base_model",
]
