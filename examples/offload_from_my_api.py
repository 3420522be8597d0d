r"""Your own API server, with its provider calls answered by the worker fleet.

Where the server called `provider.create_or_update_resource(request)` itself, it now calls
`OffloadingProviderRegistry.create_or_update_resource(namespace, type, request)`: the job is published
(confirmed by the broker), the caller gets its id at once, and any worker running the provider
(examples/my_provider.py) does the work. The server answers the job's state from the results stream.

Serve it (workers run `PYTHONPATH=examples CPW_PROVIDERS=my_provider:registry cpw worker`):

    CPW_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/ \
        uvicorn --app-dir examples --factory offload_from_my_api:create_app --port 9000
    curl -s -X PUT localhost:9000/accounts/acct1 -H 'Content-Type: application/json' \
        -d '{"sku": {"name": "Standard_LRS"}}'
    curl -s localhost:9000/jobs/<jobId>

Or run the self-contained demo: this app plus a worker in one process, one account created through HTTP:

    python examples/offload_from_my_api.py                                   # embedded broker
    python examples/offload_from_my_api.py amqp://guest:guest@127.0.0.1:5672/   # RabbitMQ
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

import httpx
from controlplane_workers import JobQueue, OffloadingProviderRegistry, ProviderWorker, load_settings
from controlplane_workers.providers import as_lookup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SUBSCRIPTION, RESOURCE_GROUP = "sub-example", "rg-example"


def create_app(url: str | None = None) -> Starlette:
    queue = JobQueue(url or os.environ.get("CPW_RABBITMQ_URL", "memory://example"))
    offload = OffloadingProviderRegistry(queue)

    async def put_account(request: Request) -> JSONResponse:
        body = await request.json()
        accepted = await offload.create_or_update_resource(
            "Example.Storage",
            "storageAccounts",
            {
                "subscription_id": SUBSCRIPTION,
                "resource_group": RESOURCE_GROUP,
                "resource_name": request.path_params["name"],
                "location": body.get("location", "westeurope"),
                "body": body,
            },
        )
        # 202 + where to poll: the ARM asynchronous pattern.
        return JSONResponse(
            {"jobId": accepted.job_id, "status": accepted.status.value},
            status_code=202,
            headers={"Location": f"/jobs/{accepted.job_id}"},
        )

    async def get_job(request: Request) -> JSONResponse:
        result = queue.get_job_status(request.path_params["id"])  # as read from the results stream
        if result is None:
            return JSONResponse({"error": {"code": "NotFound"}}, status_code=404)
        return JSONResponse(result.model_dump(mode="json", exclude_none=True))

    async def list_jobs(request: Request) -> JSONResponse:
        # A page of jobs, newest first, as the ready-made API's GET /jobs pages them.
        query = request.query_params
        try:
            top = int(query.get("top", "100"))
            page = queue.list_jobs(status=query.get("status"), limit=top, after=query.get("skipToken"))
        except ValueError as exc:  # top over 1000, a status that does not exist
            return JSONResponse({"error": {"code": "InvalidParameter", "message": str(exc)}}, status_code=400)
        jobs = [r.model_dump(mode="json", exclude_none=True) for r in page.jobs]
        next_link = f"/jobs?top={top}&skipToken={page.after}" if page.after else None
        return JSONResponse({"value": jobs, "nextLink": next_link})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await queue.connect()  # declares the topology, follows the results stream
        try:
            yield
        finally:
            await queue.disconnect()

    return Starlette(
        routes=[
            Route("/accounts/{name}", put_account, methods=["PUT"]),
            Route("/jobs", list_jobs, methods=["GET"]),
            Route("/jobs/{id}", get_job, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def demo(url: str) -> int:
    import my_provider  # examples/my_provider.py

    # The embedded broker lives in this process, so the worker must too; with RabbitMQ it could be
    # any number of `cpw worker` processes instead.
    worker = ProviderWorker(
        load_settings(rabbitmq_url=url, retry_base_delay=0.1, retry_jitter=0.0),
        as_lookup(my_provider.registry),
    )
    await worker.start()
    app = create_app(url)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://my-api") as http,
        ):
            accepted = await http.put(
                "/accounts/acct1",
                json={
                    "sku": {"name": "Standard_LRS"},
                    "properties": {"simulateBusyBackend": True},
                },
            )
            print(accepted.status_code, accepted.json())
            job = accepted.headers["Location"]
            for _ in range(600):  # poll, like a client would (up to 30 s)
                state = (await http.get(job)).json()
                if state["status"] in ("Succeeded", "Failed", "Canceled"):
                    break
                await asyncio.sleep(0.05)
            print(
                state["status"],
                "after",
                state.get("attempts"),
                "attempts:",
                state.get("result") or state.get("error"),
            )
            listed = (await http.get("/jobs", params={"status": "Succeeded", "top": "10"})).json()
            print("listed", [j["job_id"] for j in listed["value"]] == [state["job_id"]])
            return 0 if state["status"] == "Succeeded" else 1
    finally:
        await worker.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(demo(sys.argv[1] if len(sys.argv) > 1 else "memory://example")))
