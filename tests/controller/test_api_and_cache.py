"""The layers under the reconcilers, over real HTTP against the fake API server: the client's
error mapping and idempotent deletes and its kept-alive connections, the server's optimistic concurrency, selectors and garbage
collection, the informer's list+watch (relist on 410, resume after a dropped stream), and the
work queue's de-duplication and retries."""

from __future__ import annotations

import asyncio

import pytest

from controller import resources as R
from controller.errors import AlreadyExists, Conflict, Gone, NotFound, TemporaryError
from controller.informer import Informer
from controller.workqueue import WorkQueue
from tests.controller import helpers as h


@pytest.mark.asyncio
async def test_client_maps_errors_and_deletes_idempotently(cluster):
    kube = cluster.kube
    created = await kube.create(R.SANDBOXES, h.NS, {"metadata": {"generateName": "g-"},
                                                    "spec": h.sandbox("x")["spec"]})
    name = created["metadata"]["name"]
    assert name.startswith("g-") and len(name) == 7 and created["metadata"]["uid"]
    with pytest.raises(AlreadyExists):
        await kube.create(R.SANDBOXES, h.NS, dict(created, metadata={"name": name}))
    stale = created["metadata"]["resourceVersion"]
    await kube.patch(R.SANDBOXES, h.NS, name, {"metadata": {"labels": {"a": "1"},
                                                            "resourceVersion": stale}})
    with pytest.raises(Conflict):
        await kube.patch(R.SANDBOXES, h.NS, name, {"metadata": {"labels": {"a": "2"},
                                                                "resourceVersion": stale}})
    with pytest.raises(Conflict):  # a uid precondition protects a re-created namesake
        await kube.delete(R.SANDBOXES, h.NS, name, uid="someone-else")
    assert await kube.delete(R.SANDBOXES, h.NS, name) is True
    assert await kube.delete(R.SANDBOXES, h.NS, name) is False
    with pytest.raises(NotFound):
        await kube.get(R.SANDBOXES, h.NS, name)


@pytest.mark.asyncio
async def test_idle_connections_outlive_a_quiet_spell():
    """Kept a minute (the API server keeps them 90 s): a burst after a quiet spell does not pay
    a TLS handshake per connection."""
    from controller.kube import KEEPALIVE_SECONDS, KubeClient, load_configuration

    kube = KubeClient(await load_configuration(host="http://127.0.0.1:9"))
    connector = kube._api.rest_client._create_connector()
    try:
        assert connector._keepalive_timeout == KEEPALIVE_SECONDS and 15 < KEEPALIVE_SECONDS < 90
    finally:
        await connector.close()
        await kube.close()


@pytest.mark.asyncio
async def test_status_subresource_and_generation(cluster):
    kube = cluster.kube
    await kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    status = await kube.patch_status(R.SANDBOXES, h.NS, "s", {"podIPs": ["1.2.3.4"]})
    assert status["metadata"]["generation"] == 1
    ignored = await kube.patch(R.SANDBOXES, h.NS, "s", {"status": {"podIPs": ["9.9.9.9"]}})
    assert ignored["status"] == {"podIPs": ["1.2.3.4"]}
    spec = await kube.patch(R.SANDBOXES, h.NS, "s", {"spec": {"operatingMode": "Suspended"}})
    assert spec["metadata"]["generation"] == 2


@pytest.mark.asyncio
async def test_selectors_and_garbage_collection(cluster):
    kube = cluster.kube
    owner = await kube.create(R.SANDBOXES, h.NS, h.sandbox("owner"))
    ref = {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "name": "owner",
           "uid": owner["metadata"]["uid"], "controller": True}
    for name, labels in (("p1", {"k": "a"}), ("p2", {"k": "b"}), ("p3", {})):
        await kube.create(R.PODS, h.NS, {"metadata": {"name": name, "labels": labels,
                                                      "ownerReferences": [ref]},
                                         "spec": {"containers": [{"name": "c"}]}})

    async def listing(selector):
        return [p["metadata"]["name"]
                for p in (await kube.list(R.PODS, h.NS, label_selector=selector))["items"]]

    assert sorted(await listing("k")) == ["p1", "p2"]
    assert await listing("k=a") == ["p1"]
    assert await listing("!k") == ["p3"]
    assert sorted(await listing("k in (a,b),k!=b")) == ["p1"]
    await kube.delete(R.SANDBOXES, h.NS, "owner")
    await h.wait_for(lambda: not cluster.api.objects("pods"), 2, "dependents collected")


