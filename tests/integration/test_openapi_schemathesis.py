"""Schemathesis with ``--checks all`` finds nothing the schema and the server disagree on.

Every check is on: schema-valid requests are accepted (or answered 401/403/404/409/429),
schema-invalid ones refused with a 4xx, answers match their declared status, body, headers
and content type, 405 and OPTIONS list exactly the methods of their path. The examples per
operation are bounded and the seed fixed, so a run is repeatable and quick.

SQLite only: the schema is built from the route declarations, which are the same on both
databases; what the checks exercise beyond it (validation before any query) is too.

The gateway routes (``/v1/...`` and the seed API's ``/api/v7/llm/...``) are left out: their
bodies are the providers' protocols, documented as open (a field Ledger does not name is
forwarded as sent), so a schema-valid body can hold anything and only the provider decides
whether it is acceptable. The mock provider answering here is no stand-in for that verdict.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.config import Settings
from tests.live import ADMIN_KEY, LiveServer

GATEWAY_PATHS = r"^/v1/|^/api/v7/llm/"


def _schemathesis(
    server: LiveServer, key: str, *args: str, report: Path
) -> subprocess.CompletedProcess[str]:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st is not None, "schemathesis (the `st` command) is a test dependency"
    return subprocess.run(
        [
            st, "run", f"{server.url}/schema/openapi.json",
            "--checks", "all",
            "--max-examples", "10",
            "--seed", "20",
            "--workers", "1",
            "--header", f"Authorization: Bearer {key}",
            "--report", "junit", "--report-dir", str(report),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.xfail(
    strict=True,
    reason="still open (issue 20 item 8): POST /admin/budgets and POST /admin/prices take a "
    "bare object (no required fields, extras allowed by the schema, refused by the server). "
    "Remove this mark when they are fixed (strict: it fails then).",
)
def test_schemathesis_finds_nothing_on_the_admin_and_report_routes(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        admin_key=ADMIN_KEY,
        scheduler=False,
        writer_process=False,
    )
    with LiveServer(settings) as server:
        server.team_key()  # a team for the key, budget and report routes to name
        run = _schemathesis(
            server, ADMIN_KEY, "--exclude-path-regex", GATEWAY_PATHS, report=tmp_path / "report"
        )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-2_000:]
    # Not vacuous: every admin and report operation was tried.
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested is not None and int(tested[1]) >= 25, run.stdout[-5_000:]


def test_options_lists_every_method_of_a_path_with_several_handlers(gateway: LiveServer) -> None:
    for path, methods in (
        ("/admin/budgets", "GET, OPTIONS, POST"),
        ("/admin/budgets/1", "DELETE, GET, OPTIONS, PATCH"),
        ("/admin/teams", "GET, OPTIONS, POST"),
    ):
        response = gateway.admin.options(path)
        assert response.status_code == 204, path
        assert response.headers["allow"] == methods, path


def test_a_spend_range_that_ends_before_it_starts_is_an_empty_report(gateway: LiveServer) -> None:
    response = gateway.admin.get(
        "/api/reports/spend",
        params={"since": "2026-10-02T00:00:00Z", "until": "2026-10-01T00:00:00Z"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["totals"]["requests"] == 0


def test_a_month_past_the_last_date_is_refused_with_400(gateway: LiveServer) -> None:
    for month in ("9999-12", "9999-01"):
        response = gateway.admin.get(f"/api/reports/monthly/{month}")
        assert response.status_code == 400, (month, response.text)
    assert gateway.admin.get("/api/reports/monthly/9998-12").status_code == 200


def test_group_by_a_dimension_twice_groups_by_it_once(gateway: LiveServer) -> None:
    once = gateway.admin.get("/api/reports/spend", params={"group_by": "team"})
    twice = gateway.admin.get("/api/reports/spend", params={"group_by": ["team", "team,team"]})
    assert twice.status_code == 200, twice.text
    assert twice.json()["group_by"] == once.json()["group_by"] == ["team"]
    spaced = gateway.admin.get("/api/reports/spend", params={"group_by": "team, model"})
    assert spaced.status_code == 400 and "group by" in spaced.json()["error"]["message"]


def test_a_range_too_long_for_its_granularity_is_shown_at_a_coarser_one(
    gateway: LiveServer,
) -> None:
    # Two years: 17544 hours (more than the 10000 a series holds), 731 days.
    years = {"since": "2024-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    hourly = gateway.admin.get("/api/reports/spend", params={**years, "granularity": "hour"})
    assert hourly.status_code == 200, hourly.text
    assert hourly.json()["granularity"] == "day"
    assert len(hourly.json()["buckets"]) == 731
    # Year 1 to 9000: more than 10000 of any bucket, so totals and groups without a series.
    ages = {"since": "0001-01-01T00:00:00Z", "until": "9000-01-01T00:00:00Z"}
    monthly = gateway.admin.get("/api/reports/spend", params={**ages, "granularity": "month"})
    assert monthly.status_code == 200, monthly.text
    assert monthly.json()["granularity"] is None
    assert monthly.json()["totals"]["requests"] == 0
