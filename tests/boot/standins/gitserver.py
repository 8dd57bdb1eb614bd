"""Stand-in for GitHub's smart-HTTP Git hosting of the private agent repository, for boot tests.

It serves a bare repository made from `standins/agent/` through `git http-backend` (CGI) on
127.0.0.1, and, like GitHub, demands a token by HTTP Basic auth: the token is accepted in either
the username field (`https://<token>@host/...`, password empty) or the password field
(`x-access-token:<token>`). Every request is recorded with whether it was authorized, so a test
can tell a script that fetched with the token from one that never sent it; the token itself is
never recorded or logged.

With `tls=True` it serves HTTPS with a throwaway self-signed certificate for 127.0.0.1
(`ca_pem`; install it in a machine with `Machine.trust_ca`), for scripts that insist on https.
"""

from __future__ import annotations

import base64
import hmac
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

AGENT_SOURCE = Path(__file__).resolve().parent / "agent"
REPO_PATH = "limedrop-byte/citrus-agent.git"

# Fixed identity and dates: the same agent source always gives the same commit id.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Citrus Harness",
    "GIT_AUTHOR_EMAIL": "harness@citrus.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Citrus Harness",
    "GIT_COMMITTER_EMAIL": "harness@citrus.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


@dataclass(frozen=True)
class GitRequest:
    """One HTTP request: `credentials` says whether any Basic auth was sent at all."""

    method: str
    path: str
    authorized: bool
    credentials: bool


class GitServer:
    """A context manager; `url` is the clone URL (no credentials in it), `requests` the log."""

    def __init__(
        self,
        token: str,
        *,
        source: Path = AGENT_SOURCE,
        repo_path: str = REPO_PATH,
        branch: str = "main",
        tls: bool = False,
        refusal_status: int = 401,
    ) -> None:
        self._token = token
        # 401 asks for credentials (git then says "could not read Username"); 403 is what a
        # token without access to the repository gets ("The requested URL returned error: 403").
        self.refusal_status = refusal_status
        self._source = source
        self.repo_path = repo_path
        self.branch = branch
        self.tls = tls
        self.requests: list[GitRequest] = []
        self.commit = ""
        self.ca_pem = b""
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="citrus-git-"))
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "GitServer is not started"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_port}/{self.repo_path}"

    @property
    def host_path(self) -> str:
        """`127.0.0.1:PORT/owner/repo.git`: the URL without its scheme, for `https://$TOKEN@...`."""
        return urlsplit(self.url)._replace(scheme="").geturl().removeprefix("//")

    @property
    def refused(self) -> list[GitRequest]:
        return [r for r in self.requests if not r.authorized]

    @property
    def authorized(self) -> list[GitRequest]:
        return [r for r in self.requests if r.authorized]

    def __enter__(self) -> GitServer:
        try:
            self._make_repository()
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
            self._httpd.daemon_threads = True
            if self.tls:
                self._httpd.socket = self._tls_context().wrap_socket(
                    self._httpd.socket, server_side=True
                )
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="gitserver")
            self._thread.start()
        except BaseException:
            shutil.rmtree(self._root, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
        shutil.rmtree(self._root, ignore_errors=True)

    def _make_repository(self) -> None:
        work = self._root / "work"
        shutil.copytree(self._source, work, ignore=shutil.ignore_patterns("node_modules", ".env"))
        env = {**os.environ, **_GIT_ENV}

        def git(*args: str, cwd: Path = work) -> str:
            return subprocess.run(
                ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
            ).stdout.strip()

        git("init", "-q", "-b", self.branch)
        git("add", "-A")
        git("commit", "-q", "-m", "citrus-agent stand-in")
        self.commit = git("rev-parse", "HEAD")
        bare = self._root / "repos" / self.repo_path
        bare.parent.mkdir(parents=True)
        git("clone", "-q", "--bare", str(work), str(bare), cwd=self._root)

    def _tls_context(self) -> ssl.SSLContext:
        cert, key = self._root / "cert.pem", self._root / "key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=citrus-harness git stand-in",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.ca_pem = cert.read_bytes()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context

    def _authorized(self, header: str | None) -> tuple[bool, bool]:
        """(authorized, credentials sent) for an Authorization header value."""
        if not header or not header.startswith("Basic "):
            return False, False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, True
        token = self._token.encode()
        ok = hmac.compare_digest(user.encode(), token) or hmac.compare_digest(
            password.encode(), token
        )
        return ok, True

    def _record(self, request: GitRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self
        project_root = self._root / "repos"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def log_message(self, format: str, *args: object) -> None:
                pass  # the request list is the log; nothing that could carry a token is printed

            def _serve(self) -> None:
                path, _, query = self.path.partition("?")
                ok, sent = server._authorized(self.headers.get("Authorization"))
                server._record(GitRequest(self.command, path, ok, sent))
                if not ok:
                    body = b"authentication required\n"
                    self.send_response(server.refusal_status)
                    if server.refusal_status == 401:
                        self.send_header("WWW-Authenticate", 'Basic realm="citrus-agent"')
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                status, headers, body = self._run_backend(path, query, self._read_body())
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _run_backend(
                self, path: str, query: str, body: bytes
            ) -> tuple[int, list[tuple[str, str]], bytes]:
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(project_root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "HOME": "/nonexistent",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": "token",
                    "REMOTE_ADDR": self.client_address[0],
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }
                proc = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
                )
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                if proc.returncode != 0 and not proc.stdout:
                    return 500, [("Content-Type", "text/plain")], b"git http-backend failed\n"
                return status, headers, payload

        return Handler
