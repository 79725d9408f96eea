#!/usr/bin/env python3
"""A minimal in-memory stand-in for Confluent Schema Registry, for crmflow's interop tests.

No real Schema Registry can be installed on the test machines, so the interop tests run against
this. It speaks only the part of the REST API that confluent-kafka's Python client (its Avro
serializer and deserializer) and the Rust crate schema_registry_converter use; see README.md.
Standard library only.

    python3 tests/interop/registry_standin.py [--port 0] [--basic-auth USER:PASSWORD]
        [--bearer-token TOKEN] [--parent-pid PID]

It binds 127.0.0.1 (port 0, the default, means a free port), prints exactly one line on
stdout, `http://127.0.0.1:PORT`, and serves until SIGTERM or SIGINT (exit 0), or until the
process PID is gone. Each request is logged as one line on stderr.
"""

import argparse
import base64
import binascii
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """An error answer: HTTP status plus the registry's own error_code and message."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


class Registry:
    """Schemas and subjects, in memory. Ids are global: the same schema (after canonical
    re-dumping) gets the same id under every subject, as in the real registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id - 1 -> (schema text as first registered, schemaType, references)
        self._schemas: List[Tuple[str, str, list]] = []
        self._ids: Dict[Tuple[str, str, str], int] = {}  # (type, canonical, references) -> id
        self._subjects: Dict[str, List[int]] = {}  # subject -> ids of versions 1, 2, ...

    @staticmethod
    def _key(body: Any) -> Tuple[Tuple[str, str, str], str, str, list]:
        """Validates a register/lookup body; returns (identity key, text, type, references)."""
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise RegistryError(422, 42201, "Invalid schema: the body needs a \"schema\" string")
        text = body["schema"]
        schema_type = body.get("schemaType") or "AVRO"
        references = body.get("references") or []
        if not isinstance(schema_type, str) or not isinstance(references, list):
            raise RegistryError(422, 42201, "Invalid schema: bad schemaType or references")
        if schema_type in ("AVRO", "JSON"):
            # Whitespace and key order do not make a schema different.
            try:
                canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
            except ValueError as e:
                raise RegistryError(422, 42201, "Invalid schema: not JSON: {}".format(e)) from None
        else:
            canonical = text
        refs = json.dumps(references, sort_keys=True, separators=(",", ":"))
        return (schema_type, canonical, refs), text, schema_type, references

    def _describe(self, schema_id: int) -> Dict[str, Any]:
        text, schema_type, references = self._schemas[schema_id - 1]
        out: Dict[str, Any] = {"schema": text}
        # The real registry leaves out schemaType for AVRO, its default, and empty references.
        if schema_type != "AVRO":
            out["schemaType"] = schema_type
        if references:
            out["references"] = references
        return out

    def _versions(self, subject: str) -> List[int]:
        versions = self._subjects.get(subject)
        if not versions:
            raise RegistryError(404, 40401, "Subject '{}' not found.".format(subject))
        return versions

    def register(self, subject: str, body: Any) -> Dict[str, Any]:
        key, text, schema_type, references = self._key(body)
        with self._lock:
            schema_id = self._ids.get(key)
            if schema_id is None:
                self._schemas.append((text, schema_type, references))
                schema_id = self._ids[key] = len(self._schemas)
            versions = self._subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return {"id": schema_id}

    def lookup(self, subject: str, body: Any) -> Dict[str, Any]:
        key, _, _, _ = self._key(body)
        with self._lock:
            versions = self._versions(subject)
            schema_id = self._ids.get(key)
            if schema_id not in versions:
                raise RegistryError(404, 40403, "Schema not found")
            return self._version(subject, versions.index(schema_id) + 1)

    def _version(self, subject: str, version: int) -> Dict[str, Any]:
        schema_id = self._subjects[subject][version - 1]
        out = {"subject": subject, "version": version, "id": schema_id}
        out.update(self._describe(schema_id))
        return out

    def version(self, subject: str, version: str) -> Dict[str, Any]:
        with self._lock:
            versions = self._versions(subject)
            if version in ("latest", "-1"):
                return self._version(subject, len(versions))
            try:
                number = int(version)
            except ValueError:
                number = 0
            if number < 1:
                raise RegistryError(
                    422, 42202,
                    "The specified version '{}' is not a valid version id. Allowed values are "
                    "between [1, 2^31-1] and the string \"latest\"".format(version))
            if number > len(versions):
                raise RegistryError(404, 40402, "Version {} not found.".format(number))
            return self._version(subject, number)

    def versions(self, subject: str) -> List[int]:
        with self._lock:
            return list(range(1, len(self._versions(subject)) + 1))

    def subjects(self) -> List[str]:
        with self._lock:
            return sorted(s for s, v in self._subjects.items() if v)

    def schema(self, schema_id: str) -> Dict[str, Any]:
        with self._lock:
            try:
                number = int(schema_id)
            except ValueError:
                number = 0
            if not 1 <= number <= len(self._schemas):
                raise RegistryError(404, 40403, "Schema {} not found".format(schema_id))
            return self._describe(number)


