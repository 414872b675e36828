#!/usr/bin/env bash
# Encode the media the load test publishes, once (the files are not
# committed): H.264 + AAC, 30 fps, a keyframe every 30 frames (1 s GOP).
#
#   scripts/loadtest-fixtures.sh [DIR]      # default: loadtest/fixtures
#
#   hd.flv / hd.ts   1280x720, ~2.65 Mbit/s (2.5 Mbit/s video + 128 kbit/s audio)
#   sd.flv / sd.ts    640x360, ~500 kbit/s (436 kbit/s video + 64 kbit/s audio)
#
# Existing files are kept; delete them to re-encode.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-loadtest/fixtures}"
mkdir -p "$dir"

encode() { # name size video_kbit audio_kbit
    local name=$1 size=$2 vb=$3 ab=$4
    if [ -s "$dir/$name.flv" ] && [ -s "$dir/$name.ts" ]; then
        return
    fi
    echo "[fixtures] encoding $dir/$name.flv and $name.ts ($size, ${vb}k + ${ab}k)" >&2
    ffmpeg -hide_banner -loglevel error -nostdin -y \
        -f lavfi -i "testsrc2=size=$size:rate=30" \
        -f lavfi -i "sine=frequency=440:sample_rate=48000" \
        -t 10 -c:v libx264 -preset veryfast -pix_fmt yuv420p \
        -g 30 -keyint_min 30 -sc_threshold 0 \
        -b:v "${vb}k" -maxrate "${vb}k" -bufsize "${vb}k" -x264-params nal-hrd=cbr \
        -c:a aac -b:a "${ab}k" -ac 2 \
        -f flv "$dir/$name.flv.tmp"
    ffmpeg -hide_banner -loglevel error -nostdin -y -i "$dir/$name.flv.tmp" \
        -c copy -f mpegts "$dir/$name.ts.tmp"
    mv "$dir/$name.flv.tmp" "$dir/$name.flv"
    mv "$dir/$name.ts.tmp" "$dir/$name.ts"
}

encode hd 1280x720 2500 128
encode sd 640x360 436 64
