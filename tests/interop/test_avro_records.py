"""Tests avro_records.py (produce and consume) against a real Kafka broker and the registry
stand-in: scenario inputs come back as the same events, bad lines are skipped, undecodable
values are reported, transaction markers end a partition and open transactions time out.

Starts its own broker with deploy/kafka/kafka.sh unless INTEROP_BOOTSTRAP=HOST:PORT names one
(topics get a fresh prefix per test, so a shared broker is fine):

    py=$(deploy/scripts/python-venv.sh tests/interop/requirements.txt ~/.cache/crmflow/interop-venv)
    "$py" -m unittest discover -s tests/interop -p test_avro_records.py -v
"""

import copy
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import unittest
import uuid
from typing import Any, Dict, List, Optional

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_support import AVRO_RECORDS, REPO, Broker, Standin, read_schema  # noqa: E402

SCENARIOS = os.path.join(REPO, "tests", "scenarios")
INPUT_TOPICS = ["integration.settings", "team.assignments", "crm.changes"]
broker: Optional[Broker] = None


def setUpModule() -> None:  # noqa: N802 (unittest's name)
    global broker
    broker = Broker()


def tearDownModule() -> None:  # noqa: N802
    if broker is not None:
        broker.stop()


def utc_millis(text: str) -> str:
    """An RFC 3339 timestamp as crmflow writes it (UTC, milliseconds, Z), done independently of
    avro_records.py's parser (the scenarios' stamps have no fractions)."""
    instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc)
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expected_event(event: Dict[str, Any]) -> Dict[str, Any]:
    """An input event as it comes back from Avro: timestamps normalized and the fields the
    schemas give defaults filled in (all of crmflow's defaults are null)."""
    e = copy.deepcopy(event)
    for name in ("changed_at", "occurred_at"):
        if name in e:
            e[name] = utc_millis(e[name])
    if e["type"] == "CrmRecordChanged":
        e.setdefault("users", None)
        for profile in (e["users"] or {}).values():
            profile.setdefault("name", None)
            profile.setdefault("email", None)
    if e["type"] == "WorkflowSaved":
        e["workflow"].setdefault("value_field", None)
        e["workflow"].setdefault("occurred_at_field", None)
        for condition in e["workflow"]["conditions"]:
            condition.setdefault("value", None)
    return e


