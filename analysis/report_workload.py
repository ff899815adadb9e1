"""The report's "Workload and context" section: the dataset manifest, RAM per request by
context length and the prefix-cache hit rate per group. Pure: Findings in, a Section out."""

from __future__ import annotations

from analysis.document import Paragraph, Section, Table, num, pct
from analysis.records import Findings
from analysis.workloads import NOT_REPORTED, manifest_line

WORKLOAD_TITLE = "Workload and context"
NO_SERVER_LOG = ("RAM per request by context length: not measured (no `server_requests.jsonl`: "
                 "the server's own log holds each request's RSS delta and peak).")


def _ram(f: Findings) -> Section:
    table = f.ram_by_context
    if table is None or table.empty:
        return Section("RAM per request by context length (lower is better)",
                       [Paragraph(NO_SERVER_LOG)], level=3)
    rows = [(r.context, r.requests, r.mean_growth_mb, r.p95_growth_mb, r.mean_delta_mb)
            for r in table.itertuples()]
    headers = ["Context (prompt + output tokens)", "Requests", "Peak growth mean MB",
               "Peak growth p95 MB", "RSS delta mean MB"]
    return Section("RAM per request by context length (lower is better)",
                   [Table(headers, rows)], level=3)


def _prefix(f: Findings) -> Section:
    title = "Prefix-cache hit rate (higher is better)"
    hits = f.prefix_cache
    if hits is None:
        return Section(title, [Paragraph("No successful request with a prompt-token count.")],
                       level=3)
    if not hits.reported:
        return Section(title, [Paragraph(
            f"Prefix-cache hit rate: **{NOT_REPORTED}**. No answer carried "
            "`usage.prompt_tokens_details.cached_tokens` (servers such as llama.cpp, and this "
            "server's task routes, do not report it), so it is not estimated.")], level=3)
    blocks: list[Paragraph | Table] = [Paragraph(
        f"Overall: {num(hits.cached_tokens)} of {num(hits.prompt_tokens)} prompt tokens were "
        f"copied from the prefix cache: **{pct(hits.hit_rate)}** over {num(hits.requests)} "
        "answers that reported it.")]
    if hits.by:
        rows = [(r.key, r.requests, r.prompt_tokens, r.cached_tokens, pct(r.hit_rate))
                for r in hits.table.itertuples()]
        headers = ["Group" if hits.by == "group" else "Chat turn", "Requests",
                   "Prompt tokens", "Cached tokens", "Hit rate"]
        blocks.append(Table(headers, rows))
    return Section(title, blocks, level=3)


def workload_section(f: Findings) -> Section:
    """The manifest (when run.json has one), RAM by context length, prefix-cache hit rate."""
    manifest = f.workload
    intro = Paragraph(manifest_line(manifest) if manifest else
                      "No `--workload` manifest in run.json: the run sent the `--mix` users' "
                      "texts.")
    return Section(WORKLOAD_TITLE, [intro, _ram(f), _prefix(f)])
