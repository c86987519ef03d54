"""The manager's control API served with aiohttp.

`server` assembles the routes of the handler modules (`cluster`, `nodes`,
`services`, `networks`, `secrets`, `configs`, `stacks`, `join`, `openapi`);
`common` is the request plumbing they share (the manager provider, bodies, barrier, commit, resolve);
`errors` is the one table from lower-layer errors to HTTP answers.
"""
