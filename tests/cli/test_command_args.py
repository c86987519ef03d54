"""Everything after the image is the container's command, as in
`docker service create [OPTIONS] IMAGE [COMMAND] [ARG...]`: a command's own
options (`nc -e`, `sh -c`) never reach orch's option parser."""

from __future__ import annotations

from cli.engine import container_exec, container_run
from cli.service import create


def test_service_create_leaves_the_command_alone() -> None:
    ctx = create.make_context("create", ["--name", "api", "-e", "A=1", "img", "busybox", "nc", "-ll", "-p", "9000",
                                         "-e", "busybox", "sh", "/app/api.sh"])
    assert ctx.params["env"] == ("A=1",)
    assert ctx.params["image"] == "img"
    assert ctx.params["args"] == ("busybox", "nc", "-ll", "-p", "9000", "-e", "busybox", "sh", "/app/api.sh")


def test_container_run_and_exec_leave_the_command_alone() -> None:
    ctx = container_run.make_context("run", ["-d", "img", "nc", "-e", "cat", "--name", "x"])
    assert ctx.params["name"] is None and ctx.params["env"] == ()
    assert ctx.params["cmd"][-4:] == ("-e", "cat", "--name", "x")
    ctx = container_exec.make_context("exec", ["c1", "sh", "-c", "echo hi", "-u", "0"])
    assert ctx.params["user"] in ("", None) and ctx.params["cmd"][-2:] == ("-u", "0")
