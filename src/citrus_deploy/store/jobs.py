"""The queue's job kinds: the names the store's inserts write into the jobs they make, and the
queue's tasks are registered under (queue/tasks.py). Defined once, for both sides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEPLOY_QUEUE = "deployments"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (DEPLOY_QUEUE, MAINTENANCE_QUEUE)


@dataclass(frozen=True)
class JobKind:
    task_name: str
    queue: str
    priority: int = 0

    def params(self) -> dict[str, Any]:
        """The SQL parameters citrus_defer_job takes for this kind."""
        return {"queue": self.queue, "task_name": self.task_name, "priority": self.priority}


DEPLOY = JobKind("citrus.deploy", DEPLOY_QUEUE)
DESTROY = JobKind("citrus.destroy", DEPLOY_QUEUE)
CHECK = JobKind("citrus.check", DEPLOY_QUEUE)
STALE_CHECK = JobKind("citrus.stale_check", MAINTENANCE_QUEUE)
