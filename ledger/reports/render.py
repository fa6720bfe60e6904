"""The monthly report's files: JSON, CSV and XLSX, byte-for-byte reproducible.

Money is exact everywhere: decimal strings with nine places in JSON and CSV. In XLSX
money cells are numbers (so a spreadsheet can add them) written from the exact
decimal, with the number format ``#,##0.000000000``; a spreadsheet holds 15
significant digits, so a cell is exact to the nano below one million USD and to
fifteen digits above. The exact strings are always in the CSV and the JSON.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

FORMATS = {
    "json": "application/json",
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

COLUMNS = (
    "month",
    "line",
    "team",
    "cost_centre",
    "model",
    "source_month",
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "markup_percent",
    "markup_usd",
    "total_usd",
)
_FIGURES = COLUMNS[6:12]
_MONEY = ("cost_usd", "markup_usd", "total_usd")


def render(document: dict[str, Any], fmt: str) -> bytes:
    """The report ``document`` as a file in ``fmt`` (json, csv or xlsx)."""
    if fmt == "json":
        return render_json(document)
    if fmt == "csv":
        return render_csv(document)
    if fmt == "xlsx":
        return render_xlsx(document)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}")


def render_json(document: dict[str, Any]) -> bytes:
    """Indented JSON, keys in the document's order, UTF-8, newline-terminated."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def rows(document: dict[str, Any]) -> list[list[Any]]:
    """The report as table rows under :data:`COLUMNS`: lines, team totals, grand total."""
    table: list[list[Any]] = []
    month = document["month"]
    for section in document["teams"]:
        for line in section["lines"]:
            table.append(
                [month, line["kind"], section["team"], section["cost_centre"], line["model"],
                 line["source_month"], *(line[name] for name in _FIGURES), line["cost_usd"],
                 section["markup_percent"], line["markup_usd"], line["total_usd"]]
            )  # fmt: skip
        subtotal = section["subtotal"]
        table.append(
            [month, "team_total", section["team"], section["cost_centre"], None, None,
             *(subtotal[name] for name in _FIGURES), subtotal["cost_usd"],
             section["markup_percent"], subtotal["markup_usd"], subtotal["total_usd"]]
        )  # fmt: skip
    total = document["total"]
    table.append(
        [month, "grand_total", None, None, None, None, *(total[name] for name in _FIGURES),
         total["cost_usd"], None, total["markup_usd"], total["total_usd"]]
    )  # fmt: skip
    return table


def render_csv(document: dict[str, Any]) -> bytes:
    """One header row, then :func:`rows`; empty cells for missing values; CRLF line ends."""
    return csv_bytes(COLUMNS, rows(document))


def csv_bytes(header: Sequence[str], table: Iterable[Sequence[Any]]) -> bytes:
    """A CSV file; text a spreadsheet would run as a formula is made inert (see below)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in table:
        writer.writerow(["" if value is None else spreadsheet_text(value) for value in row])
    return buffer.getvalue().encode()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: Any) -> Any:
    """``value``, with an apostrophe before text that a spreadsheet would read as a formula.

    Model names, end users and tags come from API clients; a cell such as
    ``=HYPERLINK(...)`` must stay text when finance opens the file. Numbers (including
    negative amounts such as ``-0.000000002``) are left alone.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            Decimal(value)
        except ArithmeticError:
            return "'" + value
    return value


def render_xlsx(document: dict[str, Any]) -> bytes:
    """A workbook with the report table on "Report" and the month's details on "About"."""
    from openpyxl import Workbook  # type: ignore[import-untyped]
    from openpyxl.styles import Font  # type: ignore[import-untyped]

    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Report"
    sheet.append(list(COLUMNS))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    money = {COLUMNS.index(name) for name in _MONEY}
    figures = {COLUMNS.index(name) for name in _FIGURES}
    percent = COLUMNS.index("markup_percent")
    for values in rows(document):
        sheet.append(
            [
                Decimal(value) if value is not None and (i in money or i == percent) else value
                for i, value in enumerate(values)
            ]
        )
        row = sheet.max_row
        for cell in sheet[row]:
            if isinstance(cell.value, str):
                cell.data_type = "s"  # text, never a formula, whatever it starts with
        for index in money:
            sheet.cell(row, index + 1).number_format = "#,##0.000000000"
        for index in figures:
            sheet.cell(row, index + 1).number_format = "#,##0"
        sheet.cell(row, percent + 1).number_format = "0.00"
        if values[1] in ("team_total", "grand_total"):
            for cell in sheet[row]:
                cell.font = Font(bold=True)
    sheet.freeze_panes = "A2"
    for index, name in enumerate(COLUMNS):
        width = 22 if name in _MONEY else max(len(name) + 2, 12)
        sheet.column_dimensions[sheet.cell(1, index + 1).column_letter].width = width

    about = workbook.create_sheet("About")
    for pair in (
        ("Report", f"Ledger monthly cost report {document['month']}"),
        ("Time zone", document["timezone"]),
        ("Period start", document["period"]["start"]),
        ("Period end (exclusive)", document["period"]["end"]),
        ("Status", document["status"]),
        ("Closed at", document["closed_at"] or ""),
        ("Currency", document["currency"]),
        ("Precision", "USD amounts are exact to 1e-9 USD (the CSV and JSON carry exact text)"),
    ):
        about.append(list(pair))
    about.column_dimensions["A"].width = 24
    about.column_dimensions["B"].width = 70

    # Fixed document dates and zip entry times: the same report gives the same bytes.
    fixed = datetime.fromisoformat(document["period"]["end"]).replace(tzinfo=None)
    workbook.properties.created = fixed
    workbook.properties.modified = fixed
    buffer = io.BytesIO()
    workbook.save(buffer)
    return _stable_zip(buffer.getvalue())


def _stable_zip(data: bytes) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            stable = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            stable.compress_type = zipfile.ZIP_DEFLATED
            stable.external_attr = info.external_attr
            target.writestr(stable, source.read(info.filename))
    return output.getvalue()
