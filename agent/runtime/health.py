"""Healthchecks, with Docker's semantics.

A check is a command run inside the container (`CMD args...`, or
`CMD-SHELL string` through /bin/sh -c) every `interval`; one that exits 0
within `timeout` passes. The container is "starting" until its first pass,
"healthy" after a pass, "unhealthy" after `retries` consecutive failures.
Failures during `start_period` do not count (a pass ends the start period
early). The last five results are kept with their output, as `docker
inspect` shows them.

The config comes from the task (highest precedence) or the image's
`Healthcheck` (durations in nanoseconds there); `["NONE"]` disables one the
image declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
LOG_KEEP = 5
OUTPUT_KEEP = 4096


class HealthConfigError(ValueError):
    pass


@dataclass
class HealthConfig:
    test: list[str]
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    start_period: float = 0.0
    retries: int = DEFAULT_RETRIES

    def command(self) -> list[str]:
        kind, rest = self.test[0], self.test[1:]
        if kind == "CMD-SHELL":
            return ["/bin/sh", "-c", " ".join(rest)]
        return rest

    @classmethod
    def parse(cls, d: dict[str, Any], where: str = "healthcheck") -> HealthConfig | None:
        """From our own form (seconds): {test, interval, timeout, start_period, retries}."""
        test = d.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        if not isinstance(test, list) or not test or not all(isinstance(t, str) for t in test):
            raise HealthConfigError(f"{where}.test: a command (list of strings, or a shell string)")
        if test[0] == "NONE":
            return None
        if test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2:
            raise HealthConfigError(f"{where}.test: must start with CMD or CMD-SHELL and name a command")
        out = cls(test=list(test))
        for key in ("interval", "timeout", "start_period"):
            v = d.get(key)
            if v is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise HealthConfigError(f"{where}.{key}: a non-negative number of seconds (got {v!r})")
            if key != "start_period" and v == 0:
                continue  # 0 means "default", as in Docker
            setattr(out, key, float(v))
        r = d.get("retries")
        if r is not None:
            if not isinstance(r, int) or isinstance(r, bool) or r < 0:
                raise HealthConfigError(f"{where}.retries: a non-negative integer (got {r!r})")
            out.retries = r or DEFAULT_RETRIES
        return out

    @classmethod
    def from_image(cls, hc: dict[str, Any] | None) -> HealthConfig | None:
        """From an image config's Healthcheck (Go durations in ns)."""
        if not hc or not hc.get("Test"):
            return None
        try:
            return cls.parse({
                "test": hc.get("Test"),
                "interval": (hc.get("Interval") or 0) / NS,
                "timeout": (hc.get("Timeout") or 0) / NS,
                "start_period": (hc.get("StartPeriod") or 0) / NS,
                "retries": hc.get("Retries") or 0,
            }, "image.Healthcheck")
        except (HealthConfigError, TypeError):
            return None  # an image's broken healthcheck is ignored, not fatal


def resolve(task: dict[str, Any] | None, image_config: dict[str, Any]) -> HealthConfig | None:
    """Task settings win over the image's; a task can disable the image's check."""
    if task is not None:
        return HealthConfig.parse(task)
    return HealthConfig.from_image(image_config.get("Healthcheck"))


@dataclass
class HealthState:
    status: str = "starting"  # starting | healthy | unhealthy
    failing_streak: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    def record(self, cfg: HealthConfig, started: float, begun: float, ended: float, exit_code: int,
               output: str) -> bool:
        """Account one probe; True if the status changed."""
        self.log.append({"start": begun, "end": ended, "exit_code": exit_code, "output": output[-OUTPUT_KEEP:]})
        del self.log[:-LOG_KEEP]
        before = self.status
        if exit_code == 0:
            self.failing_streak = 0
            self.status = "healthy"
        elif begun - started < cfg.start_period and self.status == "starting":
            pass  # still starting: failures do not count yet
        else:
            self.failing_streak += 1
            if self.failing_streak >= cfg.retries:
                self.status = "unhealthy"
        return self.status != before