@pytest.mark.asyncio
async def test_watch_from_a_compacted_version_is_gone(cluster):
    kube = cluster.kube
    listed = await kube.list(R.SANDBOXES, h.NS)
    await kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    cluster.api.compact()
    with pytest.raises(Gone):
        async for _ in kube.watch(R.SANDBOXES, h.NS, listed["metadata"]["resourceVersion"],
                                  timeout_seconds=2):
            pass


@pytest.mark.asyncio
async def test_informer_lists_watches_relists_after_410_and_resumes(cluster):
    kube = cluster.kube
    await kube.create(R.SANDBOXES, h.NS, h.sandbox("before"))
    informer = Informer(await cluster.client(), R.SANDBOXES, [h.NS], resync=0)
    informer.add_index("label", lambda o: list((o["metadata"].get("labels") or {}).values()))
    seen: list[tuple[str, str]] = []
    informer.add_handler(lambda old, new: seen.append(
        ("deleted" if new is None else "added" if old is None else "updated",
         (new or old)["metadata"]["name"])))
    await informer.start()
    try:
        assert informer.get(h.NS, "before") is not None and informer.relists == 1
        await kube.create(R.SANDBOXES, h.NS, dict(h.sandbox("live"), metadata={
            "name": "live", "labels": {"x": "v"}}))
        await h.wait_for(lambda: informer.get(h.NS, "live"), 2, "watch event")
        assert [o["metadata"]["name"] for o in informer.by_index("label", "v")] == ["live"]

        cluster.api.close_watches()  # the stream drops: resume from the last version, no relist
        await kube.delete(R.SANDBOXES, h.NS, "before")
        await h.wait_for(lambda: informer.get(h.NS, "before") is None, 3, "resumed watch")
        assert informer.relists == 1

        cluster.api.compact()  # history lost: 410 on resume, so list again and reconcile
        await kube.delete(R.SANDBOXES, h.NS, "live")
        await h.wait_for(lambda: informer.relists == 2, 3, "relist after 410")
        await h.wait_for(lambda: informer.get(h.NS, "live") is None, 3, "vanished while gone")
        assert informer.by_index("label", "v") == []
        assert ("deleted", "live") in seen and ("added", "before") in seen
    finally:
        await informer.stop()
        await informer.kube.close()


@pytest.mark.asyncio
async def test_work_queue_collapses_bursts_and_retries():
    calls: list[str] = []
    gate = asyncio.Event()

    async def reconcile(key):
        calls.append(key)
        if key == "slow":
            await gate.wait()
        if key == "flaky" and calls.count("flaky") < 3:
            raise RuntimeError("boom")
        if key == "temp" and calls.count("temp") < 2:
            raise TemporaryError("later", delay=0.01)
        return None

    errors: list[str] = []
    queue = WorkQueue("test", reconcile, workers=4, backoff_base=0.01, on_error=errors.append)
    await queue.start()
    try:
        for _ in range(5):
            queue.add("slow")
        await h.wait_for(lambda: calls == ["slow"], 1)
        queue.add("slow")  # while it runs: once more afterwards, not five times
        queue.add("slow")
        queue.add("flaky")
        queue.add("temp")
        queue.add("later", delay=0.05)
        gate.set()
        await h.wait_for(lambda: calls.count("flaky") == 3 and calls.count("temp") == 2
                         and "later" in calls, 2)
        await asyncio.sleep(0.05)
        assert calls.count("slow") == 2
        assert errors == ["test", "test"]
    finally:
        await queue.stop()
