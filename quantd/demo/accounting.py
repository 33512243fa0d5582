"""The demo's final check: every hypothesis in exactly one terminal place.

A hypothesis is identified by its root id, the id of the item the
researcher pushed; every successor carries it as ``root_id``. A terminal
place is an output (``good``, ``prop_firm_ready``, ``rejected``), the
``failed`` archive (failed or dead-lettered) or quarantine. A root with no
terminal place is lost; a root with two or more is duplicated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantd.demo.observe import TerminalItem, TreeObserver

OUTPUT_PLACES = ("good", "prop_firm_ready", "rejected")


def headline(payload: Mapping[str, Any]) -> str:
    """Summarise an optimisation result in one line: the best market's
    out-of-sample metrics."""
    market = payload.get("best_market")
    markets = payload.get("markets")
    if not isinstance(markets, dict) or market not in markets:
        return ""
    metrics = markets[market].get("out_of_sample") or {}
    try:
        line = (
            f"{market} out of sample: Sharpe {metrics['sharpe_ratio']:.2f}, "
            f"return {metrics['total_return']:+.1%}, "
            f"max drawdown {metrics['max_drawdown']:.1%}, "
            f"{metrics['trades']} trades"
        )
    except (KeyError, TypeError, ValueError):
        return f"{market}: metrics missing"
    prop_firm = markets[market].get("prop_firm") or {}
    fraction = prop_firm.get("position_fraction")
    if prop_firm.get("passed") and isinstance(fraction, int | float):
        line += f"; passes prop-firm rules at {fraction:.0%} position size"
        sized = prop_firm.get("metrics") or {}
        drawdown = sized.get("max_drawdown")
        if isinstance(drawdown, int | float):
            line += f" (max drawdown {drawdown:.1%})"
    return line


def count_recoveries(doc: Mapping[str, Any]) -> int:
    """Count the ``recovered`` hops in an item's history, which a
    successor inherits from its whole lineage."""
    history = doc.get("history")
    if not isinstance(history, list):
        return 0
    return sum(1 for hop in history if isinstance(hop, dict) and _is_recovery(hop))


def _is_recovery(hop: Mapping[str, Any]) -> bool:
    return hop.get("event") == "recovered"


def lineage_workers(doc: Mapping[str, Any]) -> list[str]:
    """Return the workers that routed or failed the lineage, in order."""
    history = doc.get("history")
    if not isinstance(history, list):
        return []
    return [
        str(hop.get("worker"))
        for hop in history
        if isinstance(hop, dict) and hop.get("event") in ("routed", "failed")
    ]


def describe_root(
    root_id: str, hypothesis: Mapping[str, Any], terminals: list[TerminalItem]
) -> dict[str, Any]:
    """Build the summary record of one hypothesis."""
    record: dict[str, Any] = {
        "root_id": root_id,
        "hypothesis_id": hypothesis.get("id"),
        "title": hypothesis.get("title"),
        "priority": hypothesis.get("priority"),
        "direct": bool(hypothesis.get("direct")),
        "places": [t.place for t in terminals],
        "place": terminals[0].place if len(terminals) == 1 else None,
    }
    if not terminals:
        return record
    final = terminals[0]
    payload = final.doc.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    record.update(
        item_id=final.item_id,
        path=str(final.path),
        status=final.doc.get("status"),
        verdict=payload.get("verdict"),
        headline=headline(payload),
        reason=final.doc.get("last_error"),
        recoveries=count_recoveries(final.doc),
        workers=lineage_workers(final.doc),
    )
    return record


def account(
    observer: TreeObserver,
    hypotheses: Mapping[str, Mapping[str, Any]],
    *,
    kills: list[dict[str, Any]],
    daemon_counters: Mapping[str, Any] | None,
    elapsed_s: float,
    interrupted: bool,
    timed_out: bool,
) -> dict[str, Any]:
    """Check where every hypothesis ended and build the summary document.

    ``hypotheses`` maps each root id to the payload the researcher pushed.
    Reads every terminal item again, so call it after the workers stopped.
    """
    by_root: dict[str, list[TerminalItem]] = {root: [] for root in hypotheses}
    unexpected = []
    for item in observer.terminal_items(fresh=True):
        if item.root_id in by_root:
            by_root[item.root_id].append(item)
        else:
            unexpected.append({"place": item.place, "path": str(item.path)})
    roots = [describe_root(r, hypotheses[r], by_root[r]) for r in hypotheses]
    lost = [r["root_id"] for r in roots if not r["places"]]
    duplicated = [r["root_id"] for r in roots if len(r["places"]) > 1]
    places = {place: 0 for place in (*OUTPUT_PLACES, "failed", "quarantine")}
    for record in roots:
        for place in record["places"]:
            places[place] = places.get(place, 0) + 1
    accounted = len(roots) - len(lost)
    return {
        "ok": not lost and not duplicated and not interrupted,
        "root": str(observer.tree.root),
        "hypotheses": len(roots),
        "accounted": accounted,
        "elapsed_s": round(elapsed_s, 2),
        "throughput_per_min": round(accounted / elapsed_s * 60, 1) if elapsed_s else 0,
        "places": places,
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "leftovers": observer.leftovers(),
        "recoveries": sum(r.get("recoveries", 0) for r in roots),
        "daemon_counters": dict(daemon_counters) if daemon_counters else None,
        "dead_lettered": sum(1 for r in roots if r.get("status") == "dead_letter"),
        "quarantined": observer.quarantined(),
        "kills": kills,
        "interrupted": interrupted,
        "timed_out": timed_out,
        "roots": roots,
    }
