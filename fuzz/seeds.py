#!/usr/bin/env python3
"""Writes the starting inputs of each fuzz target into fuzz/seeds/<target>/.

The committed corpora (fuzz/corpus/) were grown from these by the
campaigns and minimized with `cargo fuzz cmin`; run this again only to
start over. The scripts follow the input formats documented in
src/fuzzing/ (one byte per decision, lengths before bytes).
"""
import os
import struct
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def short(b):
    return bytes([len(b)]) + b


def long(b):
    return struct.pack(">H", len(b)) + b


AVC_CFG = bytes([0x17, 0, 0, 0, 0, 0x01, 0x64, 0x00, 0x1F, 0xFF, 0xE1, 0x00, 0x04,
                 0x67, 0x64, 0x00, 0x1F, 0x01, 0x00, 0x04, 0x68, 0xEE, 0x3C, 0x80])
AVC_KEY = bytes([0x17, 1, 0, 0, 0x21, 0, 0, 0, 5, 0x65, 0x88, 0x84, 0x00, 0x10])
AVC_INTER = bytes([0x27, 1, 0, 0, 0x42, 0, 0, 0, 4, 0x41, 0x9A, 0x02, 0x04])
AAC_CFG = bytes([0xAF, 0x00, 0x11, 0x90])
AAC_FRAME = bytes([0xAF, 0x01, 0x21, 0x00, 0x49, 0x90])
# Enhanced RTMP: HEVC sequence start, coded frames.
HEVC_CFG = bytes([0x90]) + b"hvc1" + bytes([0x01] + [0] * 21 + [0])
HEVC_FRAME = bytes([0x91]) + b"hvc1" + bytes([0, 0, 0, 0, 0, 0, 3, 0x26, 0x01, 0xAF])

# flv_tags: track byte (0 video, 1 audio), 4-byte DTS, the body.
for name, track, body in [("avc_cfg", 0, AVC_CFG), ("avc_key", 0, AVC_KEY),
                          ("avc_inter", 0, AVC_INTER), ("aac_cfg", 1, AAC_CFG),
                          ("aac_frame", 1, AAC_FRAME), ("hevc_cfg", 0, HEVC_CFG),
                          ("hevc_frame", 0, HEVC_FRAME)]:
    put("flv_tags", name, bytes([track]) + struct.pack(">I", 1000) + body)

# rtmp_session: flags, then steps (step, chunking seed, arguments).
def publish_script(key, media):
    s = bytes([0])
    s += bytes([3, 0]) + short(b"live")
    s += bytes([4, 1]) + short(key)
    s += bytes([6, 2]) + struct.pack(">I", 1280) + short(b"seed")
    for ts, track, body in media:
        s += bytes([7 if track == 0 else 8, 3]) + struct.pack(">I", ts) + long(body)
    s += bytes([9, 0])
    return s

MEDIA = [(0, 0, AVC_CFG), (0, 1, AAC_CFG), (0, 0, AVC_KEY), (21, 1, AAC_FRAME),
         (33, 0, AVC_INTER), (0xFFFFFF00, 0, AVC_INTER), (5, 0, AVC_KEY)]
put("rtmp_session", "publish", publish_script(b"stream?token=abc&priority=5", MEDIA))
put("rtmp_session", "publish_hevc", publish_script(b"s2", [(0, 0, HEVC_CFG), (1, 0, HEVC_FRAME)]))
put("rtmp_session", "play", bytes([0]) + bytes([3, 0]) + short(b"live") + bytes([5, 1]) + short(b"stream"))
put("rtmp_session", "raw_handshake", bytes([1]) + long(bytes([3]) + bytes(1536) + bytes(1536)) + bytes([0, 0]) + long(b"\x02" * 32))
put("rtmp_session", "small_limits", bytes([2]) + bytes([3, 0]) + short(b"live") + bytes([0, 1]) + long(bytes(5000)))

put("srt_stream_id", "keyed", b"#!::r=live/stream,m=publish,t=secret,sourceId=b,priority=3")
put("srt_stream_id", "request", b"#!::r=live/stream,m=request")
put("srt_stream_id", "plain", b"live/stream?token=abc&priority=7")
put("srt_stream_id", "bare", b"live/stream")

put("urls", "key", b"stream?token=abc%20d&priority=5&sourceId=b")
put("urls", "rtmp", b"rtmp://127.0.0.1:1935/live/stream?token=abc&priority=5")
put("urls", "srt", b"srt://127.0.0.1:9000?streamid=#!::r=live/s,m=request,t=x&passphrase=0123456789abc&latency=200")
put("urls", "db", b"postgres://user:pw@localhost/db?password=x")
put("urls", "v6", b"rtmp://[::1]:1935/app/key")

put("publish_token", "jwt_shape", b"eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJzdWIiOiIwIn0.c2ln")
put("publish_token", "none_alg", b"eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.eyJzdWIiOiIwIn0.")
put("publish_token", "credential", b"node-a.1700000000000.00112233445566778899aabbccddeeff")
put("publish_token", "empty_parts", b"..")

