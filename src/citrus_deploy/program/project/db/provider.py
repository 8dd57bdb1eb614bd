"""`db.provider`, the pickled path of the row providers in earlier stacks' states: the classes
now live in citrus_deploy.program.rows."""

from citrus_deploy.program.rows import (
    AgentRow,
    AgentRowProvider,
    ServerRow,
    ServerRowProvider,
)

__all__ = ["AgentRow", "AgentRowProvider", "ServerRow", "ServerRowProvider"]
