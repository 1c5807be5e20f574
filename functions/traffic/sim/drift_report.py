"""The Traffic section's count error over time: per site, with the cameras that drifted marked.

:func:`error_over_time_parts` adds to the section a chart of each site's count
error (vehicles per approach, in the relay's buckets of simulated time; the
drifted sites' lines solid, the others dashed) with a mark where each camera
changed, and to the summary ``count_error_over_time`` (site -> ``[[t, mae],
...]``, ``t`` the middle of a ``count_error_bucket_s`` bucket) and
``count_error_drift``: the drifted sites' error before their
camera changed and after, beside the other sites' after (what a lifecycle
bench compares). With the relay's undrifted reference
(:meth:`~functions.traffic.sim.camera.CameraRelay.set_reference`), the summary
also has ``count_error_undrifted_over_time``: the drifted sites' error had their
cameras not changed, over the same seconds, and ``count_error_drift`` its mean
since the change (``undrifted``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from functions.traffic.sim.count_error import ErrorSeries
from mesh.scenario import ReportSection, ScenarioReport

__all__ = ["drift_summary", "error_over_time_parts"]


def drift_summary(
    series: ErrorSeries,
    marks: Sequence[tuple[float, str, float]],
    undrifted: ErrorSeries | None = None,
) -> dict[str, Any] | None:
    """The drifted sites' error before and after their change, and the others' after.

    ``marks`` are ``(simulated second, site, severity)`` of each change (severity 0:
    restored); ``undrifted``: the drifted sites' error without the change (its
    mean since the change is ``undrifted``). None when no camera drifted.

    Example:
        >>> s = ErrorSeries(bucket_s=10)
        >>> for t, site, e in [(5, "A0", 1.0), (25, "A0", 5.0), (25, "B0", 1.0)]:
        ...     s.add(site, t, e)
        >>> drift_summary(s, [(20.0, "A0", 1.0)])["after"]
        5.0
    """
    changed = [(t, site) for t, site, severity in marks if severity > 0]
    if not changed:
        return None
    at_s = min(t for t, _ in changed)
    sites = sorted({site for _, site in changed})
    others = sorted(set(series.series()) - set(sites))
    figures: dict[str, Any] = {
        "sites": sites,
        "at_s": round(at_s, 1),
        "before": series.mean(sites=sites, until_s=at_s),
        "after": series.mean(sites=sites, since_s=at_s),
        "others_after": series.mean(sites=others, since_s=at_s) if others else None,
    }
    if undrifted is not None:
        figures["undrifted"] = undrifted.mean(sites=sites, since_s=at_s)
    return figures


def error_over_time_parts(
    series: ErrorSeries,
    marks: Sequence[tuple[float, str, float]],
    report: ScenarioReport,
    section: ReportSection,
    truth: Any = None,
    undrifted: ErrorSeries | None = None,
) -> dict[str, Any]:
    """The section's fields with the error chart and figures added (for ``dataclasses.replace``).

    ``truth`` is the run's :class:`~functions.traffic.sim.truth.TruthFeed`, if any
    (its count of labels published goes into the summary); ``undrifted`` the
    relay's :attr:`~functions.traffic.sim.camera.CameraRelay.undrifted_series`.
    """
    from mesh.scenario._report_html import fault_bands, html_chart

    by_site = series.series()
    summary: dict[str, Any] = {
        **section.summary,
        "count_error_over_time": {s: [[t, e] for t, e in pts] for s, pts in by_site.items()},
        "count_error_bucket_s": series.bucket_s,
    }
    if truth is not None:
        summary["truth_labels"] = truth.published
    reference = undrifted.series() if undrifted is not None else {}
    if reference:
        summary["count_error_undrifted_over_time"] = {
            s: [[t, e] for t, e in pts] for s, pts in reference.items()
        }
    drifted = {site for _, site, severity in marks if severity > 0}
    headline = section.headline
    figures = drift_summary(series, marks, undrifted if reference else None)
    if figures is not None:
        summary["count_error_drift"] = figures
        before, after = figures["before"], figures["after"]
        headline = (
            *headline,
            f"camera drift at {', '.join(figures['sites'])} from sim {figures['at_s']:g} s: "
            f"count error {_num(before)} -> {_num(after)} vehicles per approach "
            f"(other sites {_num(figures['others_after'])}"
            + (
                f"; without the change {_num(figures['undrifted'])})"
                if figures.get("undrifted") is not None
                else ")"
            ),
        )
    if not by_site:
        return {"summary": summary, "headline": headline}
    sites = sorted(by_site)
    chart = html_chart(
        [
            {"points": [[t, e] for t, e in by_site[site]], "dash": site not in drifted}
            for site in sites
        ],
        title="Count error over time per site (drifted cameras solid)",
        legend=sites,
        unit="veh",
        marks=[
            {"at": t, "label": f"drift {site}" if severity > 0 else f"restored {site}"}
            for t, site, severity in marks
        ],
        bands=fault_bands(report),
    )
    return {"summary": summary, "headline": headline, "html": section.html + chart}


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
