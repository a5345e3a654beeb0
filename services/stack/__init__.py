"""The local stack behind `mrdiff up`: S3 (nanio), Prefect server, a Ray head, the pipeline.

:data:`~services.stack.components.COMPONENTS` lists the processes (add one in one line);
:class:`~services.stack.supervisor.Stack` starts, watches and stops them.
"""

from services.stack.components import COMPONENTS, StackPlan
from services.stack.process import ProcessSpec, RunningProcess
from services.stack.supervisor import ComponentStatus, Stack, StackError

__all__ = [
    "COMPONENTS",
    "ComponentStatus",
    "ProcessSpec",
    "RunningProcess",
    "Stack",
    "StackError",
    "StackPlan",
]
