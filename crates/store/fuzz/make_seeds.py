#!/usr/bin/env python3
"""Writes seed inputs for the `recovery` fuzz target into seeds/recovery/.

It encodes records from docs/storage-format.md independently of the Rust code, so a seed that
the store reads back correctly also cross-checks the format document.
Input layout of the target: flags u8, checkpoint length u16 LE, checkpoint bytes, segment bytes.
"""
import os
import struct

POLY = 0x82F63B78
TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ POLY if c & 1 else c >> 1
    TABLE.append(c)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def record(pos, device_id, ts, cmd, flag, body, entries):
    """entries: list of (kind, appid, id, seq, prev, jump, prev_peer, group_content)."""
    meta = struct.pack("<qqBBHII", device_id, ts, cmd, flag, 0, len(body), len(entries))
    content_crc = crc32c(body, crc32c(meta))
    payload = meta + struct.pack("<I", content_crc) + body
    keys = []
    for i, (kind, appid, qid, seq, prev, jump, peer, group) in enumerate(entries):
        back = 12 + 32 + len(body) + 56 * i
        keys.append(pos + back)
        payload += struct.pack("<BBHIqqQqqq", kind, 1 if group else 0, 0, back, appid, qid, seq, prev, jump, peer)
    head = struct.pack("<I", len(payload)) + bytes([1, 0, 0, 0])
    rec = struct.pack("<I", crc32c(head + payload)) + head + payload
    return rec, keys


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "recovery")
    os.makedirs(out, exist_ok=True)
    log = b""
    # message 1: peer message to user 2 and user 1 (appid 1)
    r1, k1 = record(0, 7, 1700000000, 4, 0, b'{"text":"hi"}',
                    [(1, 1, 2, 1, 0, 0, 0, False), (1, 1, 1, 1, 0, 0, 0, False)])
    log += r1
    # message 2: user 2 again (seq 2: jump_seq(2) = 1 -> key of seq 1)
    r2, k2 = record(len(log), 8, 1700000001, 4, 0, b'{"text":"again"}',
                    [(1, 1, 2, 2, k1[0], k1[0], k1[0], False)])
    log += r2
    # message 3: super group 1 (cmd 8 = group content)
    r3, k3 = record(len(log), 9, 1700000002, 8, 0, b'{"text":"group"}',
                    [(2, 1, 1, 1, 0, 0, 0, True)])
    log += r3
    seeds = {"three_records": bytes([1]) + struct.pack("<H", 0) + log,
             "two_segments": bytes([3]) + struct.pack("<H", 0) + log,
             "torn": bytes([1]) + struct.pack("<H", 0) + log[:-7]}
    # a checkpoint covering message 1: queues (1,1,2) and (1,1,1), last_seq 1, chain [key]
    ck = b"BNTRCKP\x01" + struct.pack("<IIQQQ", 1, 0, 1, len(r1), 2)
    for qid, key in ((2, k1[0]), (1, k1[1])):
        ck += struct.pack("<BB6sqqQq", 1, 1, b"\0" * 6, 1, qid, 1, key) + struct.pack("<q", key)
    ck += struct.pack("<I", crc32c(ck))
    seeds["with_checkpoint"] = bytes([1]) + struct.pack("<H", len(ck)) + ck + log
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("wrote", len(seeds), "seeds to", out)


if __name__ == "__main__":
    main()