class Handler(BaseHTTPRequestHandler):
    """Routes the REST subset; the registry and the credentials hang off the server."""

    protocol_version = "HTTP/1.1"  # keep-alive, as both clients pool connections
    server_version = "crmflow-registry-standin"

    # (method, path pattern) -> Registry call; `{}` matches one URL-decoded path segment.
    def _route(self, method: str, parts: List[str], body: Any) -> Any:
        registry: Registry = self.server.registry  # type: ignore[attr-defined]
        n = len(parts)
        if n == 1 and parts[0] == "subjects":
            allowed, call = "GET", registry.subjects
        elif n == 2 and parts[0] == "subjects":
            allowed, call = "POST", lambda: registry.lookup(parts[1], body)
        elif n == 3 and parts[0] == "subjects" and parts[2] == "versions":
            if method == "POST":
                allowed, call = "POST", lambda: registry.register(parts[1], body)
            else:
                allowed, call = "GET", lambda: registry.versions(parts[1])
        elif n == 4 and parts[0] == "subjects" and parts[2] == "versions":
            allowed, call = "GET", lambda: registry.version(parts[1], parts[3])
        elif n == 3 and parts[:2] == ["schemas", "ids"]:
            allowed, call = "GET", lambda: registry.schema(parts[2])
        elif n == 4 and parts[:2] == ["associations", "resources"]:
            # confluent-kafka (2.16) asks this first with its default subject name strategy;
            # none here, so it falls back to {topic}-key|value.
            allowed, call = "GET", lambda: []
        else:
            # What the real registry answers for a route it does not have.
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        if method != allowed:
            raise RegistryError(405, 405, "HTTP 405 Method Not Allowed")
        return call()

    def _authorized(self) -> bool:
        basic: Optional[str] = self.server.basic_auth  # type: ignore[attr-defined]
        bearer: Optional[str] = self.server.bearer_token  # type: ignore[attr-defined]
        if basic is None and bearer is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        credentials = credentials.strip()
        if basic is not None and scheme.lower() == "basic":
            try:
                if base64.b64decode(credentials, validate=True).decode("utf-8") == basic:
                    return True
            except (binascii.Error, UnicodeDecodeError):
                pass
        if bearer is not None and scheme.lower() == "bearer" and credentials == bearer:
            return True
        return False

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        raw = self._read_body()  # always, so that a kept-alive connection stays in step
        status, extra_headers = 200, {}
        try:
            if not self._authorized():
                extra_headers["WWW-Authenticate"] = 'Basic realm="registry-standin"'
                raise RegistryError(401, 40101, "Unauthorized")
            body = None
            if method == "POST":
                try:
                    body = json.loads(raw.decode("utf-8")) if raw else None
                except ValueError:
                    raise RegistryError(422, 42201, "Invalid schema: the body is not JSON") from None
            # Query strings (deleted=, normalize=, subject=, ...) are accepted and ignored.
            parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
            result = self._route(method, parts, body)
        except RegistryError as e:
            status, result = e.status, {"error_code": e.error_code, "message": e.message}
        except Exception as e:  # a bug here should show as an answer, not a dropped socket
            status, result = 500, {"error_code": 50001, "message": "stand-in error: {!r}".format(e)}
        data = json.dumps(result).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        # One line per request, on stderr only: stdout carries just the address.
        sys.stderr.write("registry-standin: {}\n".format(format % args))


def parent_gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            # The state follows the command name in parentheses, which may contain spaces.
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--basic-auth", metavar="USER:PASSWORD",
                        help="require HTTP Basic auth with these credentials")
    parser.add_argument("--bearer-token", metavar="TOKEN",
                        help="require `Authorization: Bearer TOKEN`")
    parser.add_argument("--parent-pid", type=int, metavar="PID",
                        help="exit when this process is gone (checked every second)")
    args = parser.parse_args()
    if args.basic_auth is not None and ":" not in args.basic_auth:
        parser.error("--basic-auth must be USER:PASSWORD")

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True  # open keep-alive connections must not hold up the exit
    server.registry = Registry()  # type: ignore[attr-defined]
    server.basic_auth = args.basic_auth  # type: ignore[attr-defined]
    server.bearer_token = args.bearer_token  # type: ignore[attr-defined]

    stop = threading.Event()
    # serve_forever runs in a thread, so that the signal handlers (main thread) only set stop.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                               daemon=True)
    serving.start()
    print("http://127.0.0.1:{}".format(server.server_address[1]), flush=True)

    while not stop.wait(1.0):
        if args.parent_pid is not None and parent_gone(args.parent_pid):
            sys.stderr.write("registry-standin: process {} is gone; exiting\n".format(args.parent_pid))
            break
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