class RecordsCase(unittest.TestCase):
    standin_args: tuple = ()

    def setUp(self) -> None:
        assert broker is not None
        self.broker = broker
        self.standin = Standin(*self.standin_args)
        self.addCleanup(self.standin.close)
        self.prefix = "t{}.".format(uuid.uuid4().hex[:8])

    def run(self, result: Optional[unittest.TestResult] = None) -> Any:
        failures = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > failures:
            sys.stderr.write("\n--- stand-in log of {} ---\n{}".format(self.id(), self.standin.log()))
        return out

    def topics(self, *names: str) -> List[str]:
        """Creates prefixed topics (2 partitions each) and returns their names."""
        actual = [self.prefix + n for n in names]
        self.broker.create_topics(actual)
        return actual

    def tool(self, *args: str, ok: bool = True, timeout: float = 180) -> "subprocess.CompletedProcess[str]":
        """Runs avro_records.py; with ok, fails the test (showing its stderr) unless it exits 0."""
        done = subprocess.run(
            [sys.executable, AVRO_RECORDS, args[0], "--bootstrap", self.broker.address,
             "--registry", self.standin.url, *args[1:]],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if ok:
            self.assertEqual(done.returncode, 0, "avro_records.py {} failed:\n{}".format(
                args[0], done.stderr))
        return done

    def topic_map(self) -> List[str]:
        return [arg for t in INPUT_TOPICS for arg in ("--topic-map", "{}={}{}".format(t, self.prefix, t))]

    def tmp(self) -> str:
        """A temporary directory, removed after the test."""
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        return d.name

    def consume(self, topics: List[str], *extra: str) -> List[Dict[str, Any]]:
        out = self.tool("consume", "--topics", ",".join(topics), "--timeout", "60", *extra)
        return [json.loads(line) for line in out.stdout.splitlines()]


class ScenarioRoundTripTest(RecordsCase):
    def round_trip(self, scenario: str) -> None:
        topics = self.topics(*INPUT_TOPICS)
        path = os.path.join(SCENARIOS, scenario, "input.jsonl")
        produced = self.tool("produce", *self.topic_map(), "--input", path)
        self.assertIn("0 line(s) skipped", produced.stderr)
        with open(path, encoding="utf-8") as f:
            inputs = [json.loads(line) for line in f if line.strip()]
        records = self.consume(topics)

        # Every line has the key "acme", so each topic's records sit in one partition, in
        # file order; consume prints topic by topic.
        want = []
        for topic in topics:
            for line in inputs:
                if self.prefix + line["topic"] == topic:
                    want.append({"topic": topic, "key": line["key"], "timestamp": line["timestamp"],
                                 "value": expected_event(line["value"])})
        self.assertEqual(records, want)

        # One event type on a topic: <topic>-value; several: <topic>-<full record name>.
        types = {t: {i["value"]["type"] for i in inputs if self.prefix + i["topic"] == t}
                 for t in topics}
        want_subjects = sorted({
            "{}-value".format(t) if len(ts) == 1 else "{}-crmflow.events.{}".format(t, name)
            for t, ts in types.items() for name in ts})
        client = SchemaRegistryClient({"url": self.standin.url})
        self.addCleanup(client.close)
        self.assertEqual(sorted(client.get_subjects()), want_subjects)

    def test_owner_change(self) -> None:
        self.round_trip("owner-change")

    def test_seed_walkthrough(self) -> None:
        self.round_trip("seed-walkthrough")


class BadLinesTest(RecordsCase):
    def test_bad_lines_are_skipped(self) -> None:
        topics = self.topics(*INPUT_TOPICS)
        path = os.path.join(SCENARIOS, "bad-lines", "input.jsonl")
        produced = self.tool("produce", *self.topic_map(), "--skip-unmapped", "--input", path)
        for why in ("line 2: not a JSON envelope", "line 3: not a JSON envelope",
                    "line 5: unknown event type \"CrmRecordDestroyed\"",
                    "line 6: CrmRecordChanged does not fit its schema: object_id: missing required field",
                    "line 10: topic crm.events is not in the topic map",
                    "line 12: CrmRecordChanged does not fit its schema: operation:",
                    "line 13: CrmRecordChanged does not fit its schema: occurred_at:",
                    "7 record(s) sent, 7 line(s) skipped"):
            self.assertIn(why, produced.stderr)
        records = self.consume(topics)
        self.assertEqual(len(records), 7, records)
        self.assertFalse([r for r in records if "error" in r])
        keyless = [r for r in records if r["key"] is None]
        self.assertEqual([r["value"]["event_id"] for r in keyless], ["e5"])
        # fields: {} and the "type" discriminator survive; team.assignments got a WorkflowDeleted.
        self.assertEqual(keyless[0]["value"]["fields"], {})
        self.assertEqual([r["value"]["type"] for r in records if r["topic"] == topics[1]],
                         ["WorkflowDeleted"])


class ValuesTest(RecordsCase):
    def test_union_branches_and_timestamps(self) -> None:
        (topic,) = self.topics("crm.changes")
        event = {"type": "CrmRecordChanged", "event_id": "e1", "company_id": "acme",
                 "integration_id": "sf", "object_type": "Deal", "object_id": "d1",
                 "operation": "deleted", "occurred_at": "2024-05-01T12:00:00.123456+02:00",
                 "fields": {"n": None, "b": True, "l": -7, "d": 2.5, "i": 1e3, "s": "x"},
                 "users": {"u": {"email": "a@b.test"}}, "ignored": [1, 2]}
        line = {"topic": "crm.changes", "key": "acme", "timestamp": 1714557605000, "value": event,
                "headers": {"h": "v"}}
        path = os.path.join(self.tmp(), "in.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.tool("produce", *self.topic_map(), "--input", path)
        (record,) = self.consume([topic])
        self.assertEqual(record["headers"], {"h": "v"})
        value = record["value"]
        self.assertEqual(value["occurred_at"], "2024-05-01T10:00:00.123Z")
        # Each JSON kind took its own union branch: bool, long, double (1e3 stays a float).
        self.assertEqual(value["fields"], {"n": None, "b": True, "l": -7, "d": 2.5, "i": 1000.0, "s": "x"})
        self.assertIsInstance(value["fields"]["i"], float)
        self.assertEqual(value["users"], {"u": {"name": None, "email": "a@b.test"}})
        self.assertNotIn("ignored", value)

    def test_undecodable_values_are_reported(self) -> None:
        (topic,) = self.topics("crm.changes")
        client = SchemaRegistryClient({"url": self.standin.url})
        self.addCleanup(client.close)
        good = AvroSerializer(client, read_schema("UserAssignedToTeam"))(
            {"company_id": "a", "user_id": "u", "team_id": "t", "changed_at": 0},
            SerializationContext(topic, MessageField.VALUE))
        assert good is not None
        producer = Producer({"bootstrap.servers": self.broker.address})
        # A JSON value, a frame naming a schema id the registry lacks, then a good record.
        for value in (b'{"type":"x"}', b"\x00\x00\x00\x03\xe7\x02", good):
            producer.produce(topic, value=value, key=b"k", partition=0, timestamp=1000)
        self.assertEqual(producer.flush(30), 0)
        records = self.consume([topic])
        self.assertEqual(len(records), 3, records)
        self.assertEqual(records[0]["value_hex"], b'{"type":"x"}'.hex())
        self.assertIn("error", records[0])
        self.assertIn("40403", records[1]["error"])
        self.assertNotIn("value", records[1])
        self.assertEqual(records[2]["value"], {
            "type": "UserAssignedToTeam", "company_id": "a", "user_id": "u", "team_id": "t",
            "changed_at": "1970-01-01T00:00:00.000Z"})

        # A registry that cannot be reached is no undecodable value: consume fails.
        self.standin.stop()
        down = self.tool("consume", "--topics", topic, "--timeout", "60", ok=False)
        self.assertEqual((down.returncode, down.stdout), (1, ""), down.stderr)
        self.assertIn("avro_records: error: ConnectError", down.stderr)


class TransactionsTest(RecordsCase):
    def test_markers_aborts_and_open_transactions(self) -> None:
        (topic,) = self.topics("out")
        client = SchemaRegistryClient({"url": self.standin.url})
        self.addCleanup(client.close)
        serializer = AvroSerializer(client, read_schema("UserAssignedToTeam"))

        def value(team: str) -> bytes:
            out = serializer({"company_id": "a", "user_id": "u", "team_id": team, "changed_at": 0},
                             SerializationContext(topic, MessageField.VALUE))
            assert out is not None
            return out

        producer = Producer({"bootstrap.servers": self.broker.address,
                             "transactional.id": "interop-" + self.prefix})
        producer.init_transactions(30)
        # Partition 0: three committed records, then their commit marker, then two aborted
        # records and the abort marker; partition 1: only aborted records and a marker. Neither
        # ends in a record the consumer is given.
        producer.begin_transaction()
        for team in ("c0", "c1", "c2"):
            producer.produce(topic, value=value(team), partition=0)
        producer.commit_transaction(30)
        for partition in (0, 1):
            producer.begin_transaction()
            producer.produce(topic, value=value("aborted"), partition=partition)
            producer.produce(topic, value=value("aborted"), partition=partition)
            producer.flush(30)  # else abort purges them before they reach the broker
            producer.abort_transaction(30)
        records = self.consume([topic])
        self.assertEqual([r["value"]["team_id"] for r in records], ["c0", "c1", "c2"])

        # A transaction left open below the end: read_committed cannot pass it, so consume
        # times out and says why; once committed, its record is read.
        producer.begin_transaction()
        producer.produce(topic, value=value("late"), partition=1)
        producer.flush(30)
        stuck = self.tool("consume", "--topics", topic, "--timeout", "3", ok=False)
        self.assertEqual(stuck.returncode, 1, stuck.stderr)
        self.assertIn("{} [1]: position".format(topic), stuck.stderr)
        self.assertIn("a transaction is still open", stuck.stderr)
        self.assertEqual(stuck.stdout, "")
        producer.commit_transaction(30)
        records = self.consume([topic])
        self.assertEqual([r["value"]["team_id"] for r in records], ["c0", "c1", "c2", "late"])


class AuthTest(RecordsCase):
    standin_args = ("--basic-auth", "crm:flow")

    def test_basic_auth(self) -> None:
        (topic,) = self.topics("team.assignments")
        path = os.path.join(SCENARIOS, "owner-change", "input.jsonl")
        refused = self.tool("produce", "--topic-map", "team.assignments=" + topic, "--skip-unmapped",
                            "--input", path, ok=False)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("40101", refused.stderr)
        self.tool("produce", "--basic-auth", "crm:flow", "--topic-map", "team.assignments=" + topic,
                  "--skip-unmapped", "--input", path)
        records = self.consume([topic], "--basic-auth", "crm:flow")
        self.assertEqual([r["value"]["team_id"] for r in records], ["oslo", "bergen"])


if __name__ == "__main__":
    unittest.main()
