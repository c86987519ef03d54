"""The dispatcher: one long-lived session per agent, on the leader."""

from .dispatcher import Dispatcher, DispatcherSettings, DispatcherSettingsError

__all__ = ["Dispatcher", "DispatcherSettings", "DispatcherSettingsError"]
