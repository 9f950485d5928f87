#!/usr/bin/env python3
"""Attributes CPU samples of one process to the parts of the worker, from `perf script`.

    perf record -e cpu-clock -F 999 --call-graph dwarf -p PID -o perf.data -- sleep 10
    perf script -i perf.data | python3 scripts/perf_components.py

Each sample counts once for every component found anywhere on its stack (inclusive time),
and once under "self" for the component of its innermost frame. Components are matched by
symbol name substrings, first match wins (see COMPONENTS); frames that match nothing are
"other". Samples are user-space only when perf_event_paranoid is 2 (kernel time, i.e.
syscalls, then shows up only in utime/stime totals, not here).
"""

import re
import sys
from collections import Counter

# (component, substrings of demangled symbol names), first match wins for "self".
COMPONENTS = [
    ("kernel (syscalls, scheduler, TCP)", ["[kernel] "]),
    ("event parse (wxpush::event)", ["wxpush::event::"]),
    ("template render (wxpush::template)", ["wxpush::template::"]),
    ("idempotency claim/mark (wxpush::worker::idempotency)", ["wxpush::worker::idempotency"]),
    ("token store (wxpush::token)", ["wxpush::token::"]),
    ("settle / ack (wxpush::worker::settle)", ["wxpush::worker::settle"]),
    ("metrics facade + prometheus recorder", ["metrics::", "metrics_exporter_prometheus", "metrics_util"]),
    ("tracing spans/subscriber", ["tracing_subscriber", "tracing_core::dispatcher", "tracing::span::Span", "sharded_slab"]),
    ("Redis client (redis, deadpool)", ["redis::", "deadpool"]),
    ("HTTP client (reqwest, hyper)", ["reqwest::", "hyper::", "hyper_util::", "http::", "h2::"]),
    ("AMQP (lapin, amq-protocol)", ["lapin::", "amq_protocol"]),
    ("JSON (serde_json)", ["serde_json::"]),
    ("tokio runtime", ["tokio::"]),
    ("allocator (malloc/free)", ["malloc", "free", "realloc", "_int_", "cfree", "tcache"]),
    ("memcpy/memmove", ["memcpy", "memmove", "memset"]),
    ("libc syscalls wrappers", ["__libc_", "epoll_wait", "__send", "__recv", "write", "read", "syscall"]),
]


# Stacks containing any of these, reported separately (inclusive).
DETAILS = [
    ("deadpool-redis recycle (UNWATCH + PING on every pool.get)", ["Manager as deadpool::managed::Manager>::recycle", "deadpool_redis::Manager"]),
    ("pool.get() in total (deadpool::managed::Pool::get)", ["deadpool::managed::Pool", "Pool<M,W>>::get", "Pool<M, W>>::get"]),
    ("redis multiplexed connection driver (socket I/O task)", ["redis::aio::multiplexed_connection", "redis::aio::connection"]),
    ("idempotency::claim (EVALSHA)", ["idempotency::claim"]),
    ("idempotency::mark_sent (HSET+PEXPIRE)", ["idempotency::mark_sent"]),
    ("WechatClient::send (serialize, request, answer)", ["WechatClient>::send", "WechatClient::send"]),
    ("hyper connection tasks (HTTP/1 dispatch)", ["hyper::proto::h1", "hyper_util::client::legacy::pool"]),
    ("lapin io loop (frames in and out)", ["lapin::io_loop"]),
    ("delivery ack (lapin Acker::ack)", ["Acker>::ack", "lapin::acker"]),
    ("tracing: span create/record/enter/exit (subscriber work)", ["tracing_subscriber::", "tracing_core::dispatcher", "sharded_slab"]),
    ("metrics: counter!/histogram!/gauge! (registry lookups, label allocs)", ["metrics_exporter_prometheus", "metrics_util::registry", "metrics::recorder"]),
    ("Event::parse", ["wxpush::event::Event>::parse", "wxpush::event::Event::parse"]),
    ("Template::render", ["wxpush::template::Template>::render", "Template::render"]),
    ("futex / thread park-unpark", ["futex", "park"]),
]


def classify(symbol):
    for name, needles in COMPONENTS:
        if any(n in symbol for n in needles):
            return name
    return None


def samples(lines):
    """Yields each sample's stack (innermost first) of symbol names."""
    stack = []
    header = None
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if header is not None:
                yield header, stack
            stack, header = [], None
            continue
        if header is None and not line.startswith((" ", "\t")):
            header = line
            continue
        m = re.match(r"\s+([0-9a-f]+)\s+(.*?)(\s+\(.*\))?$", line)
        if m:
            kernel = m.group(1).startswith("ffffffff") and len(m.group(1)) == 16
            stack.append("[kernel] " + m.group(2) if kernel else m.group(2))
    if header is not None:
        yield header, stack


def main():
    only_pid = sys.argv[1] if len(sys.argv) > 1 else None
    inclusive, selfc, total = Counter(), Counter(), 0
    top_self = Counter()
    detail = Counter()
    for header, stack in samples(sys.stdin):
        if only_pid and f" {only_pid}/" not in header and f" {only_pid} " not in header:
            continue
        total += 1
        seen = set()
        for sym in stack:
            c = classify(sym)
            if c and c not in seen:
                seen.add(c)
                inclusive[c] += 1
        for label, needles in DETAILS:
            if any(n in sym for sym in stack for n in needles):
                detail[label] += 1
        inner = stack[0] if stack else "?"
        selfc[classify(inner) or "other"] += 1
        top_self[re.sub(r"::h[0-9a-f]{16}$", "", inner)[:110]] += 1
    if not total:
        raise SystemExit("no samples (wrong pid?)")
    print(f"{total} samples\n")
    print(f"{'component':<55} {'inclusive':>9} {'self':>7}")
    for name, _ in COMPONENTS + [("other", [])]:
        if inclusive[name] or selfc[name]:
            print(f"{name:<55} {100 * inclusive[name] / total:8.1f}% {100 * selfc[name] / total:6.1f}%")
    print("\nlooking closer")
    for label, needles in DETAILS:
        print(f"  {label:<70} {100 * detail[label] / total:5.1f}%")
    print("\ntop 25 functions by self time")
    for sym, n in top_self.most_common(25):
        print(f"{100 * n / total:6.2f}%  {sym}")


if __name__ == "__main__":
    main()
