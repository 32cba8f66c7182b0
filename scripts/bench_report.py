#!/usr/bin/env python3
"""`make bench`'s report: merges the three benchmarks' JSON files into var/bench/result.json,
draws var/bench/chart.svg (SendMessage accepted/s and p99 per second over the run) and prints a
one-screen summary with each figure's ratio to the raw broker rate measured in the same run.
Standard library only."""

import json
import os
import platform
import sys
import time

VAR = "var"
OUT = os.path.join(VAR, "bench")


def load(name):
    path = os.path.join(VAR, f"bench-{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def polyline(points, x_of, y_of, colour, dash=""):
    if not points:
        return ""
    coords = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2"{extra} points="{coords}"/>'


def chart(per_second, settled, path):
    """Two stacked panels sharing the time axis: throughput (accepted/s, and messages settled
    per second) above, SendMessage p99 below. Phases are shaded and labelled."""
    width, height = 900, 560
    left, right = 70, 20
    panels = [(40, 270), (310, 500)]  # (top, bottom) of each panel
    t_max = max([p["t"] for p in per_second] + [s[0] for s in settled] + [1])
    x_of = lambda t: left + (width - left - right) * t / t_max
    accepted = [(p["t"] + 0.5, p["accepted"]) for p in per_second]
    settled_rate = []
    for (t0, n0), (t1, n1) in zip(settled, settled[1:]):
        if t1 > t0:
            settled_rate.append(((t0 + t1) / 2, (n1 - n0) / (t1 - t0)))
    p99 = [(p["t"] + 0.5, p["p99_ms"]) for p in per_second if p["accepted"] > 0]
    y1_max = max([v for _, v in accepted + settled_rate] + [1]) * 1.1
    y2_max = max([v for _, v in p99] + [1]) * 1.1

    def y_in(panel, v_max):
        top, bottom = panels[panel]
        return lambda v: bottom - (bottom - top) * v / v_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">Finestra bench-send: '
        f"SendMessage throughput and p99 per second</text>",
    ]
    # Phase bands.
    phases = []
    for p in per_second:
        if not phases or phases[-1][0] != p["phase"]:
            phases.append([p["phase"], p["t"], p["t"] + 1])
        else:
            phases[-1][2] = p["t"] + 1
    shades = ["#f3f6fb", "#fbf6ef"]
    for i, (name, t0, t1) in enumerate(phases):
        out.append(
            f'<rect x="{x_of(t0):.1f}" y="{panels[0][0]}" width="{x_of(t1) - x_of(t0):.1f}" '
            f'height="{panels[1][1] - panels[0][0]}" fill="{shades[i % 2]}"/>'
        )
        out.append(
            f'<text x="{x_of(t0) + 3:.1f}" y="{panels[0][0] + 12}" fill="#555">{name}</text>'
        )
    for panel, (v_max, unit) in enumerate([(y1_max, "messages/s"), (y2_max, "p99 ms")]):
        top, bottom = panels[panel]
        y_of = y_in(panel, v_max)
        out.append(
            f'<line x1="{left}" y1="{bottom}" x2="{width - right}" y2="{bottom}" stroke="#333"/>'
        )
        out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>')
        for k in range(5):
            v = v_max * k / 4
            out.append(
                f'<text x="{left - 6}" y="{y_of(v) + 4:.1f}" text-anchor="end">{v:,.0f}</text>'
            )
            out.append(
                f'<line x1="{left}" y1="{y_of(v):.1f}" x2="{width - right}" y2="{y_of(v):.1f}" '
                f'stroke="#ddd"/>'
            )
        out.append(
            f'<text x="14" y="{(top + bottom) / 2:.0f}" transform="rotate(-90 14 '
            f'{(top + bottom) / 2:.0f})" text-anchor="middle">{unit}</text>'
        )
    y1 = y_in(0, y1_max)
    y2 = y_in(1, y2_max)
    out.append(polyline(accepted, x_of, y1, "#1f77b4"))
    out.append(polyline(settled_rate, x_of, y1, "#2ca02c", "5,3"))
    out.append(polyline(p99, x_of, y2, "#d62728"))
    for k in range(6):
        t = t_max * k / 5
        out.append(
            f'<text x="{x_of(t):.1f}" y="{panels[1][1] + 16}" text-anchor="middle">{t:.0f} s</text>'
        )
    legend_y = height - 14
    out.append(f'<text x="{left}" y="{legend_y}" fill="#1f77b4">— SendMessage accepted/s</text>')
    out.append(
        f'<text x="{left + 220}" y="{legend_y}" fill="#2ca02c">- - delivered or failed/s</text>'
    )
    out.append(f'<text x="{left + 420}" y="{legend_y}" fill="#d62728">— SendMessage p99 (ms)</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def ratio(v, raw):
    return f"{100.0 * v / raw:5.1f}% of raw" if raw else "n/a"


def main():
    os.makedirs(OUT, exist_ok=True)
    send, ingest, billing, fair = load("send"), load("ingest"), load("billing"), load("fair")
    cpu = load("cpu")
    missing = [
        n
        for n, v in [
            ("send", send), ("ingest", ingest), ("billing", billing), ("fair", fair), ("cpu", cpu)
        ]
        if v is None
    ]
    if missing:
        print(f"[bench] missing results: {', '.join(missing)}", file=sys.stderr)
        return 1
    result = {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "send": send,
        "ingest": ingest,
        "billing": billing,
        "fair": fair,
        "cpu": cpu,
    }
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    chart(send.get("per_second", []), send.get("settled_timeline", []), os.path.join(OUT, "chart.svg"))

    raw = send["raw_produce_per_s"]
    lines = [
        "",
        f"Finestra benchmarks ({os.cpu_count()} cores, services in-process unless said, "
        "Postgres 15, Redis 7, tansu 0.6 SQLite)",
        f"  raw broker produce (same run, bench-send):       {raw:>9,.0f} records/s",
        "  SendMessage → delivered and charged (bench-send)",
        f"    open loop {send['sustained_rate']}/s:  {send['sustained_accepted_per_s']:>9,.0f} accepted/s  "
        f"p50 {send['sustained_p50_ms']:.1f} ms  p99 {send['sustained_p99_ms']:.1f} ms  "
        f"errors {send['sustained_errors']}",
        f"    open loop {send['open_loop_rate']}/s: {send['open_loop_accepted_per_s']:>9,.0f} accepted/s  "
        f"p50 {send['open_loop_p50_ms']:.1f} ms  p99 {send['open_loop_p99_ms']:.1f} ms  "
        f"shed {send['open_loop_errors']}",
        f"    closed loop ({send['closed_loop_in_flight']} in flight): "
        f"{send['closed_loop_accepted_per_s']:>9,.0f} accepted/s  ({ratio(send['closed_loop_accepted_per_s'], raw)})",
        f"    end to end, steady closed loop: {send['steady_end_to_end_per_s']:>9,.0f} delivered and charged/s  "
        f"(x {send['records_produced_per_message']:.2f} records = "
        f"{ratio(send['steady_end_to_end_per_s'] * send['records_produced_per_message'], raw)})",
        f"    end to end, whole run with pauses: {send['end_to_end_per_s']:>9,.0f} messages/s, "
        f"{send['failed']} failed",
        "    latency sweep: "
        + ", ".join(
            f"{s['rate']}/s p50 {s['p50_ms']:.1f} p99 {s['p99_ms']:.1f} ms" for s in send["sweep"]
        ),
        f"    SendMessage p99 first over 25 ms at: {send['p99_first_over_25ms_at'] or 'never (within the sweep)'}/s",
        f"    SendMessages ({send['batch_callers']} callers x {send['batch_size']}): "
        f"{send['batch_accepted_per_s']:>9,.0f} messages/s  call p99 {send['batch_call_p99_ms']:.1f} ms",
        f"    broker records per message: {send['records_produced_per_message']:.2f} produced, "
        f"{send['records_consumed_per_message']:.2f} consumed",
        f"  webhooks → inbound events (bench-ingest): {ingest['webhooks']['per_s']:>9,.0f} /s  "
        f"p99 {ingest['webhooks']['p99_ms']:.1f} ms  ({ratio(ingest['webhooks']['per_s'], ingest['raw_produce_per_s'])})",
        f"  window updates (bench-ingest):            {ingest['window_updates']['steady_per_s']:>9,.0f} /s  "
        f"({ratio(ingest['window_updates']['steady_per_s'], ingest['raw_produce_per_s'])}), "
        f"Redis {ingest['window_updates'].get('redis_bytes_per_window', 0):.0f} bytes per open window",
        f"  reservations (bench-billing):             {billing['reservations_per_s']:>9,.0f} /s  "
        f"p99 {billing['reserve_p99_ms']:.1f} ms; batched {billing['batched_reservations_per_s']:,.0f} /s",
        f"  captures (bench-billing):                 {billing['captures_per_s']:>9,.0f} /s  "
        f"({ratio(billing['captures_per_s'], billing['raw_produce_per_s'])})",
        "  fairness between tenants (bench-fair)",
        f"    clinic at {fair['clinic_rate']}/s alone: p99 {fair['alone']['p99_ms']:.1f} ms; beside a retailer "
        f"offering {fair['flood_rate']:,}/s: p99 {fair['beside']['p99_ms']:.1f} ms "
        f"({fair['clinic_p99_ratio']:.2f}×), {sum(fair['beside']['refused'].values())} refused",
        f"    retailer: {fair['flood']['accepted']:,} accepted, "
        f"{sum(fair['flood']['refused'].values()):,} refused {fair['flood']['refused']}, "
        f"{fair['flood']['refused_with_retry_info']:,} with retry info",
        f"    weights 1..10 at saturation: delivered shares within "
        f"{100.0 * fair['weights_worst_relative_error']:.1f}% of weight/55",
        "  CPU µs per delivered-and-charged message, services as processes (bench-cpu)",
        *[
            f"    {p['label']}: Finestra's five services {p['finestra_micros']:,.0f}, "
            f"everything {p['everything_micros']:,.0f} (broker "
            f"{p['per_message_micros'].get('broker (tansu)', 0):,.0f}, Postgres "
            f"{p['per_message_micros'].get('postgres', 0):,.0f})"
            for p in cpu["points"]
        ],
        f"  reconcile differences: send {send['reconcile_differences']}, "
        f"billing {billing['reconcile_differences']}, fair {fair['reconcile_differences']}, "
        f"cpu {cpu['reconcile_differences']}",
        f"  results: {OUT}/result.json   chart: {OUT}/chart.svg",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
