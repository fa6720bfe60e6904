"""The request lifecycle, top to bottom in one place.

authenticate → parse → resolve model and price → estimate → (reserve) → forward →
capture usage → settle → record.

Whatever happens after the key is known — a bad body, an unknown model, a provider
error, a timeout, a client that leaves mid-stream, shutdown — the request ends as
exactly one ledger entry. Nothing here knows about HTTP frameworks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.admin.identity import Authenticator, Principal
from ledger.budgets.guard import BudgetGuard, Reservation, settlements_from_records
from ledger.budgets.model import RequestScope
from ledger.db import background
from ledger.db.journal import entry_from_json
from ledger.db.ledger import LedgerEntry, new_request_id
from ledger.db.prices import LivePrices
from ledger.db.writer import LedgerWriter
from ledger.endusers import fit_text, identify_end_user
from ledger.errors import (
    BudgetExceeded,
    InvalidRequest,
    LedgerError,
    NotFound,
    PermissionDenied,
    UpstreamCredentialsRefused,
    UpstreamFailed,
    UpstreamTimeout,
    anthropic_error_body,
    openai_error_body,
)
from ledger.gateway.endpoints import ENDPOINTS, StreamRelay, endpoint_for
from ledger.gateway.requests import (
    ANTHROPIC,
    MODEL_CHARS,
    OPENAI,
    ParsedRequest,
    decode_json_object,
    key_from_body,
    normalise_seed_body,
    stated_end_user,
    stated_model,
    without_key,
)
from ledger.gateway.routing import ModelRouter, Route
from ledger.money import format_usd
from ledger.observability import Metrics, current_access, current_request_id
from ledger.pricing import Price, price_cost, requested_factor, worst_case_cost
from ledger.providers import UpstreamResponse, anthropic, openai, openai_responses
from ledger.redaction import Redactor
from ledger.tokens import approximate_anthropic_prompt, count_text_tokens, estimate_prompt
from ledger.usage import (
    MAX_ENTRY_COST_NANOS,
    ImplausibleUsage,
    Usage,
    implausibility,
    reported_count,
)

logger = logging.getLogger("ledger.gateway")

_TAG = re.compile(r"^[A-Za-z0-9_.:/=-]{1,64}$")
_MAX_TAGS = 16
_COUNT_TOKENS_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
_ERROR_BODY_LIMIT = 64 * 1024
_RAW_USAGE_LIMIT = 4096  # characters of a disbelieved usage object kept in its entry
_COUNT_TOKENS_TIMEOUT_S = 5.0
_PATH_CHARS = 500  # of an unserved path, quoted in its entry's error
# The provider paths a call about a stored response may reach: its id, and what follows.
_STORED_PATH = re.compile(r"/responses/(input_tokens|[A-Za-z0-9_-]{1,200}(/cancel|/input_items)?)")


@dataclass(frozen=True, slots=True)
class GatewayCall:
    """One client request as the HTTP layer saw it."""

    protocol: str  # openai | anthropic
    endpoint: str  # one of ``endpoints.ENDPOINTS``, or of ``LOCAL_ENDPOINTS``
    raw_body: bytes
    credential: str | None = None
    seed_body: bool = False  # the seed API's body: model_id and key inside
    end_user: str | None = None
    tags: str | None = None
    forward_headers: dict[str, str] = field(default_factory=dict)
    body_error: LedgerError | None = None  # found while reading the body (size, type)
    client: str | None = None  # the caller's address, for throttling bad keys
    principal: Principal | None = None  # already authenticated on the headers
    client_gone: Callable[[], bool] | None = None  # true once the client has disconnected
    method: str = "POST"
    path: str = ""
    resource: str | None = None  # the id a path names: the model of GET /v1/models/{id}
    upstream_path: str = ""  # (stored responses) the provider's path, query included


@dataclass(slots=True)
class GatewayReply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


# Yielded by a reply's stream once the client has every byte of its response. The
# response ends there; what the stream does after it (waiting for the provider's body
# to end, so its connection can be reused) neither keeps the client waiting nor needs
# it to stay. A complete stream's entry was recorded before its last event was relayed.
END_OF_RESPONSE = b""


class Gateway:
    """Everything the lifecycle needs, wired once at start-up."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        router: ModelRouter,
        prices: LivePrices,
        writer: LedgerWriter,
        budgets: BudgetGuard,
        default_max_output_tokens: int,
        responses_context_bound_tokens: int = 200_000,
        metrics: Metrics | None = None,
        max_body_bytes: int = 32 * 1024 * 1024,
        max_event_bytes: int = 8 * 1024 * 1024,
        redactor: Redactor | None = None,
        body_read_timeout_s: float | None = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        # Where open background responses are kept (None: they are recorded when created,
        # at their prompt estimate).
        self._engine = engine
        self.body_read_timeout_s = body_read_timeout_s
        self._max_event_bytes = max_event_bytes
        # Cuts the providers' keys out of whatever a provider says that Ledger passes on.
        self._redactor = redactor or Redactor()
        self._metrics = metrics
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._auth = authenticator
        self._budgets = budgets
        self._router = router
        self._prices = prices
        self._writer = writer
        self._default_max_output = default_max_output_tokens
        self._context_bound = responses_context_bound_tokens

    async def authenticate(self, credential: str | None, client: str | None) -> Principal:
        """The principal a key acts as (step 1 of :meth:`handle`, for a key in the headers)."""
        return await self._auth.authenticate(credential, client)

    async def handle(self, call: GatewayCall) -> GatewayReply:
        """Serve one request. Raises :class:`LedgerError` only before the key is known."""
        started = datetime.now(UTC)
        body: dict[str, Any] | None = None
        principal = call.principal
        if principal is None:
            credential = call.credential
            if credential is None and call.body_error is None:
                try:
                    body = decode_json_object(call.raw_body)
                except InvalidRequest:
                    body = None
                credential = key_from_body(body) if body else None
            # 1. Authenticate. Before this there is no one to charge, so no entry.
            principal = await self._auth.authenticate(credential, call.client)
        if principal.is_admin:
            if call.endpoint in ("models", "model"):
                # The operator may see what is served; there is no team to charge: no entry.
                return _json_reply(self._models_payload(call, principal), {})
            raise PermissionDenied(
                "The admin key cannot make model requests; create a team key with POST /admin/keys."
            )

        entry = self._new_entry(call, principal, started)
        access = current_access.get()
        if access is not None:  # the request's access line tells its entry
            access.entry, access.key_prefix = entry, principal.key_prefix
        self._in_flight += 1
        self._idle.clear()
        current_request_id.set(entry.request_id)
        self._writer.begin(entry)
        priced: tuple[Route, Price] | None = None
        reservation: Reservation | None = None
        try:
            if call.endpoint in LOCAL_ENDPOINTS:  # answered by Ledger itself: nothing forwarded
                return await self._answer_locally(entry, call, principal)
            # 2. Parse what the client sent.
            if call.body_error is not None:
                raise call.body_error
            if body is None:
                body = decode_json_object(call.raw_body)
            _note_names(entry, call, body)  # before checking: a refused body is theirs too
            entry.tags = _parse_tags(call.tags)
            request = self._parse(call, body)
            entry.requested_model = request.model
            entry.stream = request.stream

            # 3. Resolve the model, its provider and the price in effect now.
            route = self._router.resolve(request.model)
            if not route.provider.speaks(request.protocol):
                raise InvalidRequest(_wrong_protocol_message(route, request), param="model")
            self._router.check_allowed(principal, route, self._router.price_of(route, started))
            price = self._price(route, started)
            priced = (route, price)
            entry.served_model = route.upstream_model
            entry.provider = route.provider.name
            entry.price_id = price.id
            entry.priced_model = price.model  # model budgets match an alias's model too
            entry.unpriced = price.source == UNPRICED_SOURCE

            if request.endpoint == "count_tokens":
                return await self._count_tokens(entry, call, request, route)

            # 4. Estimate the prompt before any money is spent: under a hard budget, an
            # upper bound on it, or a refusal when part of it has none.
            scope = entry.budget_scope()  # team, key, user, model and tags are known now
            if entry.unpriced and self._budgets.has_hard_budget(scope):
                # unknown_models = "record" would reserve and record $0: unpriced spend
                # would escape the hard budget, so it fails closed instead.
                raise InvalidRequest(
                    f"A hard budget applies to this request and model '{route.model}' has no "
                    "price, so its cost could not be held against it. Price it with "
                    "POST /admin/prices or [[prices]] in the config file.",
                    param="model",
                    code="model_not_priced",
                )
            output_cap = self._output_cap(request, scope)
            caches = _asks_for_cache(request)
            # The most output it may be billed for (an embedding writes none).
            asked_output = (
                (request.max_output_tokens or output_cap or self._default_max_output)
                if request.writes_output
                else 0
            )

            # A request that asks for a dearer service (priority, fast mode, US-only
            # inference) reserves at that multiplier, so the overspend bound holds.
            factor = requested_factor(
                price,
                service_tier=body.get("service_tier"),
                speed=body.get("speed"),
                inference_geo=body.get("inference_geo"),
            )

            def worst_case_of(prompt_tokens: int, output_tokens: int) -> int:
                return worst_case_cost(
                    prompt_tokens,
                    output_tokens * request.choices,
                    price,
                    may_write_cache=caches,
                    factor=factor,
                )

            entry.estimated_input_tokens = await self._estimate(
                call, request, route, scope, lambda tokens: worst_case_of(tokens, asked_output)
            )

            # 5. Reserve the worst case on every hard budget that applies, or refuse.
            estimate = entry.estimated_input_tokens

            def worst_case(output_tokens: int) -> int:
                return worst_case_of(estimate, output_tokens)

            def clamp(remaining: int) -> tuple[int, int] | None:
                return _largest_output_within(remaining, worst_case, price)

            # A background response outlives its request, perhaps this process: its
            # reservation is kept in the database until its entry settles it.
            pending = request.background and not request.stream and self._engine is not None
            reservation = await self._budgets.reserve(
                entry.request_id,
                scope,
                worst_case(asked_output),
                started,
                clamp=clamp,
                durable=pending,
            )
            if reservation.clamped_output_tokens is not None:
                output_cap = reservation.clamped_output_tokens
            if reservation.holds and call.client_gone is not None and call.client_gone():
                # The budget's database kept this request waiting and its client has left:
                # nothing is forwarded for nobody (the reservation is released at $0).
                gone = LedgerError(
                    "The client disconnected before the request was forwarded.",
                    status=499,  # nobody reads it; the status nginx gives a client that left
                    code="client_disconnected",
                )
                entry.status, entry.http_status, entry.error = (
                    "client_disconnected",
                    499,
                    gone.message,
                )
                await self._record(entry, reservation)
                return self._error_reply(call.protocol, gone, entry)
            # What the provider is told it may write per choice, if anything.
            output_limit = output_cap if output_cap is not None else request.max_output_tokens

            # 6. Forward. From here the provider may bill, so a crash must not lose this.
            prompt_cost = 0 if price.free else price_cost(Usage(input_tokens=estimate), price).total
            self._writer.forwarding(entry, prompt_cost)
            sent_at = time.perf_counter()
            upstream = await route.provider.transport.send(
                route.provider.path(request.endpoint),
                self._upstream_body(call, request, route, output_cap),
                _upstream_headers(call),
                stream=request.stream,
            )
            if upstream.status >= 400:
                entry.provider_seconds = time.perf_counter() - sent_at
                return await self._relay_error(entry, call, upstream, reservation)
            if request.stream:
                return await self._stream(
                    entry, call, request, route, price, upstream, reservation, output_limit
                )

            # 7. Capture usage, 8. settle, 9. record.
            try:
                payload_bytes = await upstream.read()  # at most LEDGER_MAX_RESPONSE_BYTES
            finally:
                await upstream.aclose()
            entry.provider_seconds = time.perf_counter() - sent_at
            payload = _json_or_none(payload_bytes)
            if payload is None:
                raise UpstreamFailed("The provider returned a response that is not valid JSON.")
            running = endpoint_for(request.endpoint).still_running
            if pending and running is not None and (response_id := running(payload)):
                # Finished later: its one entry is written then, from the final usage.
                opened = await self._open_background(
                    entry, response_id, reservation, prompt_cost, output_limit
                )
                if opened:
                    headers = {**upstream.headers, **reservation.headers}
                    return GatewayReply(
                        upstream.status, {**headers, **_ledger_headers(entry)}, payload_bytes
                    )
                entry.error = "The background response could not be tracked: priced at its prompt."
            try:
                usage = endpoint_for(request.endpoint).usage(payload)
                doubt = (
                    None
                    if usage is None
                    else implausibility(
                        usage, max_output_tokens=output_limit, choices=request.choices
                    )
                )
                if doubt is not None:
                    raise ImplausibleUsage(doubt, raw=payload.get("usage"))
            except ImplausibleUsage as rejected:
                _disbelieve(entry, rejected)
                usage = None
            if usage is None:
                usage = self._estimated_usage(
                    entry, route, endpoint_for(request.endpoint).response_text(payload)
                )
                entry.usage_source = "estimated"
            else:
                entry.usage_source = "provider"
            self._settle(entry, usage, price, route)
            entry.status, entry.http_status = "ok", upstream.status
            if call.client_gone is not None and call.client_gone():
                # Answered and paid for, but nobody is there to receive it.
                entry.status = "client_disconnected"
                entry.error = "The client disconnected before the answer was sent."
            await self._record(entry, reservation)
            headers = {**upstream.headers, **reservation.headers, **_ledger_headers(entry)}
            headers["x-ledger-cost-usd"] = format_usd(entry.cost_nanos)
            return GatewayReply(upstream.status, headers, payload_bytes)
        except LedgerError as error:
            entry.status = _status_for(error)
            entry.http_status = error.status
            entry.error = error.message
            if isinstance(error, BudgetExceeded):
                entry.budget_id = error.budget_id
            if isinstance(error, UpstreamFailed) and error.may_have_billed and priced is not None:
                # The provider may have billed for the prompt: never record such a failure as $0.
                route, price = priced
                self._settle(
                    entry, Usage(input_tokens=entry.estimated_input_tokens or 0), price, route
                )
                entry.usage_source = "estimated"
            await self._record(entry, reservation)
            return self._error_reply(call.protocol, error, entry)
        except BaseException:
            entry.status = "interrupted"
            entry.error = "Ledger stopped before the request finished."
            with anyio.CancelScope(shield=True):
                await self._record(entry, reservation)
            raise

    async def handle_stored(self, call: GatewayCall) -> GatewayReply:
        """Relay a call about a stored response (retrieve, cancel, delete, input items,
        input token count): authenticated and recorded like any request, at $0, because
        nothing in it is billed. It names no model, so it goes to the first provider that
        speaks the caller's protocol. Raises :class:`LedgerError` only before the key is known.
        """
        started = datetime.now(UTC)
        principal = call.principal or await self._auth.authenticate(call.credential, call.client)
        if principal.is_admin:
            raise PermissionDenied("The admin key cannot make model requests.")
        entry = self._new_entry(call, principal, started)
        self._in_flight += 1
        self._idle.clear()
        current_request_id.set(entry.request_id)
        self._writer.begin(entry)
        try:
            if call.body_error is not None:
                raise call.body_error
            entry.tags = _parse_tags(call.tags)
            path, _, query = call.upstream_path.partition("?")
            if not _STORED_PATH.fullmatch(path) or "\n" in query or " " in query:
                raise LedgerError("No such response.", status=404, code="not_found")
            provider = self._router.provider_speaking(call.protocol)
            if provider is None:
                raise LedgerError(
                    "No configured provider speaks this protocol.", status=404, code="not_found"
                )
            if call.method == "POST" and call.raw_body.strip():
                model = stated_model(_json_or_none(call.raw_body) or {})
                entry.requested_model = fit_text(model, MODEL_CHARS) if model else None
            entry.provider = provider.name
            sent_at = time.perf_counter()
            upstream = await provider.transport.send(
                call.upstream_path,
                call.raw_body if call.method == "POST" else b"",
                _upstream_headers(call),
                stream=False,
                method=call.method,
            )
            if upstream.status >= 400:
                entry.provider_seconds = time.perf_counter() - sent_at
                return await self._relay_error(entry, call, upstream)
            try:
                body = await upstream.read()
            finally:
                await upstream.aclose()
            entry.provider_seconds = time.perf_counter() - sent_at
            payload = _json_or_none(body)
            if isinstance(payload, dict) and isinstance(payload.get("model"), str):
                entry.requested_model = fit_text(payload["model"], MODEL_CHARS)
            if call.method in ("GET", "POST") and isinstance(payload, dict):
                # A background response the client sees finished (retrieved, cancelled)
                # is settled now; its own entry is the one its creation answered with.
                await self.settle_background(payload)
            entry.status, entry.http_status = "ok", upstream.status
            await self._record(entry)
            return GatewayReply(
                upstream.status, {**upstream.headers, **_ledger_headers(entry)}, body
            )
        except LedgerError as error:
            entry.status, entry.http_status, entry.error = (
                _status_for(error),
                error.status,
                error.message,
            )
            await self._record(entry)
            return self._error_reply(call.protocol, error, entry)
        except BaseException:
            entry.status = "interrupted"
            entry.error = "Ledger stopped before the request finished."
            with anyio.CancelScope(shield=True):
                await self._record(entry)
            raise

    # -- background responses -----------------------------------------------------------

    async def _open_background(
        self,
        entry: LedgerEntry,
        response_id: str,
        reservation: Reservation,
        prompt_cost: int,
        output_limit: int | None,
    ) -> bool:
        """Keep a running background response open in the database, its entry unwritten.

        Its reservation stays (durable); the journal lets go of the request, since the
        row now owes its entry. False if the row cannot be written: the caller records
        the entry now, at the prompt's estimate, rather than lose it.
        """
        assert self._engine is not None
        entry.status, entry.http_status = "ok", 200
        entry.budgets_seen = reservation.rules_fingerprint
        holds = {"holds": self._budgets.hold_records(reservation), "output_limit": output_limit}
        try:
            await background.insert_open(
                self._engine,
                response_id=response_id,
                request_id=entry.request_id,
                provider=entry.provider or "",
                model=entry.requested_model,
                price_id=entry.price_id,
                team_id=entry.team_id,
                estimated_cost_nanos=prompt_cost,
                entry=msgspec.json.encode(entry).decode(),
                holds=json.dumps(holds),
                created_at=datetime.now(UTC),
            )
        except Exception:
            logger.exception("background response %s could not be kept open", response_id)
            return False
        reservation.settled = True  # by the open row's holds, whoever settles it
        self._writer.handed_over(entry.request_id)
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        return True

    async def settle_background(self, payload: Any) -> bool:
        """Record a finished background response's one entry, if it is open; once.

        ``payload`` is the response as its provider reports it. Whoever claims the open
        row first (client's retrieve or cancel, any process's poller) records it, with
        the request id the client was given at creation, and closes the row.
        """
        response_id = openai_responses.response_id(payload)
        status = openai_responses.status_of(payload)
        if self._engine is None or response_id is None:
            return False
        if status not in openai_responses.TERMINAL_STATUSES:
            return False
        claimed = await background.claim(
            self._engine, response_id, self._budgets.owner, datetime.now(UTC)
        )
        if claimed is None:
            return False
        self._in_flight += 1
        self._idle.clear()
        entry = entry_from_json(json.loads(claimed.entry))
        kept = json.loads(claimed.holds)
        with anyio.CancelScope(shield=True):
            self._finish_background(entry, payload, status, claimed, kept.get("output_limit"))
            entry.settlements = settlements_from_records(kept["holds"], entry.cost_nanos)
            await self._record(entry)
            # The entry is durable (journal or database): the row may go. Should this
            # process die first, the row's claim goes stale and the entry's request id
            # keeps the next settler from writing it twice.
            await background.close(self._engine, response_id)
        return True

    def _finish_background(
        self,
        entry: LedgerEntry,
        payload: Any,
        status: str | None,
        claimed: background.OpenResponse,
        output_limit: int | None,
    ) -> None:
        entry.ended_at = datetime.now(UTC)
        usage: Usage | None
        try:
            usage = openai_responses.usage_from_payload(payload)
            doubt = (
                None
                if usage is None
                else implausibility(usage, max_output_tokens=output_limit, choices=1)
            )
            if doubt is not None:
                raise ImplausibleUsage(doubt, raw=openai_responses.response_of(payload))
        except ImplausibleUsage as rejected:
            _disbelieve(entry, rejected)
            usage = None
        try:
            route = self._router.resolve(entry.requested_model or "")
            price: Price | None = self._price(route, entry.started_at)
        except LedgerError:
            route, price = None, None
        if usage is None:
            text = openai_responses.response_text(payload)
            model = entry.served_model or entry.requested_model or ""
            usage = Usage(
                input_tokens=entry.estimated_input_tokens or 0,
                output_tokens=count_text_tokens(model, text) if text else 0,
            )
            entry.usage_source = "estimated"
        else:
            entry.usage_source = "provider"
        if route is not None and price is not None:
            self._settle(entry, usage, price, route)
        else:  # the model is no longer served or priced: the prompt as priced at creation
            _note_usage(entry, usage)
            entry.cost_nanos = entry.input_cost_nanos = claimed.estimated_cost_nanos
            entry.error = _join(
                entry.error, "The model's price could not be found again: priced at the prompt."
            )
        if status == "failed":
            entry.status = "upstream_error"
            failure = payload.get("error") if isinstance(payload, dict) else None
            message = failure.get("message") if isinstance(failure, dict) else None
            entry.error = _join(entry.error, str(message or "The background response failed."))
        elif status == "cancelled":
            entry.error = _join(entry.error, "Cancelled; billed for what the provider reported.")

    async def poll_background(self, limit: int = 200) -> int:
        """Fetch open background responses from their providers; record the finished ones.

        The scheduler runs this once per tick across processes. A response its provider
        no longer has is recorded as failed, priced at its prompt. Returns how many were
        recorded.
        """
        if self._engine is None:
            return 0
        recorded = 0
        for response_id, provider_name in await background.due(
            self._engine, datetime.now(UTC), limit
        ):
            provider = self._router.provider_named(provider_name)
            if provider is None:
                logger.warning("background response %s: no provider %r", response_id, provider_name)
                continue
            try:
                upstream = await provider.transport.send(
                    f"/responses/{response_id}",
                    b"",
                    {"accept": "application/json"},
                    stream=False,
                    method="GET",
                )
                try:
                    payload = _json_or_none(await upstream.read())
                finally:
                    await upstream.aclose()
            except LedgerError as error:
                logger.warning("background response %s: %s", response_id, error.message)
                continue
            if upstream.status == 404:
                payload = {
                    "id": response_id,
                    "object": "response",
                    "status": "failed",
                    "error": {"message": "The provider no longer has this background response."},
                }
            elif upstream.status != 200 or not isinstance(payload, dict):
                continue
            if await self.settle_background(payload):
                recorded += 1
        return recorded

    # -- steps --------------------------------------------------------------------------

    def _new_entry(self, call: GatewayCall, principal: Principal, started: datetime) -> LedgerEntry:
        entry = LedgerEntry(
            request_id=new_request_id(),
            started_at=started,
            endpoint=_endpoint_name(call),
            team_id=principal.team_id,
            key_id=principal.key_id,
            team_name=principal.team_name,
        )
        _set_end_user(entry, call.end_user)  # x-ledger-user, when sent, names the end user
        return entry

    def _parse(self, call: GatewayCall, body: dict[str, Any]) -> ParsedRequest:
        rewritten = call.seed_body
        if call.seed_body:
            body = normalise_seed_body(body)
        elif (keyless := without_key(body)) is not None:
            body, rewritten = keyless, True
        parsed = endpoint_for(call.endpoint).parse(body)
        return replace(parsed, rewritten=True) if rewritten else parsed

    def _price(self, route: Route, at: datetime) -> Price:
        price = self._router.price_of(route, at)
        if price is None and route.unpriced is not None:
            price = self._unpriced_price(route, at)
        if route.free:
            return Price(
                model=route.model, provider=route.provider.name, effective_from=at,
                source="configured free", input=0, cached_input=0, cache_write_5m=0,
                cache_write_1h=0, output=0, free=True, id=price.id if price else None,
            )  # fmt: skip
        if price is not None and not _price_serves(price, route):
            # A price tagged for another provider (azure's, bedrock's) is not this
            # provider's price: the same model id is priced differently per provider.
            price = None
        if price is None:
            raise InvalidRequest(
                f"No price is known for model '{route.model}'. Add one with POST /admin/prices "
                "or [[prices]] in the config file, or configure the model as free.",
                param="model",
                code="model_not_priced",
            )
        return price

    def _unpriced_price(self, route: Route, at: datetime) -> Price | None:
        """The provider's ``unknown_models`` rule for a model no price knows."""
        rule = route.unpriced or ""
        if rule.startswith("estimate:"):
            # Priced as the named model: that version's id goes on the entry.
            return self._prices.price_at(rule.removeprefix("estimate:"), at, route.catalog)
        if rule == "record":
            # Served at no cost now, recorded as unpriced with its usage for re-rating.
            return Price(
                model=route.model, provider=route.provider.name, effective_from=at,
                source=UNPRICED_SOURCE, input=0, cached_input=0, cache_write_5m=0,
                cache_write_1h=0, output=0,
            )  # fmt: skip
        return None

    async def _estimate(
        self,
        call: GatewayCall,
        request: ParsedRequest,
        route: Route,
        scope: RequestScope,
        worst_case: Callable[[int], int],
    ) -> int:
        """The prompt's tokens: a local estimate, or the provider's count near a hard budget.

        The local estimate errs high and costs no round trip. Anthropic's ``count_tokens``
        (when the provider has it) is asked only when a hard budget applies and either
        the local estimate cannot bound part of the prompt (a file it cannot read) or its
        ``worst_case`` is near what a hard budget has left
        (``BudgetGuard.needs_exact_estimate``): then an exact count keeps the reservation
        from refusing a request that fits.

        Raises:
            InvalidRequest: under a hard budget, part of the prompt has no bound (and the
                provider did not count it), so no worst case can be reserved.
        """
        estimate = await estimate_prompt(
            endpoint_for(request.endpoint).counter,
            route.upstream_model,
            request.body,
            body_bytes=len(call.raw_body),
        )
        hard_budget = self._budgets.has_hard_budget(scope)
        provider = route.provider
        if (
            hard_budget
            and request.protocol == ANTHROPIC
            and provider.kind == "anthropic"
            and provider.use_count_tokens
            and (
                estimate.unbounded is not None
                or self._budgets.needs_exact_estimate(
                    scope, worst_case(estimate.tokens), datetime.now(UTC)
                )
            )
        ):
            counted = await self._upstream_count_tokens(call, request, route)
            if counted is not None:
                return counted  # the provider's own count, files included
        if hard_budget and estimate.unbounded is not None:
            raise InvalidRequest(
                f"A hard budget applies, and this request has {estimate.unbounded}: Ledger "
                "cannot bound what it would cost. Send the file inline (base64 PDF data).",
                param="messages",
                code="unbounded_prompt",
            )
        if request.stored_context:
            # previous_response_id / conversation: the provider adds context Ledger cannot
            # see. It is reserved (and, should usage be lost, priced) at a stated bound.
            return estimate.tokens + self._context_bound
        return estimate.tokens

    async def _upstream_count_tokens(
        self, call: GatewayCall, request: ParsedRequest, route: Route
    ) -> int | None:
        body = {k: request.body[k] for k in _COUNT_TOKENS_FIELDS if k in request.body}
        body["model"] = route.upstream_model
        try:
            with anyio.fail_after(_COUNT_TOKENS_TIMEOUT_S):
                response = await route.provider.transport.send(
                    route.provider.path("count_tokens"),
                    msgspec.json.encode(body),
                    _upstream_headers(call),
                    stream=False,
                )
                try:
                    payload = _json_or_none(await response.read())
                finally:
                    await response.aclose()
        except (LedgerError, TimeoutError):
            return None
        if response.status == 200 and isinstance(payload, dict):
            # The estimate prices the request when usage is lost or not believed, so a
            # count that is not plausible falls back to Ledger's own estimate.
            with contextlib.suppress(ImplausibleUsage):
                return reported_count(payload.get("input_tokens"), "input_tokens") or None
        return None

    def _output_cap(self, request: ParsedRequest, scope: RequestScope) -> int | None:
        """The output cap Ledger adds when a hard budget applies and the client set none.

        Without it the provider may write more than the reservation covered.
        """
        if (
            not request.writes_output
            or request.max_output_tokens is not None
            or not self._budgets.has_hard_budget(scope)
        ):
            return None
        return self._default_max_output

    def _upstream_body(
        self,
        call: GatewayCall,
        request: ParsedRequest,
        route: Route,
        output_cap: int | None = None,
    ) -> bytes:
        """The client's body as sent, changed only where Ledger must change it."""
        body = request.body
        changes: dict[str, Any] = {}
        adapter = endpoint_for(request.endpoint)
        if output_cap is not None and adapter.output_cap_field is not None:
            changes[adapter.output_cap_field] = output_cap
        elif output_cap is not None:
            if request.protocol == ANTHROPIC or (
                "max_tokens" in body and "max_completion_tokens" not in body
            ):
                changes["max_tokens"] = output_cap
            else:
                changes["max_completion_tokens"] = output_cap
        if route.upstream_model != request.model:
            changes["model"] = route.upstream_model
        if adapter.asks_for_stream_usage and request.stream and not request.include_usage:
            # Ask for the usage chunk; the relay drops it again before the client sees it.
            changes["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        if request.rewritten:
            return msgspec.json.encode({**body, **changes})
        if not changes:
            return call.raw_body
        if body and not any(key in body for key in changes):
            return _with_fields(call.raw_body, changes)
        return msgspec.json.encode({**body, **changes})

    async def _answer_locally(
        self, entry: LedgerEntry, call: GatewayCall, principal: Principal
    ) -> GatewayReply:
        """The model list, one model, or a refusal of a path Ledger does not serve: $0 entries.

        Each leaves its entry all the same: nothing a valid key asks for goes untraced.

        Raises:
            NotFound: the path is not one Ledger serves, or the model is not one this key
                may use (the lifecycle records it and answers 404 in the caller's shape).
        """
        if call.endpoint == "unrouted":
            path = _storable(call.path)[:_PATH_CHARS]  # it is kept in the entry's error
            raise NotFound(
                f"No route for {call.method} {path}: Ledger does not serve it. "
                "See the README's API overview for the routes it does."
            )
        if call.endpoint == "model":
            entry.requested_model = fit_text(_storable(call.resource or ""), MODEL_CHARS)
        payload = self._models_payload(call, principal)
        entry.status, entry.http_status = "ok", 200
        await self._record(entry)
        return _json_reply(payload, _ledger_headers(entry))

    def _models_payload(self, call: GatewayCall, principal: Principal) -> dict[str, Any]:
        """The model list, or the one model the path names (NotFound: not for this key)."""
        routes = self._router.models(principal)  # what this key may use, priced, and nothing else
        if call.endpoint == "models":
            return model_list(call.protocol, routes)
        found = next((r for r in routes if r.model == call.resource), None)
        if found is None:
            raise NotFound(
                f"The model '{call.resource}' does not exist or is not available to this key."
            )
        return model_object(call.protocol, found)

    async def _count_tokens(
        self, entry: LedgerEntry, call: GatewayCall, request: ParsedRequest, route: Route
    ) -> GatewayReply:
        provider = route.provider
        if provider.kind == "anthropic" and provider.use_count_tokens:
            upstream = await provider.transport.send(
                provider.path("count_tokens"),
                self._upstream_body(call, request, route),
                _upstream_headers(call),
                stream=False,
            )
            if upstream.status >= 400:
                return await self._relay_error(entry, call, upstream)
            try:
                body = await upstream.read()
            finally:
                await upstream.aclose()
            payload = _json_or_none(body)
            tokens = payload.get("input_tokens") if isinstance(payload, dict) else None
            try:
                tokens = reported_count(tokens, "input_tokens") if tokens is not None else None
            except ImplausibleUsage:
                tokens = None
            if tokens is None:
                raise UpstreamFailed(
                    "The provider's count_tokens answer has no plausible input_tokens."
                )
            headers = dict(upstream.headers)
        else:
            tokens = approximate_anthropic_prompt(request.body)
            body = msgspec.json.encode({"input_tokens": tokens})
            headers = {"content-type": "application/json"}
        entry.estimated_input_tokens = tokens
        entry.status, entry.http_status = "ok", 200
        await self._record(entry)
        return GatewayReply(200, {**headers, **_ledger_headers(entry)}, body)

    async def _relay_error(
        self,
        entry: LedgerEntry,
        call: GatewayCall,
        upstream: UpstreamResponse,
        reservation: Reservation | None = None,
    ) -> GatewayReply:
        """A provider's own error reaches the client as it came, less any provider key in it.

        Providers do not bill errors. A provider refusing Ledger's own credentials (401,
        403) is Ledger's problem, not the client's: it is answered 502, never as though the
        client's key had been refused.
        """
        try:
            body = self._redactor.bytes(await upstream.read())
        except LedgerError:
            body = b""
        await upstream.aclose()
        entry.status = "upstream_error"
        entry.http_status = upstream.status
        entry.error = _provider_error_text(body, upstream.status)
        if upstream.status in (401, 403):
            refused = UpstreamCredentialsRefused(entry.provider or "")
            entry.http_status = refused.status
            entry.error = f"{refused.message} The provider said: {entry.error}"
            await self._record(entry, reservation)
            return self._error_reply(call.protocol, refused, entry)
        await self._record(entry, reservation)
        if not body or _json_or_none(body) is None:
            error = UpstreamFailed(
                f"The provider answered HTTP {upstream.status}: {entry.error}",
                status=upstream.status,
            )
            return self._error_reply(call.protocol, error, entry)
        return GatewayReply(
            upstream.status,
            {**upstream.headers, **_ledger_headers(entry)},
            body[:_ERROR_BODY_LIMIT],
        )

    async def _stream(
        self,
        entry: LedgerEntry,
        call: GatewayCall,
        request: ParsedRequest,
        route: Route,
        price: Price,
        upstream: UpstreamResponse,
        reservation: Reservation,
        output_limit: int | None,
    ) -> GatewayReply:
        redact = self._redactor.bytes if self._redactor else None
        relay = endpoint_for(request.endpoint).relay(request, self._max_event_bytes, redact)
        entry.http_status = upstream.status

        recorded = False
        relay_started = time.perf_counter()

        async def settle_and_record() -> None:
            nonlocal recorded
            recorded = True
            entry.provider_seconds += time.perf_counter() - relay_started
            with anyio.CancelScope(shield=True):
                self._settle_stream(entry, request, route, price, relay, output_limit)
                await self._record(entry, reservation)

        async def chunks() -> AsyncGenerator[bytes, None]:
            entry.status = "interrupted"
            try:
                async for chunk in upstream.chunks:
                    # Until the client has its first event, a burst of events is relayed
                    # one event first: it need not wait while the rest are parsed.
                    parts = _first_event_apart(chunk) if entry.first_token_at is None else (chunk,)
                    for part in parts:
                        out = relay.feed(part)
                        if out and entry.first_token_at is None:
                            entry.first_token_at = datetime.now(UTC)
                        if relay.done:
                            # The last event: the stream is complete whenever the body's
                            # end arrives and whether or not the client waits for it (the
                            # SDKs don't). Its entry is recorded (journaled, or committed)
                            # before the client has that event: a client that read the
                            # whole stream can read its entry at once, and a process
                            # killed after that point has it all the same.
                            entry.status = "ok"
                            if getattr(relay, "failed", False):  # a response.failed event
                                entry.status = "upstream_error"
                                entry.error = relay.provider_error
                            out += relay.finish()
                            entry.ended_at = datetime.now(UTC)
                            await settle_and_record()
                        if out:
                            yield out
                        if relay.done:
                            break
                    if relay.done:
                        break
                if relay.done:
                    yield END_OF_RESPONSE
                else:
                    tail = relay.finish()
                    if tail:
                        yield tail
                    entry.status = "upstream_error"
                    entry.error = relay.provider_error or "The provider's stream ended early."
            except LedgerError as error:
                entry.status = "timeout" if isinstance(error, UpstreamTimeout) else "upstream_error"
                entry.error = error.message
                # Tell the client in its own protocol rather than ending the stream silently.
                yield self._redactor.bytes(_stream_error_event(request.protocol, error))
            except (asyncio.CancelledError, GeneratorExit):
                # Cancelled: by the client leaving, or by Ledger's own shutdown deadline.
                if not relay.done:
                    entry.status = "interrupted"
                    entry.error = "Ledger stopped before the stream ended."
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    if not recorded:
                        entry.provider_seconds += time.perf_counter() - relay_started
                        if entry.status == "interrupted" and await _client_left(call):
                            entry.status = "client_disconnected"
                            entry.error = "The client disconnected before the stream ended."
                    # After the last event, only so the connection can be used again.
                    await upstream.aclose(finished=relay.done)
                    if not recorded:
                        self._settle_stream(entry, request, route, price, relay, output_limit)
                        await self._record(entry, reservation)

        headers = {
            **upstream.headers,
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **reservation.headers,
            **_ledger_headers(entry),
        }
        return GatewayReply(upstream.status, headers, stream=await _started(chunks()))

    def _settle_stream(
        self,
        entry: LedgerEntry,
        request: ParsedRequest,
        route: Route,
        price: Price,
        relay: StreamRelay,
        output_limit: int | None,
    ) -> None:
        usage = relay.usage
        rejected = relay.rejected
        if rejected is None and usage is not None:
            doubt = implausibility(usage, max_output_tokens=output_limit, choices=request.choices)
            if doubt:
                rejected = ImplausibleUsage(doubt, raw=relay.raw_usage)
        if rejected is not None:
            _disbelieve(entry, rejected)
            usage = None  # nothing the provider said about usage is believed
        complete = usage is not None and (
            not endpoint_for(request.endpoint).usage_needs_output
            or getattr(relay, "output_reported", False)
        )
        if complete and usage is not None:
            entry.usage_source = "provider"
        else:
            # The stream ended without final usage: count what was seen, and say so.
            seen = self._estimated_usage(entry, route, "".join(relay.text))
            if usage is not None:  # Anthropic's message_start still gave the exact input
                # (and how it was served: tier, region, speed, tool calls so far).
                seen = replace(usage, output_tokens=max(seen.output_tokens, usage.output_tokens))
            usage = seen
            entry.usage_source = "estimated"
        self._settle(entry, usage, price, route)

    def _estimated_usage(self, entry: LedgerEntry, route: Route, output_text: str) -> Usage:
        return Usage(
            input_tokens=entry.estimated_input_tokens or 0,
            output_tokens=count_text_tokens(route.upstream_model, output_text)
            if output_text
            else 0,
        )

    def _settle(self, entry: LedgerEntry, usage: Usage, price: Price, route: Route) -> None:
        _note_usage(entry, usage)
        if price.free or route.free:
            return
        if route.provider.kind == OPENAI and openai.is_regional_endpoint(route.provider.base_url):
            usage = replace(usage, regional=True)
        # Priced from what the response reported (tier, region, speed, tool calls), at
        # the time the request started (time-of-day prices).
        cost = price_cost(usage, price, at=entry.started_at)
        parts = [
            cost.input,
            cost.cache_read,
            cost.cache_write,
            cost.output,
            cost.request_fee,
            cost.tool_fees,
        ]
        if cost.total > MAX_ENTRY_COST_NANOS:
            # Only prices far above any provider's reach this (see MAX_ENTRY_COST_NANOS):
            # the entry is capped, its buckets filled in order up to the ceiling, and said so.
            left = MAX_ENTRY_COST_NANOS
            for index, part in enumerate(parts):
                parts[index] = min(part, left)
                left -= parts[index]
            entry.error = _join(
                entry.error,
                f"The cost ({format_usd(cost.total)} USD) is above the most one entry may "
                f"cost; recorded as {format_usd(MAX_ENTRY_COST_NANOS)} USD.",
            )
        (
            entry.input_cost_nanos,
            entry.cache_read_cost_nanos,
            entry.cache_write_cost_nanos,
            entry.output_cost_nanos,
            entry.request_fee_nanos,
            entry.tool_fees_nanos,
        ) = parts
        entry.pricing_notes = json.dumps(list(cost.applied)) if cost.applied else None
        entry.cost_nanos = sum(parts)

    async def _record(self, entry: LedgerEntry, reservation: Reservation | None = None) -> None:
        """Settle the reservation with the actual cost and write the entry: one commit."""
        if entry.ended_at is None:  # a stream ends when its client has every byte
            entry.ended_at = datetime.now(UTC)
        if self._redactor:  # what a provider said may quote its key
            entry.error = self._redactor.maybe(entry.error)
            entry.raw_usage = self._redactor.maybe(entry.raw_usage)
        if entry.status == "ok" and entry.price_id is None and entry.unpriced:
            entry.status = "unpriced"  # served under unknown_models = "record"
        if reservation is not None:
            entry.settlements = self._budgets.settle(reservation, entry.cost_nanos)
            entry.budgets_seen = reservation.rules_fingerprint
        try:
            await self._writer.record(entry)
        except Exception:
            logger.exception("ledger entry %s could not be recorded", entry.request_id)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        if self._metrics is not None:
            self._observe(entry)

    async def drain(self, timeout_s: float) -> int:
        """Wait until every request in flight has been recorded; returns how many remain."""
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
        return self._in_flight

    def _observe(self, entry: LedgerEntry) -> None:
        assert self._metrics is not None
        wall = (datetime.now(UTC) - entry.started_at).total_seconds()
        self._metrics.observe_request(
            team=entry.team_name or "",
            model=entry.requested_model or "",
            status=entry.status,
            endpoint=entry.endpoint,
            cost_nanos=entry.cost_nanos,
            tokens={
                "input": entry.input_tokens,
                "cache_read": entry.cache_read_tokens,
                "cache_write_5m": entry.cache_write_5m_tokens,
                "cache_write_1h": entry.cache_write_1h_tokens,
                "output": entry.output_tokens,
            },
            added_seconds=max(0.0, wall - entry.provider_seconds),
        )

    def _error_reply(self, protocol: str, error: LedgerError, entry: LedgerEntry) -> GatewayReply:
        body = openai_error_body(error) if protocol == OPENAI else anthropic_error_body(error)
        headers = {"content-type": "application/json", **error.headers, **_ledger_headers(entry)}
        return GatewayReply(error.status, headers, self._redactor.bytes(msgspec.json.encode(body)))


UNPRICED_SOURCE = "unpriced: unknown_models = record"


# -- small pure helpers -----------------------------------------------------------------

# Endpoints Ledger answers itself, without a body to parse or a provider to ask.
_LOCAL_ENTRY_NAMES = {"models": "models.list", "model": "models.retrieve", "unrouted": "unrouted"}
LOCAL_ENDPOINTS = frozenset(_LOCAL_ENTRY_NAMES)


def _storable(text: str) -> str:
    """``text`` without NUL characters, which PostgreSQL text cannot hold."""
    return text.replace("\x00", "")


def _json_reply(payload: dict[str, Any], headers: dict[str, str]) -> GatewayReply:
    return GatewayReply(
        200, {"content-type": "application/json", **headers}, msgspec.json.encode(payload)
    )


def model_object(protocol: str, route: Route) -> dict[str, Any]:
    """One model as ``GET /v1/models/{id}`` (and each item of the list) shows it."""
    if protocol == ANTHROPIC:
        return {
            "type": "model",
            "id": route.model,
            "display_name": route.model,
            "created_at": "2025-01-01T00:00:00Z",
        }
    return {"id": route.model, "object": "model", "created": 0, "owned_by": route.provider.name}


def model_list(protocol: str, routes: list[Route]) -> dict[str, Any]:
    """``GET /v1/models`` in OpenAI's shape, or Anthropic's (``has_more``, first and last id)."""
    data = [model_object(protocol, route) for route in routes]
    if protocol == ANTHROPIC:
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    return {"object": "list", "data": data}


async def _client_left(call: GatewayCall) -> bool:
    """Whether the client disconnected (rather than Ledger stopping the stream)."""
    if call.client_gone is None:
        return False
    # The disconnect that cancelled the stream may still be on its way to the watcher.
    await asyncio.sleep(0.01)
    return call.client_gone()


def _first_event_apart(chunk: bytes) -> tuple[bytes, ...]:
    """``chunk`` cut after its first blank line (an SSE event's end), if more follows it."""
    end = chunk.find(b"\n\n") + 2
    return (chunk,) if end in (1, len(chunk)) else (chunk[:end], chunk[end:])


async def _started(stream: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """``stream`` with its first chunk already read.

    Reading it enters the relay's ``try``, so whatever happens next — even a response that
    is never sent because the client left first — runs its ``finally`` and records the
    entry (a started async generator is closed when it is dropped; an unstarted one is not).
    """
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None

    async def relay() -> AsyncIterator[bytes]:
        try:
            if first is None:
                return
            yield first
            async for chunk in stream:
                yield chunk
        finally:
            # Closing the relay (a client that left) closes the stream at once, not at GC.
            await stream.aclose()

    return relay()


def _note_usage(entry: LedgerEntry, usage: Usage) -> None:
    entry.input_tokens = usage.input_tokens
    entry.cache_read_tokens = usage.cache_read_tokens
    entry.cache_write_5m_tokens = usage.cache_write_5m_tokens
    entry.cache_write_1h_tokens = usage.cache_write_1h_tokens
    entry.output_tokens = usage.output_tokens
    entry.reasoning_tokens = usage.reasoning_tokens
    entry.service_tier = usage.service_tier
    entry.provider_cost_nanos = usage.provider_cost_nanos


def _set_end_user(entry: LedgerEntry, named: str | None) -> None:
    """The end user, its session and (when shortened) its whole name, as they are stored.

    Budgets match on ``entry.end_user``, so they see exactly what the ledger keeps.
    """
    end_user = identify_end_user(named)
    if end_user is not None:
        entry.end_user = end_user.id
        entry.end_user_session = end_user.session
        entry.end_user_full = end_user.full


def _note_names(entry: LedgerEntry, call: GatewayCall, body: dict[str, Any]) -> None:
    """The model and end user the body names, fitted to their columns, checked or not."""
    model = stated_model(body)
    if model is not None:
        entry.requested_model = fit_text(model, MODEL_CHARS)
    if not call.end_user:
        _set_end_user(entry, stated_end_user(call.protocol, body))


def _endpoint_name(call: GatewayCall) -> str:
    if call.endpoint in LOCAL_ENDPOINTS:
        return _LOCAL_ENTRY_NAMES[call.endpoint]
    adapter = ENDPOINTS.get(call.endpoint)  # calls about stored responses have none
    return adapter.entry_name if adapter is not None else call.endpoint


def _ledger_headers(entry: LedgerEntry) -> dict[str, str]:
    return {"x-ledger-request-id": entry.request_id}


def _upstream_headers(call: GatewayCall) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json"}
    headers.update(call.forward_headers)
    if call.protocol == ANTHROPIC:
        headers.setdefault("anthropic-version", anthropic.DEFAULT_ANTHROPIC_VERSION)
    return headers


def _parse_tags(header: str | None) -> list[str]:
    if not header:
        return []
    tags = [tag.strip() for tag in header.split(",") if tag.strip()]
    if len(tags) > _MAX_TAGS or not all(_TAG.match(tag) for tag in tags):
        raise InvalidRequest(
            f"x-ledger-tags must be at most {_MAX_TAGS} comma-separated tags of letters, digits "
            "and _.:/=- (64 characters each)."
        )
    return sorted(set(tags))


# Price provider tags that name no particular provider: any route may use them.
_ANY_PROVIDER = frozenset({"", "unknown", "config", "custom"})


def _price_serves(price: Price, route: Route) -> bool:
    """Whether a price is for the provider serving the route: its name or protocol kind."""
    provider = route.provider
    return provider.kind == "mock" or price.provider in (
        _ANY_PROVIDER | {provider.name, provider.kind}
    )


def _json_or_none(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def _disbelieve(entry: LedgerEntry, rejected: ImplausibleUsage) -> None:
    """Say in the entry that the provider's usage was not believed, and keep what it was."""
    entry.error = _join(
        entry.error,
        f"The provider's usage was not believed ({rejected.reason}); the entry is priced "
        "from Ledger's estimate of the prompt and of the output it saw.",
    )
    if rejected.raw is not None:
        try:
            raw = msgspec.json.encode(rejected.raw).decode()
        except (TypeError, ValueError, OverflowError):
            raw = repr(rejected.raw)
        entry.raw_usage = raw[:_RAW_USAGE_LIMIT]


def _join(first: str | None, second: str) -> str:
    return second if not first else f"{first} {second}"


def _provider_error_text(body: bytes, status: int) -> str:
    payload = _json_or_none(body)
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:1000]
    text = body[:300].decode("utf-8", errors="replace").strip()
    return text or f"HTTP {status} with an empty body"


def _status_for(error: LedgerError) -> str:
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamFailed):
        return "upstream_error"
    if error.code in ("budget_exceeded", "budget_unavailable"):
        return "blocked"  # refused by a budget (or its unreadable state), never forwarded
    return "invalid_request" if error.status < 500 else "upstream_error"


def _stream_error_event(protocol: str, error: LedgerError) -> bytes:
    if protocol == OPENAI:
        return b"data: " + json.dumps(openai_error_body(error)).encode() + b"\n\n"
    return b"event: error\ndata: " + json.dumps(anthropic_error_body(error)).encode() + b"\n\n"


# A budget that clamps instead of refusing still refuses when fewer tokens than this fit.
MIN_USEFUL_OUTPUT_TOKENS = 64


def _largest_output_within(
    remaining: int, worst_case: Callable[[int], int], price: Price
) -> tuple[int, int] | None:
    """The largest output cap whose worst case fits in ``remaining``, and that worst case."""
    if price.output <= 0 or worst_case(MIN_USEFUL_OUTPUT_TOKENS) > remaining:
        return None
    low, high = MIN_USEFUL_OUTPUT_TOKENS, MIN_USEFUL_OUTPUT_TOKENS
    while worst_case(high * 2) <= remaining and high < 10_000_000:
        high *= 2
    high *= 2
    while low + 1 < high:  # worst_case(low) fits, worst_case(high) does not
        middle = (low + high) // 2
        if worst_case(middle) <= remaining:
            low = middle
        else:
            high = middle
    return low, worst_case(low)


def _with_fields(raw: bytes, fields: dict[str, Any]) -> bytes:
    """The JSON object ``raw`` with ``fields`` (keys it does not have) added at its start.

    The client's bytes stay as they are: encoding the whole body again costs the event
    loop milliseconds for a large prompt, and other requests wait for it.
    """
    start = raw.index(b"{")  # a JSON object, so only whitespace comes before it
    # One copy of the body, not two: ``a + b + c`` builds an intermediate as large as it.
    head = msgspec.json.encode(fields)[:-1] + b","
    return b"".join((raw[:start], head, memoryview(raw)[start + 1 :]))


def _asks_for_cache(request: ParsedRequest) -> bool:
    """Anthropic prompt caching writes at up to twice the input price: reserve for it.

    A ``cache_control`` key anywhere in the body (system, message blocks, tools, the top
    level) asks for it; the words in a prompt's text do not. Only objects and arrays are
    walked, so a 4.5 MB prompt costs no more to check than a short one.
    """
    if request.protocol != ANTHROPIC:
        return False
    containers: list[Any] = [request.body]
    while containers:
        value = containers.pop()
        if isinstance(value, dict):
            if "cache_control" in value:
                return True
            containers.extend(v for v in value.values() if isinstance(v, dict | list))
        else:
            containers.extend(v for v in value if isinstance(v, dict | list))
    return False


def _wrong_protocol_message(route: Route, request: ParsedRequest) -> str:
    path = "/v1/messages" if route.provider.kind == ANTHROPIC else "/v1/chat/completions"
    return (
        f"The model '{route.model}' is served by the {route.provider.kind} provider "
        f"'{route.provider.name}'; send it to {path}."
    )
