"""The Kubernetes emulator the operator's tests run against stamps, filters and locks as a real
API server does (see kube.py): the operator's tests must not pass because of its gaps."""

import httpx
import pytest
from kube import ClusterThread, selector_matches


@pytest.fixture(scope="module")
def api():
    with ClusterThread() as c:
        yield c


def test_harness_selectors_match_as_the_api_server_does():
    labels = {"app": "github", "tollgate.dev/injected": "true"}
    assert selector_matches("tollgate.dev/injected=true", labels)
    assert selector_matches("app in (github,jira),!env", labels)
    assert not selector_matches("app notin (github)", labels)
    assert not selector_matches("app!=github", labels)
    assert not selector_matches("tier", labels)
    assert selector_matches(None, labels)


def test_harness_creates_stamp_uid_version_generation_and_lists_are_filtered_and_kinded(api):
    base = f"{api.url}/api/v1/namespaces/h1/pods"
    for name, labels in [("a", {"tollgate.dev/injected": "true"}), ("b", {})]:
        r = httpx.post(base, json={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "h1", "labels": labels}, "spec": {}})
        assert r.status_code < 300, r.text
        meta = r.json()["metadata"]
        assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    listed = httpx.get(base, params={"labelSelector": "tollgate.dev/injected=true"}).json()
    assert listed["kind"] == "PodList"
    assert listed["metadata"]["resourceVersion"].isdigit()
    assert [p["metadata"]["name"] for p in listed["items"]] == ["a"]


def test_harness_generation_follows_spec_changes_and_stale_writes_conflict(api):
    url = f"{api.url}/apis/tollgate.dev/v1alpha1/namespaces/h2/mcppolicies"
    made = httpx.post(url, json={"apiVersion": "tollgate.dev/v1alpha1", "kind": "McpPolicy", "metadata": {"name": "p", "namespace": "h2"}, "spec": {"default": "deny"}}).json()
    merge = {"content-type": "application/merge-patch+json"}
    after_status = httpx.patch(f"{url}/p/status", headers=merge, json={"status": {"tools": 0}}).json()
    assert after_status["metadata"]["generation"] == 1, "status writes leave generation alone"
    assert int(after_status["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])
    after_spec = httpx.patch(f"{url}/p", headers=merge, json={"spec": {"default": "allow"}}).json()
    assert after_spec["metadata"]["generation"] == 2
    stale = httpx.patch(f"{url}/p", headers=merge, json={"metadata": {"resourceVersion": made["metadata"]["resourceVersion"]}, "spec": {"default": "deny"}})
    assert stale.status_code == 409


def test_harness_namespaces_are_a_resource_and_their_labels_can_change(api):
    r = httpx.post(f"{api.url}/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "h3"}})
    assert r.status_code < 300, r.text
    httpx.patch(f"{api.url}/api/v1/namespaces/h3", headers={"content-type": "application/merge-patch+json"}, json={"metadata": {"labels": {"team": "a"}}})
    assert httpx.get(f"{api.url}/api/v1/namespaces/h3").json()["metadata"]["labels"] == {"team": "a"}
    names = [n["metadata"]["name"] for n in httpx.get(f"{api.url}/api/v1/namespaces", params={"labelSelector": "team=a"}).json()["items"]]
    assert names == ["h3"]


def test_harness_errors_carry_the_api_servers_reasons(api):
    missing = httpx.get(f"{api.url}/api/v1/namespaces/h4/secrets/nope")
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
    obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "h4"}}
    httpx.post(f"{api.url}/api/v1/namespaces/h4/secrets", json=obj)
    again = httpx.post(f"{api.url}/api/v1/namespaces/h4/secrets", json=obj)
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
