"""The clients of the real-cluster benchmark (bench/bench_real_cluster.py). They run in a
process of their own, so that the process kubelet's work (in the benchmark's process) never
delays their clocks, and time `POST /v1/sessions` until its 201 over kept-alive HTTP
connections, ending every session they create."""

from __future__ import annotations

import asyncio
import re
import time


def alternate(urls: dict[str, str], template: str, count: int, depth: int) -> dict[str, list]:
    """`count` sessions per gateway, one at a time, the gateways taking turns; before each
    turn, until the first gateway sees `depth` Ready members in the pool (a warm pool)."""
    return asyncio.run(_alternate(urls, template, count, depth))


def burst(url: str, template: str, count: int) -> list[dict]:
    """`count` sessions at once; ended once all have answered."""
    return asyncio.run(_burst(url, template, count))


def sustained(url: str, template: str, clients: int, seconds: float) -> list[dict]:
    """`clients` concurrent clients that each create a session and end it, again and again,
    for `seconds`; each result says when it was answered (`at`, seconds from the start)."""
    return asyncio.run(_sustained(url, template, clients, seconds))


def _http():
    import aiohttp

    from tests.support.gateway import HEADERS
    return aiohttp.ClientSession(headers=HEADERS, connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=180))


async def _create(http, url: str, template: str) -> dict:
    started = time.perf_counter()
    async with http.post(url + "/v1/sessions", json={"template": template}) as response:
        body = await response.json(content_type=None)
    return {"seconds": time.perf_counter() - started, "status": response.status,
            "session_id": body.get("session_id"), "error": None if response.status == 201 else body}


async def _end(http, url: str, results: list[dict]) -> None:
    async def one(result: dict) -> None:
        if result["session_id"]:
            async with http.delete(f"{url}/v1/sessions/{result['session_id']}") as response:
                await response.read()
    await asyncio.gather(*(one(r) for r in results))


async def _alternate(urls: dict[str, str], template: str, count: int, depth: int) -> dict:
    found: dict[str, list] = {name: [] for name in urls}
    first = next(iter(urls.values()))
    async with _http() as http:
        for _ in range(count):
            await _until_ready(http, first, template, depth)
            for name, url in urls.items():
                result = await _create(http, url, template)
                found[name].append(result)
                await _end(http, url, [result])
    return found


async def _until_ready(http, url: str, template: str, depth: int) -> None:
    for _ in range(6000):  # 5 minutes
        if await _pool_ready(http, url, template) >= depth:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the pool of {template} never had {depth} Ready members again")


async def _pool_ready(http, url: str, template: str) -> int:
    """Ready members of the template's pool as the gateway sees them (its metrics)."""
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    found = re.search(rf'^kernelcube_pool_ready{{template="{template}"}} ([0-9.e+]+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


async def _burst(url: str, template: str, count: int) -> list[dict]:
    async with _http() as http:
        results = list(await asyncio.gather(*(_create(http, url, template) for _ in range(count))))
        await _end(http, url, results)
    return results


async def _sustained(url: str, template: str, clients: int, seconds: float) -> list[dict]:
    results: list[dict] = []
    async with _http() as http:
        started = time.perf_counter()

        async def client() -> None:
            while time.perf_counter() - started < seconds:
                result = await _create(http, url, template)
                result["at"] = time.perf_counter() - started  # when it was answered
                results.append(result)
                await _end(http, url, [result])
        await asyncio.gather(*(client() for _ in range(clients)))
    return results
