"""Pulumi components of citrus-deploy."""

from components.agent_server import AgentServer

__all__ = ["AgentServer"]
