"""Compose files for `orch stack deploy`: the parser, the model, the
normalised file (`stack config`) and the conversion to orch's objects.

Sans-I/O: the core takes texts, a file name each, the environment as a
mapping and a `FileAccess` for the files they name; `load_paths` (in
`api.compose.files`) is the disk-reading shell.

    loaded = load([Source("stack.yml", text)], environ=os.environ, files=DiskFiles())
    print(dump_config(loaded.project))
    specs = to_specs(loaded.project, "mystack", environment=loaded.environment, places=loaded.places)
"""

from .config import dump_config, to_config
from .convert import (
    NAMESPACE_LABEL,
    ORCH_STACK_LABEL,
    PublishedPort,
    StackBlob,
    StackNetwork,
    StackService,
    StackSpecs,
    StackVolume,
    to_specs,
)
from .diagnostics import ComposeError, Diagnostic, Place
from .files import DiskFiles, load_paths
from .loader import NO_FILES, FileAccess, Loaded, MemoryFiles, Source, SourceMap, load
from .model import Project

__all__ = [
    "ComposeError", "Diagnostic", "Place",
    "Source", "FileAccess", "MemoryFiles", "NO_FILES", "DiskFiles", "SourceMap", "Loaded",
    "load", "load_paths",
    "Project", "to_config", "dump_config",
    "to_specs", "StackSpecs", "StackService", "StackNetwork", "StackVolume", "StackBlob", "PublishedPort",
    "NAMESPACE_LABEL", "ORCH_STACK_LABEL",
]
