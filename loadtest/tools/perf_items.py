#!/usr/bin/env python3
"""Where a forwarded packet's server time goes, by code area, in µs per forwarded packet.

Reads the output folder of loadtest/profile.sh (`perf.txt` and `results.json`) and counts, for
each area below, the samples with a frame of that area on their stack (inclusive: a sample in
SRTP inside a timer pass counts for SRTP, so the rows overlap and do not add up to the whole).
Complements perf_stages.py, which gives each sample one stage; this one finds the largest
items across stages (docs/PERFORMANCE.md, "Eighth pass").

usage: perf_items.py PROFILE_OUT_DIR
"""

import json
import os
import sys

import perf_stages


def has(stack, *keys):
    return any(k in frame for frame in stack for k in keys)


ITEMS = [
    ("kernel: UDP send, loopback delivery, receive",
     lambda s: has(s, "__sys_sendmmsg", "__sys_sendmsg", "recvmmsg", "recvmsg") and not has(s, "schedule")),
    ("wait and wake-up",
     lambda s: has(s, "epoll_wait", "finish_task_switch") or (has(s, "recvmmsg") and has(s, "schedule"))),
    ("SRTP and SRTCP (AES-GCM)", lambda s: has(s, "aead_aes_gcm", "EVP_AEAD", "aes_hw", "gcm_", "AeadAes")),
    ("str0m: ICE, DTLS, SCTP and channels",
     lambda s: has(s, "IceAgent", "dtls::Dtls", "RtcSctp", "ChannelHandler", "sctp_proto")),
    ("str0m: RTCP in (feedback into the estimator)", lambda s: has(s, "handle_rtcp")),
    ("memcpy and memset", lambda s: has(s, "memcpy", "memset", "memmove")),
    ("allocator", lambda s: has(s, "malloc", "cfree", "_int_free")),
    ("Moien's forwarding loop (lookups, layer choice, rewriting)",
     lambda s: has(s, "WorkerCore>::forward") and not has(s, "str0m::")),
    ("str0m: pacer", lambda s: has(s, "pacer::") and not has(s, "aead_aes_gcm", "EVP_AEAD", "aes_hw")),
    ("str0m: next timeout", lambda s: has(s, "Rtc::poll_timeout")),
    ("str0m: receive registers (NACK, TWCC, stream)",
     lambda s: has(s, "update_register", "TwccRecvRegister", "NackRegister")),
    ("str0m: retransmission history", lambda s: has(s, "RtxCache")),
    ("str0m: RTP header writing", lambda s: has(s, "RtpHeader::write_to")),
    ("str0m: RTP header parsing", lambda s: has(s, "RtpHeader::parse")),
    ("Moien's housekeeping (speakers, allocation, keyframe requests)",
     lambda s: has(s, "WorkerCore::housekeeping")),
    ("signalling (WebSocket)",
     lambda s: has(s, "moien_signaling", "hyper", "tungstenite", "tcp_v4") and not has(s, "handle_rtcp")),
]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    stacks = perf_stages.samples(os.path.join(folder, "perf.txt"))
    if not stacks:
        sys.exit(f"no samples in {folder}/perf.txt")
    with open(os.path.join(folder, "results.json")) as f:
        records = json.load(f)
    if not isinstance(records, list) or not records or not records[-1].get("packets_per_cpu_second"):
        sys.exit(f"{folder}/results.json: no packets per CPU-second figure")
    r = records[-1]
    us = 1e6 / r["packets_per_cpu_second"]
    n = len(stacks)
    print(f"{r['scenario']} on {r['target']}: {r['participants']} participants, "
          f"{us:.2f} µs per packet, {n} samples (inclusive, rows overlap)")
    for name, match in ITEMS:
        c = sum(1 for s in stacks if match(s))
        print(f"  {name:<66} {c * us / n:5.2f} µs  {c * 100 / n:5.1f} %")


if __name__ == "__main__":
    main()
