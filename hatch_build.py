"""Build-time metadata of the rotor distribution: its dependency on rotor-client.

`pip install .` (and the editable install `make` does) takes rotor-client, and with it the
generated stubs, from this checkout's clients/python, wherever the checkout is. `make dist`
sets ROTOR_DIST=1: the published wheel and sdist then require the rotor-client release of
the same version (clients/python/rotor_client/_version.py), as an index can serve it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface

VERSION_FILE = Path("clients", "python", "rotor_client", "_version.py")


class RotorClientDependency(MetadataHookInterface):
    """Adds rotor-client to the dependencies listed under [tool.hatch.metadata.hooks.custom]."""

    def update(self, metadata: dict[str, Any]) -> None:
        root = Path(self.root)
        if os.environ.get("ROTOR_DIST"):
            found = re.search(r'__version__ = "([^"]+)"', (root / VERSION_FILE).read_text())
            if found is None:
                raise ValueError(f"no __version__ in {VERSION_FILE}")
            client = f"rotor-client=={found[1]}"
        else:
            client = f"rotor-client @ {(root / 'clients' / 'python').resolve().as_uri()}"
        metadata["dependencies"] = [client, *self.config.get("dependencies", [])]
