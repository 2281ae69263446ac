# bench/nginx.sh - a throwaway nginx on 127.0.0.1 for the benchmarks that
# need a real server (bench_url.sh, bench_cache.sh, bench_cpu.sh). Sourced,
# not run. Also bench_need, the check that a script's programs are there.
#
# Needs: TMP (a scratch directory; its www/ is the document root),
# NGINX (the binary). Optional: NGINX_HTTP (directives added to the http
# block, e.g. a log_format), NGINX_ACCESS_LOG (the access_log value,
# default off), NGINX_SERVER (directives added to the server block, e.g.
# throttled locations). nginx_start sets PORT, NGINX_PID and URL (of
# $TMP/www/f) and returns once nginx answers; nginx_stop ends it, from
# the caller's cleanup trap, even half started.

# bench_need WHO PROGRAM...: each PROGRAM (a path, or a command on PATH)
# is there, or WHO says which one is not and the script exits 2.
bench_need() {
	local who=$1 t
	shift
	for t in "$@"; do
		case $t in
		*/*) [ -x "$t" ] ;;
		*) command -v "$t" >/dev/null ;;
		esac || { echo "$who: $t not found (tools/build builds streamfs, tools/bootstrap installs the rest)" >&2; exit 2; }
	done
}

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

nginx_start() {
	mkdir -p "$TMP/nginx"
	PORT=$(free_port)
	cat >"$TMP/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 256; }
http {
    ${NGINX_HTTP:-}
    access_log ${NGINX_ACCESS_LOG:-off};
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:$PORT;
        root $TMP/www;
        ${NGINX_SERVER:-}
    }
}
CONF
	"$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
		</dev/null >"$TMP/nginx/stderr" 2>&1 &
	NGINX_PID=$!
	URL="http://127.0.0.1:$PORT/f"
	# Polled with a deadline (5 s): nginx has no readiness signal to wait on.
	for _ in $(seq 100); do
		curl -s -o /dev/null -r 0-0 "$URL" && return 0
		kill -0 "$NGINX_PID" 2>/dev/null || break
		sleep 0.05
	done
	cat "$TMP/nginx/stderr" "$TMP/nginx/error.log" >&2
	return 1
}

nginx_stop() {
	[ -n "${NGINX_PID:-}" ] || return 0
	kill -QUIT "$NGINX_PID" 2>/dev/null
	for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$NGINX_PID" 2>/dev/null
	wait "$NGINX_PID" 2>/dev/null
	NGINX_PID=
}
