"""HTML/PDF tables of the anatomy blocks: the landmark zones and peripheral vs central involvement.

Returns plain ``(title, headers, rows, note)`` tuples of formatted strings; :mod:`CovidCTLib.report.content`
turns them into its tables (issue 14). Research software, not a diagnosis.
"""

from __future__ import annotations

from typing import Any

TableSpec = tuple[str, list[str], list[list[str]], str]


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(float(value), fmt)


def zone_table(report: dict[str, Any]) -> list[TableSpec]:
    """The anatomical zones (carina / IPV level, or the stated fallback to thirds)."""
    block = report.get("anatomical_zones")
    if not isinstance(block, dict):
        return []
    rows = [
        [
            str(z["lung"]).capitalize(),
            str(z["zone"]),
            _num(z.get("lung_ml"), ".1f"),
            _num(z.get("infection_ml"), ".1f"),
            _num(z.get("percent"), ".1f"),
            str(z.get("score", "-")),
        ]
        for z in block.get("zones") or []
    ]
    landmarks = block.get("landmarks") or {}
    note = (
        f"Made by: {block.get('method')}. Carina at z = {_num(landmarks.get('carina_z_mm'), '.1f')} mm, "
        f"IPV level (proxy) at z = {_num(landmarks.get('ipv_z_mm'), '.1f')} mm (LPS). "
        f"Score {block.get('score_total', '-')} of 30 (a second zone set; the severity score uses the thirds)."
    )
    if block.get("fallback"):
        note += f" {block['fallback']}"
    return [
        (
            "Anatomical zones (carina / inferior pulmonary veins)",
            ["Lung", "Zone", "Lung (mL)", "Infection (mL)", "Affected (%)", "Score"],
            rows,
            note,
        )
    ]


def peripheral_table(report: dict[str, Any]) -> list[TableSpec]:
    """Peripheral (outer third) vs central involvement per lung and lobe."""
    block = report.get("peripheral_involvement")
    if not isinstance(block, dict):
        return []
    entries = [("Both lungs", block.get("both")), ("Right lung", block.get("right")), ("Left lung", block.get("left"))]
    entries += [(str(lobe.get("key")), lobe) for lobe in block.get("lobes") or []]
    rows = [
        [
            name,
            _num(e.get("peripheral_infection_ml"), ".1f"),
            _num(e.get("central_infection_ml"), ".1f"),
            _num(e.get("peripheral_percent"), ".1f"),
            _num(e.get("central_percent"), ".1f"),
            _num(100.0 * float(e.get("peripheral_share") or 0.0), ".0f"),
        ]
        for name, e in entries
        if isinstance(e, dict)
    ]
    return [
        (
            "Peripheral vs central involvement",
            [
                "",
                "Peripheral (mL)",
                "Central (mL)",
                "Peripheral affected (%)",
                "Central affected (%)",
                "Peripheral share (%)",
            ],
            rows,
            str(block.get("definition", "")),
        )
    ]


def anatomy_tables(report: dict[str, Any]) -> list[TableSpec]:
    """Both tables (empty when the report has neither block)."""
    return zone_table(report) + peripheral_table(report)


def anatomy_summary(report: dict[str, Any]) -> list[str]:
    """Console lines: the anatomical zones (with their method and landmarks) and the peripheral share."""
    lines = []
    zones = report.get("anatomical_zones")
    if isinstance(zones, dict):
        landmarks = zones.get("landmarks") or {}
        where = [
            f"{name} z = {value:.1f} mm" if value is not None else f"{name} not found"
            for name, value in (("carina", landmarks.get("carina_z_mm")), ("IPV level", landmarks.get("ipv_z_mm")))
        ]
        head = f"Anatomical zones ({zones.get('method')}): score {zones.get('score_total')} / 30; "
        lines.append(head + ", ".join(where))
        if zones.get("fallback"):
            lines.append(f"  {zones['fallback']}")
    peripheral = report.get("peripheral_involvement")
    if isinstance(peripheral, dict) and isinstance(peripheral.get("both"), dict):
        both = peripheral["both"]
        lines.append(
            f"Peripheral (outer third) involvement {_num(both.get('peripheral_percent'), '.1f')} %, central "
            f"{_num(both.get('central_percent'), '.1f')} %; peripheral share of infection "
            f"{_num(100.0 * float(both.get('peripheral_share') or 0.0), '.0f')} %"
        )
    return lines
