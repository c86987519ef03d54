"""The `orch daemon` process: the only package that imports both the agent
and the manager (as SwarmKit's node/node.go).

`node` composes them (NodeDaemon, NodeOptions), `main` runs that as a
process, `membership` is init/join/leave/promote/demote, `localapi` the
local unix socket's own routes, `options` turns the command's flags into
NodeOptions, `settings` holds the plain-value settings and their checks.

Nothing here imports the manager at module level: a worker never loads it.
"""
