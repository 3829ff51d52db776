"""``sidecar mcp``: a Model Context Protocol server on stdio, in front of the daemon.

It is a client of the daemon like any other (it reaches it only through ``sidecar_client``),
so a model gets the log, the task graph and the context through MCP without a second copy of
any rule: the tools' input schemas come from the daemon's own ``rpc.discover``, and the
daemon's gate still refuses user-visible appends. Needs the ``mcp`` extra (docs/mcp.md).
"""
