"""`IncusClient`: the one seam through which the launcher talks to Incus.

pylxd provides the HTTP-over-Unix-socket session and error types; the launcher uses the raw
REST nodes so that every call and its result type is explicit here. Exec streams (websockets)
live in `coi.launcher.incus.exec`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pylxd
import requests
from pylxd import exceptions as pylxd_exc

from coi.launcher.errors import IncusError, IncusUnavailable
from coi.launcher.incus.endpoint import IncusEndpoint, discover_endpoint
from coi.launcher.incus.types import (
    ImageInfo,
    InstanceInfo,
    InstanceSpec,
    InstanceState,
    ServerInfo,
    StoragePoolInfo,
)


def _api_message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            return str(response.json().get("error") or response.text)
        except ValueError:
            return str(response.text)
    return str(exc)


class _StillRunning(Exception):
    """An operation wait timed out server-side (HTTP 504): the operation is still running."""


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn pylxd/requests failures into one `IncusError` sentence naming the action."""
    try:
        yield
    except pylxd_exc.LXDAPIException as exc:
        # Incus answers a wait that timed out with an error "context deadline exceeded"
        # (HTTP 200 with type=error here, 504 elsewhere): the operation is still running.
        if getattr(getattr(exc, "response", None), "status_code", 0) == 504 or (
            "context deadline exceeded" in _api_message(exc)
        ):
            raise _StillRunning() from exc
        if isinstance(exc, pylxd_exc.NotFound):
            raise IncusError(f"{action}: not found ({_api_message(exc)})") from exc
        raise IncusError(f"{action}: {_api_message(exc)}") from exc
    except requests.exceptions.ConnectionError as exc:
        raise IncusUnavailable(
            f"{action}: lost the connection to Incus",
            hint="check that incusd is running (`coi health`)",
        ) from exc


