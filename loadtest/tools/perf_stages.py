#!/usr/bin/env python3
"""Where a forwarded packet's server time goes, by stage, in µs per forwarded packet.

Reads `perf script -F ip,sym` output of the server process (sampled with call graphs) and the
load tester's results file of the same run (`--results`), sorts every sample into one stage by
the frames on its stack (first match wins, in the order below), and scales the shares by the
run's server CPU per forwarded packet. Used by loadtest/profile.sh; the stages are those of
docs/PERFORMANCE.md, "Sixth pass".

usage: perf_stages.py PERF_SCRIPT_TXT RESULTS_JSON
"""

import collections
import json
import sys

# (stage, any of these substrings in any frame). Order matters: a sample belongs to the
# first stage that matches, so the kernel's send path is claimed before the user code that
# called it, and RTCP before the signalling's TCP (`handle_rtcp_receive` contains "tcp_").
STAGES = [
    ("kernel: loopback delivery into the receiver, inside the send",
     lambda s: any_in(s, "__sys_sendmmsg", "__sys_sendmsg") and any_in(s, "net_rx_action", "__netif_receive")),
    ("kernel: UDP/IP send", lambda s: any_in(s, "__sys_sendmmsg", "__sys_sendmsg")),
    ("wait and wake-up", lambda s: any_in(s, "epoll_wait", "finish_task_switch")
     or (any_in(s, "recvmmsg") and any_in(s, "schedule"))),
    ("kernel: receive", lambda s: any_in(s, "recvmmsg", "recvmsg")),
    ("SRTP / AEAD", lambda s: any_in(s, "aead_aes_gcm", "EVP_AEAD", "aes_hw", "gcm_")),
    ("RTCP in (TWCC feedback, estimator)", lambda s: any_in(s, "handle_rtcp")),
    ("signalling (WebSocket)", lambda s: any_in(s, "moien_signaling", "hyper", "tungstenite", "tcp_v4")),
    ("timer passes (RTCP out, estimator, NACK, speakers)",
     lambda s: any_in(s, "WorkerCore::handle_timeout", "do_handle_timeout")),
    ("str0m: queueing forwarded RTP (write_rtp, pacer view)", lambda s: any_in(s, "write_rtp", "handle_send")),
    ("str0m: building each packet (pacer, header, RTX history)",
     lambda s: any_in(s, "poll_output", "poll_packet", "poll_datagram")),
    ("receive: demux, str0m input, forwarding decisions", lambda s: any_in(s, "handle_input", "handle_datagram")),
    ("allocator, elsewhere", lambda s: any_in(s, "malloc", "free")),
]


def any_in(stack, *keys):
    return any(k in frame for frame in stack for k in keys)


def samples(path):
    out, cur = [], []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                if cur:
                    out.append(cur)
                    cur = []
                continue
            parts = line.split(None, 1)
            cur.append(parts[1] if len(parts) > 1 else "?")
    if cur:
        out.append(cur)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    stacks = samples(sys.argv[1])
    if not stacks:
        sys.exit(f"no samples in {sys.argv[1]}")
    with open(sys.argv[2]) as f:
        records = json.load(f)
    if not isinstance(records, list) or not records:
        sys.exit(f"{sys.argv[2]}: not a results array")
    r = records[-1]
    per_cpu_s = r.get("packets_per_cpu_second")
    if not per_cpu_s:
        sys.exit(f"{sys.argv[2]}: the run has no packets per CPU-second figure")
    us = 1e6 / per_cpu_s
    counts = collections.Counter()
    for s in stacks:
        stage = next((name for name, match in STAGES if match(s)), "other")
        counts[stage] += 1
    print(f"{r['scenario']} on {r['target']}: {r['participants']} participants, "
          f"{r['forwarded_packets_per_s']:.0f} forwarded packets/s, {per_cpu_s:.0f} per CPU-second, "
          f"{us:.2f} µs per packet, {len(stacks)} samples")
    for name, n in counts.most_common():
        share = n / len(stacks)
        print(f"  {name:<62} {100 * share:5.1f} % {us * share:6.2f} µs")


if __name__ == "__main__":
    main()
