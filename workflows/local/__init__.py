"""The embedded engine: durable DAG runs in SQLite, no server needed.

One module per concept: `store` (the schema, its migrations, opening and checking state.db: the
one owner of that file), `views` (reading runs, steps, tries and events), `outcomes` (recording how
a step ended, and the failure handler) and `engine` (`LocalEngine`: submitting, claiming and
running steps, leases, cancellation).
"""

from workflows.engine import RunView, StepView
from workflows.local.engine import LocalEngine
from workflows.local.store import MIGRATIONS, SCHEMA, SCHEMA_VERSION, StateUnusable, Store

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "LocalEngine", "RunView", "StateUnusable", "StepView", "Store"]
