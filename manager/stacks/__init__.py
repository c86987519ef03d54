"""Stacks on the manager: the planner that turns a deploy request into one
store transaction (`plan`), and the leader's reaper that removes what
stacks gave up once nothing uses it (`reaper`)."""
