"""A Kubernetes API for the operator's tests: PyPI kmock's KubernetesEmulator, plus what a real
API server does that kube-rs relies on and the emulator leaves out.

    KubernetesEmulator (list, watch, create, patch, delete over HTTP)
      + stamps uid, resourceVersion, generation (spec changes only), creationTimestamp
      + refuses a write whose metadata.resourceVersion is stale (409), as optimistic locking does
      + filters lists and watches by labelSelector; names the kind of lists
      + answers TokenReviews for the tokens a test registers, and serves the service-account
        issuer's discovery document and JWKS
      + reads /api/v1/namespaces[/NAME] as the Namespace resource (kmock reads a namespace prefix)
      + gives errors the API server's machine-readable reasons (NotFound, AlreadyExists)

It runs on its own thread and event loop, so tests talk to it over HTTP, as kubectl would.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import threading
import uuid
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import dicts, enums, parsing

ISSUER = "https://kubernetes.default.svc.cluster.local"

RESOURCES = {
    "v1/namespaces": ("Namespace", False),
    "v1/pods": ("Pod", True),
    "v1/secrets": ("Secret", True),
    "tollgate.dev/v1alpha1/mcppolicies": ("McpPolicy", True),
    "tollgate.dev/v1alpha1/mcpclusterpolicies": ("McpClusterPolicy", False),
    "coordination.k8s.io/v1/leases": ("Lease", True),
    "events.k8s.io/v1/events": ("Event", True),
    "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations": ("MutatingWebhookConfiguration", False),
    "admissionregistration.k8s.io/v1/validatingwebhookconfigurations": ("ValidatingWebhookConfiguration", False),
}


_parse_path = parsing.parse_path


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock's path parser, except that Namespaces are a resource, not only a prefix."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"] and parts[2:3] == ["namespaces"]:
        rest = parts[3:]
        if len(rest) <= 1 or (len(rest) == 2 and rest[1] in ("status", "finalize")):
            return parsing.ParsedPath("", "v1", "namespaces", None, rest[0] if rest else None, rest[1] if len(rest) == 2 else None)
    return _parse_path(path)


parsing.parse_path = parse_path


def selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """The equality- and set-based labelSelector syntax of the API server."""
    if not selector:
        return True
    for term in _split_terms(selector):
        term = term.strip()
        if " notin " in term:
            key, values = term.split(" notin ", 1)
            if labels.get(key.strip()) in _set(values):
                return False
        elif " in " in term:
            key, values = term.split(" in ", 1)
            if labels.get(key.strip()) not in _set(values):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    return [t for t in terms + [current] if t.strip()]


def _set(values: str) -> set[str]:
    return {v.strip() for v in values.strip().strip("()").split(",")}


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    tokens: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    jwks: dict[str, Any] = attrs.field(factory=lambda: {"keys": []})
    _versions: Any = attrs.field(factory=lambda: itertools.count(1))
    _current: int = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, (kind, namespaced) in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs={"list", "watch", "get", "create", "patch", "delete"}, subresources={"status"})

    def next_version(self) -> str:
        self._current = next(self._versions)
        return str(self._current)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        path = request.url.path
        if request.method == "POST" and path == "/apis/authentication.k8s.io/v1/tokenreviews":
            return aiohttp.web.json_response(self._review(request.data))
        if path == "/.well-known/openid-configuration":
            return aiohttp.web.json_response({"issuer": ISSUER, "jwks_uri": f"{ISSUER}/openid/v1/jwks"})
        if path == "/openid/v1/jwks":
            return aiohttp.web.json_response(self.jwks)
        if request.resource is not None and isinstance(request.data, (dict, list)):
            conflict = self._stamp(request)
            if conflict:
                return aiohttp.web.json_response(
                    {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 409, "reason": "Conflict", "message": conflict},
                    status=409,
                )
        return await super()._handle(request)

    def _stamp(self, request: kmock.Request) -> str | None:
        """Adds the fields a real API server maintains; returns a conflict message, if any."""
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.update(uid=str(uuid.uuid4()), resourceVersion=self.next_version(), generation=1, creationTimestamp=now)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            return None
        if request.action != enums.action.UPDATE or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        old = copy.deepcopy(dict(self.objects[key].raw))
        patch = request.data
        if isinstance(patch, dict):
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"].get("resourceVersion"):
                return f"the object has been modified; resourceVersion {wanted} is stale"
        new = dicts.patch_dict(old, patch)
        generation = old["metadata"].get("generation", 1)
        if request.subresource != "status" and new.get("spec") != old.get("spec"):
            generation += 1
        stamps = {"resourceVersion": self.next_version(), "generation": generation}
        if isinstance(patch, dict):
            patch.setdefault("metadata", {}).update(stamps)
            if request.subresource == "status":
                # The status subresource changes nothing but status.
                for k in list(patch):
                    if k not in ("status", "metadata"):
                        del patch[k]
        else:
            patch.extend({"op": "add", "path": f"/metadata/{k}", "value": v} for k, v in stamps.items())
        return None

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError) and exc.status in (404, 409):
            reason = "NotFound" if exc.status == 404 else "AlreadyExists"
            return aiohttp.web.json_response(
                {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": exc.status,
                 "reason": reason, "message": exc.message or reason},
                status=exc.status,
            )
        return await super()._render_error(exc)

    def _review(self, review: dict) -> dict:
        spec = review.get("spec", {})
        user = self.tokens.get(spec.get("token", ""))
        wanted = spec.get("audiences") or []
        if user is None or (wanted and user.get("audience", "tollgate") not in wanted):
            status = {"authenticated": False, "error": "token not valid for this audience or unknown"}
        else:
            status = {"authenticated": True, "audiences": wanted, "user": {k: v for k, v in user.items() if k != "audience"}}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec, "status": status}

    async def _serve_list(self, request: kmock.Request) -> Any:
        listed = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        items = [i for i in listed["items"] if selector_matches(selector, i.get("metadata", {}).get("labels") or {})]
        info = self.resources[request.resource]
        return {
            "apiVersion": f"{request.resource.group}/{request.resource.version}".lstrip("/"),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self._current)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> Any:
        selector = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not selector_matches(selector, (event.get("object", {}).get("metadata", {}).get("labels") or {})):
                continue
            yield event


class ClusterThread:
    """Runs a Cluster on its own event loop; `url` is its base URL."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop_event: asyncio.Event | None = None
        self.cluster: Cluster | None = None
        self.url = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ClusterThread":
        self.thread.start()
        assert self.ready.wait(20), "the Kubernetes emulator did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        async with Cluster() as cluster, kmock.Server(cluster) as server:
            self.cluster = cluster
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self.stop_event.wait()

    def call(self, fn, *args):
        """Runs fn(cluster, *args) on the emulator's loop and returns its result."""
        async def run():
            return fn(self.cluster, *args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def kubeconfig(self) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
        })
