"""A cloaked session: rewrite what the client sends, map back what the server answers.

Every client statement goes through the rewriter; what reaches the server holds
only physical names. Each request sent upstream gets a `Unit` in a FIFO that
says what its responses mean (a client statement to rename, a registry write to
hide, a refusal to replace, an internal query to collect), so responses are
mapped in order however far the client pipelines.

Registry access is in-band on the client's own connection (docs/cloaking-design.md
§8): loads are internal Queries sent at a message boundary while the client's
further input waits; DDL carries its registry writes in the same transaction as a
`DO` block. A refused statement is replaced by one the server rejects at parse
analysis, and that error by pgcloak's own: transaction state and response order
stay exactly as on a plain server, and nothing the client wrote is forwarded.

Module map (one native class, `CloakSession`, built as a chain of layers; mypyc
compiles the chain as one group, so attribute access stays a struct offset and
calls to methods no later layer overrides stay direct):

* cloak_units.py   - `Unit`, `Prepared`, unit kinds, Bind parsing helpers
* cloak_context.py - `CloakContext` (process-wide: key, rewriter, caches), config filters
* cloak_state.py   - `SessionState`: session state, registry views, the Unit FIFO
* cloak_load.py    - `RegistryLoader`: in-band registry load/refresh, internal Queries
* cloak_plan.py    - `Planner`: Query (fast/slow path) and Parse planning, DDL writes
* cloak_client.py  - `ClientSide`: client framing and message dispatch, COPY in
* cloak_server.py  - `ServerSide`: the upstream's responses (`_s_*` relay handlers)
* cloak.py         - `CloakSession`, and the names other modules import from here
"""

from __future__ import annotations

from pgcloak.proxy.cloak_context import CloakContext, encrypt_rules, table_filter
from pgcloak.proxy.cloak_server import ServerSide
from pgcloak.proxy.cloak_units import Prepared, Unit, map_bind_names, result_formats

__all__ = [
    "CloakContext",
    "CloakSession",
    "Prepared",
    "Unit",
    "encrypt_rules",
    "map_bind_names",
    "result_formats",
    "table_filter",
]


class CloakSession(ServerSide):
    """Both directions of one cloaked session; no sockets, only the two write callables."""
