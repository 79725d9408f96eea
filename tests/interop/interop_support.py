"""Helpers shared by the interop tests (test_*.py here): start the registry stand-in and, when
INTEROP_BOOTSTRAP names none, a real Kafka broker through deploy/kafka/kafka.sh.

Imported by the tests, not run; they run with the interop venv's python (see README.md).
"""

import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import IO, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STANDIN = os.path.join(HERE, "registry_standin.py")
AVRO_RECORDS = os.path.join(HERE, "avro_records.py")
KAFKA_SH = os.path.join(REPO, "deploy", "kafka", "kafka.sh")


def read_schema(event_type: str) -> str:
    """The text of schemas/<event_type>.avsc."""
    with open(os.path.join(REPO, "schemas", event_type + ".avsc"), encoding="utf-8") as f:
        return f.read()


def _first_line(proc: "subprocess.Popen[bytes]", timeout: float, what: str) -> str:
    """The first stdout line of `proc`, waiting at most `timeout` seconds (a thread reads it,
    since a pipe's readline cannot time out)."""
    assert proc.stdout is not None
    out: List[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = out[0].decode().strip() if out else ""
    if not line:
        proc.kill()
        proc.wait()
        raise RuntimeError("{} printed no address within {:.0f} s (exit {})".format(
            what, timeout, proc.returncode))
    return line


def _stop(proc: "subprocess.Popen[bytes]", timeout: float) -> Optional[int]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Standin:
    """registry_standin.py as a subprocess; its request log is kept in a temporary file so that
    a failing test can show it."""

    def __init__(self, *args: str) -> None:
        self._log: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, STANDIN, "--parent-pid", str(os.getpid()), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log)
        self.url = _first_line(self.proc, 30, "registry_standin.py")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> Optional[int]:
        code = _stop(self.proc, 10)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code

    def close(self) -> None:
        """Stops it if running and drops its log."""
        self.stop()
        self._log.close()


class Broker:
    """The bootstrap address of a Kafka broker: INTEROP_BOOTSTRAP's, else one started with
    `deploy/kafka/kafka.sh start` in a temporary directory (stopped by stop())."""

    def __init__(self) -> None:
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        given = os.environ.get("INTEROP_BOOTSTRAP")
        if given:
            self.address = given
            return
        self._dir = tempfile.TemporaryDirectory(prefix="interop-kafka-")
        env = dict(os.environ, KAFKA_PARENT_PID=str(os.getpid()))
        # The broker's own output goes to stderr (kafka.sh keeps stdout for the address).
        self.proc = subprocess.Popen([KAFKA_SH, "start", self._dir.name], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.address = _first_line(self.proc, 240, "kafka.sh start")

    def create_topics(self, names: List[str], partitions: int = 2) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.address})
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
            operation_timeout=30)
        for future in futures.values():
            future.result(60)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 60)
            if self.proc.stdout:
                self.proc.stdout.close()
            self._dir.cleanup()
