"""A real nginx on 127.0.0.1 for end-to-end URL tests.

Runs /usr/sbin/nginx in the foreground (`daemon off; master_process off;`)
with a generated config whose pid file, logs and temp paths all live in a
private directory, on a free port, serving ROOT. Optionally also HTTPS with
a self-signed certificate made by openssl. Stopped by PID.
"""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def make_self_signed(dirpath, cn="127.0.0.1"):
    """Write cert.pem/key.pem into dirpath; return their paths."""
    d = Path(dirpath)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=%s" % cn, "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Nginx:
    def __init__(self, root, workdir, tls=False, http_extra=None):
        self.root = Path(root).resolve()
        self.dir = Path(workdir)
        self.tls = tls
        self.http_extra = http_extra
        self.extra_port = None
        self.proc = None
        self.port = None
        self.tls_port = None
        self.cert = None

    def _config(self):
        d = self.dir
        tls = ""
        if self.tls:
            self.cert, key = make_self_signed(d)
            tls = """
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        root %s;
    }""" % (self.tls_port, self.cert, key, self.root)
        return """
daemon off;
master_process off;
worker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 256; }
http {
    access_log %(d)s/access.log;
    client_body_temp_path %(d)s/client_body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    server {
        listen 127.0.0.1:%(port)d;
        root %(root)s;
    }%(tls)s
%(extra)s
}
""" % {"d": d, "port": self.port, "root": self.root, "tls": tls,
       "extra": self.http_extra(self) if self.http_extra else ""}

    def start(self, timeout=15):
        self.dir.mkdir(parents=True, exist_ok=True)
        last_err = ""
        for _attempt in range(5):
            self.port = free_port()
            self.tls_port = free_port() if self.tls else None
            self.extra_port = free_port() if self.http_extra else None
            conf = self.dir / "nginx.conf"
            conf.write_text(self._config())
            self._err = open(self.dir / "stderr.log", "wb")
            self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                                          "-c", str(conf)],
                                         stdin=subprocess.DEVNULL, stdout=self._err,
                                         stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _port_open(self.port) and (not self.tls or _port_open(self.tls_port)) \
                        and (not self.extra_port or _port_open(self.extra_port)):
                    return self
                time.sleep(0.05)
            last_err = self.log_text()
            self.stop()
            if "Address already in use" not in last_err:
                break
        raise RuntimeError("nginx did not start: %s" % last_err)

    def url(self, name, https=False):
        if https:
            return "https://127.0.0.1:%d/%s" % (self.tls_port, name)
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    def log_text(self):
        out = ""
        for n in ("stderr.log", "error.log"):
            p = self.dir / n
            if p.exists():
                out += p.read_text(errors="replace")
        return out

    def access_log(self):
        p = self.dir / "access.log"
        return p.read_text(errors="replace").splitlines() if p.exists() else []

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGQUIT)  # graceful
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if getattr(self, "_err", None):
            self._err.close()
            self._err = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