class IncusClient:
    """Typed operations on one Incus endpoint and project."""

    # Seconds one server-side operation wait may block before we ask again.
    wait_chunk = 30

    def __init__(self, endpoint: IncusEndpoint, *, timeout: float = 120.0) -> None:
        self.endpoint = endpoint
        try:
            self._client = pylxd.Client(
                endpoint=endpoint.socket_path, project=endpoint.project, timeout=timeout
            )
        except (pylxd_exc.ClientConnectionFailed, requests.exceptions.ConnectionError) as exc:
            raise IncusUnavailable(
                f"cannot connect to Incus at {endpoint.socket_path} ({exc})",
                hint="check that incusd is running (`coi health`) and re-run host setup",
            ) from exc
        self._api = self._client.api

    @classmethod
    def connect(cls, project: str = "") -> IncusClient:
        """Connect to the socket this user may use (see `discover_endpoint`)."""
        return cls(discover_endpoint(project))

    @property
    def project(self) -> str:
        return self.endpoint.project

    # ------------------------------------------------------------------ raw helpers
    def _node(self, path: str) -> Any:
        node: Any = self._api
        for part in path.strip("/").split("/"):
            if part:
                node = node[part]
        return node

    def get(self, path: str, **params: str) -> Any:
        """GET a path below /1.0 and return its metadata."""
        with _translated(f"reading {path}"):
            return self._node(path).get(params=dict(params)).json()["metadata"]

    def _async(self, method: str, path: str, body: Mapping[str, Any] | None, action: str) -> str:
        with _translated(action):
            response = (
                getattr(self._node(path), method)(json=body)
                if body is not None
                else (getattr(self._node(path), method)())
            )
            data = response.json()
        if data.get("type") == "async":
            return str(data["metadata"]["id"])
        return ""

    def wait_operation(self, op_id: str, action: str, timeout: float = 600.0) -> dict[str, Any]:
        """Wait for a background operation; raise `IncusError` naming `action` if it failed."""
        if not op_id:
            return {}
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(int(deadline - time.monotonic()), 1)
            try:
                with _translated(action):
                    meta: dict[str, Any] = (
                        self._api.operations[op_id]
                        .wait.get(
                            params={"timeout": min(remaining, self.wait_chunk)},
                            timeout=remaining + 10,
                        )
                        .json()["metadata"]
                    )
            except _StillRunning:
                meta = {"status": "Running"}
            status = meta.get("status")
            if status == "Success":
                return meta
            if status in ("Failure", "Cancelled"):
                raise IncusError(f"{action}: {meta.get('err') or status}")
            if time.monotonic() >= deadline:
                raise IncusError(f"{action}: timed out after {timeout:.0f} s")

    # ------------------------------------------------------------------ server
    def server_info(self) -> ServerInfo:
        """Version, API extensions and kernel features of the server."""
        return ServerInfo.from_api(self.get("/"), self.project)

    def storage_pools(self) -> list[StoragePoolInfo]:
        """Pools with their space (pools the caller may not inspect are skipped)."""
        pools = []
        for meta in self.get("storage-pools", recursion="1"):
            try:
                space = self.get(f"storage-pools/{meta['name']}/resources")["space"]
            except IncusError:
                space = {"total": 0, "used": 0}
            pools.append(
                StoragePoolInfo(
                    name=str(meta["name"]),
                    driver=str(meta.get("driver", "")),
                    total_bytes=int(space.get("total") or 0),
                    used_bytes=int(space.get("used") or 0),
                )
            )
        return pools

    def profile(self, name: str = "default") -> dict[str, Any]:
        """A profile's config and devices."""
        result: dict[str, Any] = self.get(f"profiles/{name}")
        return result

    def network(self, name: str) -> dict[str, Any] | None:
        """A network's description, or None if it does not exist."""
        try:
            result: dict[str, Any] = self.get(f"networks/{name}")
        except IncusError:
            return None
        return result

    # ------------------------------------------------------------------ instances
    def instance(self, name: str) -> InstanceInfo | None:
        """The instance called `name`, or None."""
        try:
            with _translated(f"reading instance {name}"):
                meta = self._api.instances[name].get().json()["metadata"]
        except IncusError:
            if not self._instance_names_contain(name):
                return None
            raise
        return InstanceInfo.from_api(meta)

    def _instance_names_contain(self, name: str) -> bool:
        return any(url.rsplit("/", 1)[-1] == name for url in self.get("instances"))

    def instances(self, prefix: str = "") -> list[InstanceInfo]:
        """All instances of the project whose name starts with `prefix`."""
        metas = self.get("instances", recursion="1")
        return [InstanceInfo.from_api(m) for m in metas if str(m["name"]).startswith(prefix)]

    def instance_state(self, name: str) -> InstanceState:
        """Status, addresses and host-side interface names of a container."""
        return InstanceState.from_api(self.get(f"instances/{name}/state"))

    def wait_for_ipv4(self, name: str, timeout: float, interval: float = 0.1) -> bool:
        """Poll until the container has a global IPv4 address; False after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.instance_state(name).ipv4:
                return True
            time.sleep(interval)
        return False

    def create_instance_async(self, spec: InstanceSpec) -> str:
        """Start creating a container; returns the operation id to wait for."""
        return self._async("post", "instances", spec.to_api(), f"creating container {spec.name}")

    def create_instance(self, spec: InstanceSpec) -> None:
        """Create a container and wait until it exists."""
        op = self.create_instance_async(spec)
        self.wait_operation(op, f"creating container {spec.name}")

    def update_instance(
        self,
        name: str,
        *,
        devices: Mapping[str, Mapping[str, str]] | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """PATCH a container: `devices` replaces the named devices, `config` keys are merged
        (an empty value removes the key)."""
        body: dict[str, Any] = {}
        if devices is not None:
            body["devices"] = {k: dict(v) for k, v in devices.items()}
        if config is not None:
            body["config"] = dict(config)
        what = f"updating container {name}"
        self.wait_operation(self._async("patch", f"instances/{name}", body, what), what)

    def set_state(self, name: str, action: str, *, force: bool = False, timeout: int = 30) -> None:
        """start / stop / restart / freeze / unfreeze a container and wait."""
        body = {"action": action, "force": force, "timeout": timeout}
        what = f"{action} container {name}"
        op = self._async("put", f"instances/{name}/state", body, what)
        self.wait_operation(op, what, timeout=timeout + 60)

    def delete_instance(self, name: str) -> None:
        """Delete a (stopped) container and wait."""
        op = self._async("delete", f"instances/{name}", None, f"deleting container {name}")
        self.wait_operation(op, f"deleting container {name}")

    def wait_instance_idle(self, name: str, timeout: float = 30.0) -> None:
        """Wait until no running operation touches instance `name`.

        Used after an interrupt: a create request may have reached Incus even though we
        never saw its answer; removing the container must wait for it to finish.
        """
        deadline = time.monotonic() + timeout
        needle = f"/1.0/instances/{name}"
        while time.monotonic() < deadline:
            try:
                ops = self.get("operations", recursion="1").get("running") or []
            except IncusError:
                return
            if not any(
                needle == resource.split("?")[0]
                for op in ops
                for resource in (op.get("resources") or {}).get("instances", [])
            ):
                return
            time.sleep(0.1)

    def remove_instance(self, name: str) -> bool:
        """Force-stop and delete `name` if it exists. Returns True if something was removed.

        Idempotent: a container that vanished in between (ephemeral ones delete themselves
        when stopped) counts as removed.
        """
        self.wait_instance_idle(name)
        info = self.instance(name)
        if info is None:
            return False
        if info.status not in ("Stopped", ""):
            try:
                self.set_state(name, "stop", force=True)
            except IncusError:
                if self.instance(name) is None:
                    return True
                raise
        if self.instance(name) is not None:
            try:
                self.delete_instance(name)
            except IncusError:
                if self.instance(name) is not None:
                    raise
        return True

    def push_file(
        self, name: str, path: str, data: bytes, *, uid: int = 0, gid: int = 0, mode: int = 0o644
    ) -> None:
        """Write a file into a container."""
        headers = {
            "X-Incus-uid": str(uid),
            "X-Incus-gid": str(gid),
            "X-Incus-mode": f"{mode:04o}",
            "X-Incus-type": "file",
            "X-Incus-write": "overwrite",
            "Content-Type": "application/octet-stream",
        }
        with _translated(f"writing {path} into {name}"):
            self._api.instances[name].files.post(params={"path": path}, data=data, headers=headers)

    def pull_file(self, name: str, path: str) -> bytes:
        """Read a file from a container."""
        with _translated(f"reading {path} from {name}"):
            response = self._api.instances[name].files.get(params={"path": path}, is_api=False)
        return bytes(response.content)

    # ------------------------------------------------------------------ images
    def image_by_alias(self, alias: str) -> ImageInfo | None:
        """The image an alias points at in this project, or None."""
        try:
            target = self.get(f"images/aliases/{alias}")["target"]
        except IncusError:
            return None
        return ImageInfo.from_api(self.get(f"images/{target}"))

    def images(self) -> list[ImageInfo]:
        """All images of the project."""
        return [ImageInfo.from_api(m) for m in self.get("images", recursion="1")]

    def publish_instance_async(
        self, name: str, properties: Mapping[str, str], *, compression: str = "none"
    ) -> str:
        """Start publishing a stopped container as an image; returns the operation id."""
        body = {
            "source": {"type": "instance", "name": name},
            "properties": dict(properties),
            "compression_algorithm": compression,
        }
        return self._async("post", "images", body, f"publishing {name} as an image")

    def publish_result(self, op_id: str, timeout: float = 3600) -> str:
        """Wait for a publish operation; returns the new image's fingerprint."""
        meta = self.wait_operation(op_id, "publishing the image", timeout=timeout)
        return str((meta.get("metadata") or {}).get("fingerprint", ""))

    def set_alias(self, alias: str, fingerprint: str, description: str = "") -> None:
        """Point `alias` at `fingerprint`, replacing an existing alias."""
        with _translated(f"setting image alias {alias}"):
            if self.image_by_alias(alias) is not None:
                self._api.images.aliases[alias].put(
                    json={"target": fingerprint, "description": description}
                )
            else:
                self._api.images.aliases.post(
                    json={"name": alias, "target": fingerprint, "description": description}
                )

    def delete_image(self, fingerprint: str) -> None:
        """Delete an image by fingerprint (idempotent)."""
        try:
            op = self._async("delete", f"images/{fingerprint}", None, "deleting image")
        except IncusError:
            return
        self.wait_operation(op, "deleting image")

    # ------------------------------------------------------------------ exec
    def exec_start(self, name: str, body: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
        """Start an exec operation; returns (operation id, websocket secrets by fd)."""
        what = f"running a command in {name}"
        with _translated(what):
            data = self._api.instances[name].exec.post(json=dict(body)).json()
        op_id = str(data["metadata"]["id"])
        fds = (data["metadata"].get("metadata") or {}).get("fds") or {}
        return op_id, {str(k): str(v) for k, v in fds.items()}

    def websocket_uri(self, op_id: str, secret: str) -> str:
        """The ws:// URI of an operation's websocket (used over the Unix socket)."""
        return (
            f"ws://localhost/1.0/operations/{op_id}/websocket?secret={secret}"
            f"&project={self.project}"
        )
