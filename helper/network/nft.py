"""Running libnftables JSON transactions.

Two interchangeable backends speak the same JSON (`{"nftables": [...]}`), and each document is
one kernel transaction either way (nft batches every command of a document):

- `LibNftables`: the distribution's `nftables` Python binding (Debian: python3-nftables), a thin
  ctypes wrapper over libnftables.so.1, in-process and fast. The helper's venv does not see the
  system site-packages, and adding /usr/lib/python3/dist-packages to `sys.path` would let every
  other system package shadow the venv's, so only this one package is loaded from the system
  location, by path, without touching `sys.path`.
- `NftCommand`: `nft -j -f -` with the document on stdin; needs only the `nft` binary.

`default_backend()` prefers the binding and falls back to the command; `COI_NFT_BACKEND`
(`libnftables` or `command`) forces one (tests run both).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from typing import Any, Protocol

from coi.helper.network.errors import FirewallError

Json = dict[str, Any]

# Where distributions install the binding for their system Python.
_SYSTEM_SITE_DIRS = (
    "/usr/lib/python3/dist-packages",
    "/usr/lib/python3/site-packages",
    f"/usr/lib/python3.{sys.version_info.minor}/site-packages",
    f"/usr/lib64/python3.{sys.version_info.minor}/site-packages",
)


class NftBackend(Protocol):
    """Runs one libnftables JSON document as one transaction and returns its JSON output."""

    name: str

    def run(self, commands: list[Json], terse: bool = False) -> list[Json]:
        """Run `commands` atomically; return the `nftables` array of the output (may be empty).

        `terse` leaves set elements out of listings.
        """
        ...


def _document(commands: list[Json]) -> Json:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def _output(raw: object) -> list[Json]:
    if isinstance(raw, dict):
        items = raw.get("nftables", [])
        return [i for i in items if isinstance(i, dict) and "metainfo" not in i]
    return []


def _load_system_binding() -> Any:
    """Import the `nftables` binding, from the venv if it has one, else from the system."""
    try:
        import nftables  # type: ignore[import-not-found, unused-ignore]

        return nftables
    except ImportError:
        pass
    spec = importlib.machinery.PathFinder.find_spec("nftables", list(_SYSTEM_SITE_DIRS))
    if spec is None or spec.loader is None:
        raise FirewallError(
            "the libnftables Python binding is not installed; install python3-nftables"
        )
    module = importlib.util.module_from_spec(spec)
    # Registered under its own name so the package's relative import finds it.
    sys.modules["nftables"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules["nftables"]
        raise FirewallError(f"the system libnftables binding failed to load: {exc}") from exc
    return module


class LibNftables:
    """In-process libnftables through the system's Python binding."""

    name = "libnftables"

    def __init__(self) -> None:
        module = _load_system_binding()
        try:
            self._nft = module.Nftables()
        except OSError as exc:
            raise FirewallError(f"libnftables.so.1 could not be loaded: {exc}") from exc
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        # One nft context is not safe for concurrent use.
        self._lock = threading.Lock()

    def run(self, commands: list[Json], terse: bool = False) -> list[Json]:
        """Run `commands` as one transaction."""
        with self._lock:
            self._nft.set_terse_output(terse)
            rc, output, error = self._nft.json_cmd(_document(commands))
        if rc != 0:
            raise FirewallError(f"nftables refused the transaction: {str(error).strip()}")
        return _output(output)


class NftCommand:
    """`nft -j -f -` as a subprocess."""

    name = "command"

    def __init__(self, nft: str | None = None) -> None:
        found = nft or shutil.which("nft") or "/usr/sbin/nft"
        if not os.access(found, os.X_OK):
            raise FirewallError("the nft command was not found; install the nftables package")
        self._nft = found

    def run(self, commands: list[Json], terse: bool = False) -> list[Json]:
        """Run `commands` as one transaction."""
        proc = subprocess.run(
            [self._nft, "-j", *(["-t"] if terse else []), "-f", "-"],
            input=json.dumps(_document(commands)),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise FirewallError(f"nftables refused the transaction: {proc.stderr.strip()}")
        return _output(json.loads(proc.stdout)) if proc.stdout.strip() else []


def default_backend() -> NftBackend:
    """The libnftables binding when available, else the nft command (`COI_NFT_BACKEND` forces)."""
    choice = os.environ.get("COI_NFT_BACKEND", "")
    if choice == "command":
        return NftCommand()
    if choice == "libnftables":
        return LibNftables()
    if choice:
        raise FirewallError(f"COI_NFT_BACKEND={choice!r} is unknown; use libnftables or command")
    try:
        return LibNftables()
    except FirewallError:
        return NftCommand()
