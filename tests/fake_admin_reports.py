"""The OpenAI admin reports (Usage and Costs APIs) on a FakeUpstream, computed from what it served.

Add it before the fake starts::

    fake = FakeUpstream()
    FakeAdminReports(fake, admin_key="sk-admin-…", prices={...}).install()
    fake.start()

Usage is summed per UTC day and model from ``fake.served`` (every completion answered with
usage, whoever sent it), reported under the model's dated snapshot name; cost is priced
per request and bucket as Ledger prices (half up to the nano), sent as a float of dollars
as OpenAI does. Each page holds ``page_size`` results, so ``next_page`` must be followed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ledger.money import cost_of_tokens
from tests.fake_upstream import FakeUpstream


class FakeAdminReports:
    def __init__(
        self,
        fake: FakeUpstream,
        *,
        admin_key: str,
        prices: Mapping[str, tuple[int, int]],  # model: (input, output) nano-USD per 1M tokens
        snapshots: Mapping[str, str] | None = None,
        page_size: int = 1,
    ) -> None:
        self.fake = fake
        self.admin_key = admin_key
        self.prices = prices
        self.snapshots = dict(snapshots or {})
        self.page_size = page_size
        self.asked: list[str] = []  # the query strings asked, in order

    def install(self) -> FakeAdminReports:
        self.fake.route_hooks.append(self._routes)
        return self

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/organization/usage/completions", self._completions)
        app.router.add_get("/v1/organization/usage/embeddings", self._embeddings)
        app.router.add_get("/v1/organization/costs", self._costs)

    def _authorised(self, request: web.Request) -> bool:
        self.asked.append(request.path_qs)
        return request.headers.get("authorization") == f"Bearer {self.admin_key}"

    def _days(self) -> dict[tuple[int, str], list[dict[str, Any]]]:
        days: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
        for at, protocol, model, usage in list(self.fake.served):
            if protocol == "openai":
                day = int(datetime.fromtimestamp(at, UTC).replace(
                    hour=0, minute=0, second=0, microsecond=0).timestamp())  # fmt: skip
                days[(day, model)].append(usage)
        return days

    async def _completions(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _unauthorised()
        results = []
        for (day, model), usages in sorted(self._days().items()):
            results.append(
                (
                    day,
                    {
                        "object": "organization.usage.completions.result",
                        "model": self.snapshots.get(model, model),
                        "num_model_requests": len(usages),
                        "input_tokens": sum(u["prompt_tokens"] for u in usages),
                        "input_cached_tokens": sum(
                            u["prompt_tokens_details"]["cached_tokens"] for u in usages
                        ),
                        "output_tokens": sum(u["completion_tokens"] for u in usages),
                        "input_audio_tokens": 0,
                        "output_audio_tokens": 0,
                        "project_id": None,
                        "user_id": None,
                        "api_key_id": None,
                        "batch": None,
                    },
                )
            )
        return self._page(request, results, "start_time")

    async def _embeddings(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _unauthorised()
        return self._page(request, [], "start_time")

    async def _costs(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _unauthorised()
        results = []
        for (day, model), usages in sorted(self._days().items()):
            input_price, output_price = self.prices[model]
            name = self.snapshots.get(model, model)
            for item, nanos in (
                ("input", sum(cost_of_tokens(u["prompt_tokens"], input_price) for u in usages)),
                (
                    "output",
                    sum(cost_of_tokens(u["completion_tokens"], output_price) for u in usages),
                ),
            ):
                results.append(
                    (
                        day,
                        {
                            "object": "organization.costs.result",
                            # A float, as OpenAI sends it: the reader must not go past its digits.
                            "amount": {"value": nanos / 10**9, "currency": "usd"},
                            "line_item": f"{name}, {item}",
                            "project_id": None,
                        },
                    )
                )
        return self._page(request, results, "start_time")

    def _page(
        self, request: web.Request, results: list[tuple[int, dict[str, Any]]], key: str
    ) -> web.Response:
        offset = int(request.query.get("page") or 0)
        chunk = results[offset : offset + self.page_size]
        buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for day, result in chunk:
            buckets[day].append(result)
        more = offset + self.page_size < len(results)
        return web.json_response(
            {
                "object": "page",
                "data": [
                    {"object": "bucket", key: day, "end_time": day + 86400, "results": found}
                    for day, found in sorted(buckets.items())
                ],
                "has_more": more,
                "next_page": str(offset + self.page_size) if more else None,
            }
        )


def _unauthorised() -> web.Response:
    return web.json_response(
        {"error": {"message": "Invalid admin key.", "type": "invalid_request_error"}}, status=401
    )