U = "00000000-0000-0000-0000-000000000001"
LEASE = ('{"node":"n1","region":"r","http":"127.0.0.1:1","rtmp":"127.0.0.1:2","srt":"127.0.0.1:3",'
         '"draining":false,"started_at":"2026-01-01T00:00:00Z","renewed_ms":1,"records_ms":1,"feeds":0,"players":0}')
RECORD = ('{"feed_id":"%s","token_id":"%s","label":"l","stream":"live/s","source_id":"","priority":5,'
          '"pinned":false,"protocol":"rtmp","peer":"127.0.0.1:5","node":"n1","region":"r",'
          '"connected_at":"2026-01-01T00:00:00Z","eligible_since_ms":null,"healthy":true,"draining":false,"on_air":true}') % (U, U)
for name, kind, body in [("lease", 0, LEASE), ("feed", 1, RECORD),
                         ("event_upsert", 2, '{"kind":"upsert","record":%s}' % RECORD),
                         ("event_leave", 2, '{"kind":"leave","node":"n1"}'),
                         ("event_heartbeat", 2, '{"kind":"heartbeat","lease":%s}' % LEASE),
                         ("command", 3, '{"id":"%s","from":"n1","actor":null,"command":{"kick":{"feed":"%s"}}}' % (U, U)),
                         ("ack", 4, '{"id":"%s","node":"n1","region":"r","outcome":{"affected":[],"pinned":[]}}' % U)]:
    put("cluster_message", name, bytes([kind, 1]) + struct.pack(">h", 10) + short(b"n1") + body.encode())
put("cluster_message", "unsigned", bytes([2, 0, 0, 0]) + short(b"n1") +
    b'{"v":1,"kind":"event","node":"n1","ts":1700000000000,"nonce":"00","body":"{}","mac":"00"}')

# engine_media: settings byte, then (op, slot, arguments) steps.
def frame(op, slot, codec, key, cts, pay, dts_mode, dts_v, pay_arg=b""):
    return bytes([op, slot, codec, key]) + struct.pack(">h", cts) + bytes([pay]) + pay_arg + bytes([dts_mode]) + struct.pack(">H", dts_v)

def feed(slot, prio):
    s = bytes([0, slot, prio]) + struct.pack(">I", 1000)
    s += bytes([2, slot, 0, slot + 0x40])          # AVC config
    s += bytes([3, slot, 0])                        # AAC config
    s += bytes([6, slot]) + struct.pack(">I", 1280)
    return s

s = bytes([0]) + feed(0, 10) + bytes([8, 0, 0, 8]) + bytes([8, 0, 1, 8])
for i in range(12):
    s += frame(4, 0, 0, 1 if i % 4 == 0 else 0, 40 if i % 2 else -20, 3, 0, 33, bytes([0x65 if i % 4 == 0 else 0x41]))
    s += frame(5, 0, 0, 0, 0, 3, 0, 21)
    s += bytes([7, 0]) + struct.pack(">H", 33)
s += feed(1, 20)
for i in range(12):
    s += frame(4, 1, 0, 1 if i % 4 == 0 else 0, 0, 3, 0 if i != 6 else 6, 33, bytes([0x65 if i % 4 == 0 else 0x41]))
    s += frame(4, 0, 0, 0, 0, 3, 4 if i == 3 else 0, 33, bytes([0x41]))
    s += bytes([7, 0]) + struct.pack(">H", 40) + bytes([11, 0])
s += bytes([2, 1, 2]) + short(bytes(30)) + bytes([1, 1, 7, 0]) + struct.pack(">H", 2000) + bytes([11, 0, 9, 0, 10, 0])
put("engine_media", "two_feeds", s)
put("engine_media", "huge_frames", bytes([1]) + feed(2, 5) + bytes([8, 0, 1, 2]) +
    frame(4, 2, 0, 1, 0, 1, 0, 1, b"\x00\x10") + frame(4, 2, 1, 1, -5, 0, 5, 9) + bytes([11, 0]))

# ts_demux: a chunking seed, then a short MPEG-TS stream made by ffmpeg.
try:
    ts = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x36:rate=10",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "0.5",
         "-c:v", "libx264", "-g", "5", "-c:a", "aac", "-f", "mpegts", "-"],
        check=True, capture_output=True).stdout
    put("ts_demux", "h264_aac", bytes([0]) + ts)
    put("ts_demux", "h264_aac_odd_chunks", bytes([6]) + ts[: 188 * 20])
    hevc = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x36:rate=10", "-t", "0.3",
         "-c:v", "libx265", "-x265-params", "log-level=none", "-f", "mpegts", "-"],
        check=True, capture_output=True).stdout
    put("ts_demux", "hevc", bytes([3]) + hevc)
except (OSError, subprocess.CalledProcessError) as e:
    print(f"ffmpeg unavailable, no TS seeds from it: {e}", file=sys.stderr)
put("ts_demux", "sync_only", bytes([1]) + (bytes([0x47, 0x40, 0x00, 0x10]) + bytes(184)) * 2)
