#!/usr/bin/env bash
# Run nginx with the RTMP module (Debian: apt-get install libnginx-mod-rtmp)
# in the foreground, listening on loopback only: the relay the load test
# compares the gateway with.
#
#   scripts/nginx-rtmp.sh DIR PORT
#
# Writes DIR/nginx.conf (one worker; application "live", live on, no
# recording), then replaces itself with nginx (same PID), logging to
# DIR/error.log. Stop it with SIGTERM (or SIGQUIT for a graceful stop).
# Publish to rtmp://127.0.0.1:PORT/live/NAME, play the same URL.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 DIR PORT" >&2
    exit 2
fi
dir=$1 port=$2
module=${NGINX_RTMP_MODULE:-/usr/lib/nginx/modules/ngx_rtmp_module.so}
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
if [ ! -x "$nginx" ] || [ ! -f "$module" ]; then
    echo "nginx or its RTMP module is missing: apt-get install libnginx-mod-rtmp" >&2
    exit 3
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cat > "$dir/nginx.conf" <<CONF
load_module $module;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 20000;
}
rtmp {
    server {
        listen 127.0.0.1:$port;
        chunk_size 4096;
        application live {
            live on;
            record off;
        }
    }
}
CONF
exec "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
