#!/usr/bin/env python3
"""Produces crmflow events to Kafka in Confluent Schema Registry's Avro wire format (with
confluent-kafka's own AvroSerializer), and consumes such records back as crmflow's JSON lines.
The other side of the interop test of crmflow's `encoding = "confluent-avro"`
(crates/cli/tests/kafka_confluent.rs); see README.md. Runs with the interop venv's python:

    py=$(deploy/scripts/python-venv.sh tests/interop/requirements.txt ~/.cache/crmflow/interop-venv)
    "$py" tests/interop/avro_records.py produce --bootstrap HOST:PORT --registry URL
        [--basic-auth USER:PASSWORD | --bearer-token TOKEN]
        [--topic-map DEFAULT=ACTUAL ...] [--skip-unmapped] --input FILE.jsonl
    "$py" tests/interop/avro_records.py consume --bootstrap HOST:PORT --registry URL
        [--basic-auth USER:PASSWORD | --bearer-token TOKEN] --topics T1,T2,... [--timeout SECONDS]

produce reads envelope lines {"topic", "key", "timestamp", "value", "headers"?} (as in
tests/scenarios/*/input.jsonl), converts each value from crmflow's JSON form to the Avro schema
of its "type" (schemas/<type>.avsc) and produces it, in file order, with an idempotent
producer. Lines that are not envelopes or whose value does not fit a schema are skipped and
counted on stderr. Subjects: <topic>-value where all of a topic's events have one type, else
<topic>-<full record name> (confluent-kafka's topic_record_subject_name_strategy).

consume reads every partition of the topics from the beginning to the end offsets they have
when it starts (read_committed, no consumer group commits) and prints one envelope line per
record on stdout, topic by topic, partition by partition, in offset order, with the value in
crmflow's JSON form ("type" = the writer schema's record name; timestamps as
2024-05-01T10:00:00.000Z). A value that does not decode gives a line with "error" and
"value_hex" instead of "value".

Exit status: 0 done; 1 a delivery error, a registry error or a timeout; 2 bad arguments.
"""

import argparse
import datetime as dt
import glob
import json
import os
import re
import struct
import sys
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    SchemaRegistryError,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "schemas")
UTC = dt.timezone.utc
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
LONG_RANGE = (-(2 ** 63), 2 ** 63 - 1)
INT_RANGE = (-(2 ** 31), 2 ** 31 - 1)


def log(message: str) -> None:
    sys.stderr.write("avro_records: {}\n".format(message))


class Invalid(Exception):
    """A value that does not fit its schema (the line is skipped)."""


# --- crmflow JSON -> what fastavro writes ------------------------------------------------------
#
# Mirrors crates/avro/src/convert.rs: the schema directs the walk; records take their fields by
# name and ignore other members (the "type" discriminator among them); a missing field takes its
# default, a missing or null one is null where the schema allows it; timestamp-millis longs are
# RFC 3339 strings (any offset); enums are strings; a union's branch is picked by the JSON
# value's kind in the same preference order, and handed to fastavro in its tuple notation
# (branch name, value) so that fastavro writes exactly that branch.

RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_rfc3339(text: str) -> dt.datetime:
    """An RFC 3339 timestamp as an aware datetime (sub-microsecond digits are dropped: the Avro
    field holds milliseconds anyway). Python 3.9's fromisoformat takes neither Z nor every
    fraction length, hence the regex."""
    m = RFC3339.fullmatch(text)
    if not m:
        raise ValueError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    if m.group(8):
        tz = UTC
    else:
        offset = dt.timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = dt.timezone(offset if m.group(9) == "+" else -offset)
    return dt.datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# Union branches to try per JSON kind, in order (as convert.rs's union_to_avro).
UNION_PREFERENCE = {
    "null": ["null"],
    "boolean": ["boolean"],
    "integer": ["long", "int", "double", "float"],
    "number": ["double", "float"],
    "string": ["string", "enum", "timestamp-millis"],
    "array": ["array"],
    "object": ["record", "map"],
}


class Converter:
    """Converts the JSON form of events to fastavro's input, for one schema file's names."""

    def __init__(self, schema: Dict[str, Any]) -> None:
        self.names: Dict[str, Any] = {}
        self._collect(schema, schema.get("namespace", ""))
        self.schema = schema

    @staticmethod
    def fullname(name: str, namespace: str) -> str:
        return name if "." in name or not namespace else "{}.{}".format(namespace, name)

    def _collect(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch, namespace)
        elif isinstance(schema, dict):
            t = schema.get("type")
            if t in ("record", "enum", "fixed"):
                full = self.fullname(schema["name"], schema.get("namespace", namespace))
                self.names[full] = (schema, full.rpartition(".")[0])
                namespace = full.rpartition(".")[0]
                for field in schema.get("fields", []):
                    self._collect(field["type"], namespace)
            elif t == "array":
                self._collect(schema["items"], namespace)
            elif t == "map":
                self._collect(schema["values"], namespace)
            elif isinstance(t, (dict, list)):
                self._collect(t, namespace)

    def resolve(self, schema: Any, namespace: str) -> Tuple[Any, str, str]:
        """(schema with references followed, its namespace, its branch kind/name)."""
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                return schema, namespace, schema
            full = self.fullname(schema, namespace)
            if full not in self.names and schema in self.names:
                full = schema
            if full not in self.names:
                raise Invalid("schema refers to undefined type {}".format(schema))
            return self.resolve(self.names[full][0], self.names[full][1])
        if isinstance(schema, dict):
            t = schema["type"]
            if t in ("record", "enum", "fixed"):
                full = self.fullname(schema["name"], schema.get("namespace", namespace))
                return schema, full.rpartition(".")[0], t
            if t == "long" and schema.get("logicalType") == "timestamp-millis":
                return schema, namespace, "timestamp-millis"
            if t in ("array", "map"):
                return schema, namespace, t
            return self.resolve(t, namespace)
        return schema, namespace, "union"

    def branch_name(self, schema: Any, namespace: str) -> str:
        """The name fastavro's tuple notation uses for a union branch."""
        resolved, ns, k = self.resolve(schema, namespace)
        if k in ("record", "enum", "fixed"):
            return self.fullname(resolved["name"], resolved.get("namespace", namespace))
        return "long" if k == "timestamp-millis" else k

    def convert(self, schema: Any, value: Any, path: str, namespace: str = "") -> Any:
        resolved, ns, k = self.resolve(schema, namespace)

        def mismatch() -> Invalid:
            return Invalid("{}: expected {}, got {}".format(path, k, describe(value)))

        if k == "null":
            if value is not None:
                raise mismatch()
            return None
        if k == "boolean":
            if not isinstance(value, bool):
                raise mismatch()
            return value
        if k in ("int", "long"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise mismatch()
            low, high = INT_RANGE if k == "int" else LONG_RANGE
            if not low <= value <= high:
                raise Invalid("{}: {} is out of range for an Avro {}".format(path, value, k))
            return value
        if k in ("float", "double"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise mismatch()
            return float(value)
        if k == "string":
            if not isinstance(value, str):
                raise mismatch()
            return value
        if k == "enum":
            if not isinstance(value, str) or value not in resolved["symbols"]:
                raise Invalid("{}: expected one of {}, got {}".format(
                    path, ", ".join(resolved["symbols"]), describe(value)))
            return value
        if k == "timestamp-millis":
            if not isinstance(value, str):
                raise Invalid("{}: expected an RFC 3339 timestamp string, got {}".format(
                    path, describe(value)))
            try:
                instant = parse_rfc3339(value)
                instant.astimezone(UTC)  # the UTC instant must exist too
            except (ValueError, OverflowError) as e:
                raise Invalid("{}: expected an RFC 3339 timestamp, got {}: {}".format(
                    path, describe(value), e)) from None
            return instant
        if k == "array":
            if not isinstance(value, list):
                raise mismatch()
            return [self.convert(resolved["items"], item, "{}[{}]".format(path, i), ns)
                    for i, item in enumerate(value)]
        if k == "map":
            if not isinstance(value, dict):
                raise mismatch()
            return {key: self.convert(resolved["values"], item, "{}.{}".format(path, key), ns)
                    for key, item in value.items()}
        if k == "record":
            if not isinstance(value, dict):
                raise mismatch()
            return self.record(resolved, value, path, ns)
        if k == "union":
            return self.union(resolved, value, path, ns)
        raise Invalid("{}: schema type {} is not supported".format(path, k))

    def record(self, schema: Dict[str, Any], value: Dict[str, Any], path: str,
               namespace: str) -> Dict[str, Any]:
        out = {}
        for field in schema["fields"]:
            name = field["name"]
            field_path = name if path == "(event)" else "{}.{}".format(path, name)
            given = value.get(name)
            if given is not None:
                out[name] = self.convert(field["type"], given, field_path, namespace)
            elif name not in value and "default" in field:
                out[name] = self.default(field["type"], field["default"], namespace)
            elif self.nullable(field["type"], namespace):
                out[name] = self.convert(field["type"], None, field_path, namespace)
            elif name in value:
                raise Invalid("{}: expected {}, got null".format(field_path, self.resolve(
                    field["type"], namespace)[2]))
            else:
                raise Invalid("{}: missing required field".format(field_path))
        return out

    def default(self, schema: Any, default: Any, namespace: str) -> Any:
        """A field default (Avro's JSON encoding): a union's is for its first branch."""
        if isinstance(schema, list):
            return (self.branch_name(schema[0], namespace), default)
        return default

    def nullable(self, schema: Any, namespace: str) -> bool:
        resolved, ns, k = self.resolve(schema, namespace)
        if k == "union":
            return any(self.resolve(b, ns)[2] == "null" for b in resolved)
        return k == "null"

    def union(self, branches: List[Any], value: Any, path: str, namespace: str) -> Any:
        first_error: Optional[Invalid] = None
        for wanted in UNION_PREFERENCE[kind(value)]:
            for branch in branches:
                if self.resolve(branch, namespace)[2] != wanted:
                    continue
                try:
                    converted = self.convert(branch, value, path, namespace)
                except Invalid as e:
                    first_error = first_error or e
                    continue
                return (self.branch_name(branch, namespace), converted)
        if first_error is not None:
            raise first_error
        raise Invalid("{}: expected one of {}, got {}".format(
            path, ", ".join(self.resolve(b, namespace)[2] for b in branches), describe(value)))


def describe(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value) if len(value) <= 40 else "a string of {} characters".format(len(value))
    if isinstance(value, (list, dict)):
        return "an " + kind(value)
    return json.dumps(value)


def load_schemas() -> Dict[str, Tuple[str, Converter]]:
    """Event type -> (the .avsc text, its converter), from schemas/*.avsc."""
    out = {}
    for path in sorted(glob.glob(os.path.join(SCHEMAS_DIR, "*.avsc"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        schema = json.loads(text)
        out[schema["name"].rpartition(".")[2]] = (text, Converter(schema))
    return out


# --- Avro (as fastavro reads it) -> crmflow JSON ----------------------------------------------

def format_timestamp(instant: dt.datetime) -> str:
    """UTC with milliseconds and Z, as crmflow writes (2024-05-01T10:00:00.000Z)."""
    u = instant.astimezone(UTC) if instant.tzinfo else instant.replace(tzinfo=UTC)
    return "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z".format(
        u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond // 1000)


def to_json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


# --- shared --------------------------------------------------------------------------------

def registry_client(args: argparse.Namespace) -> SchemaRegistryClient:
    conf: Dict[str, Any] = {"url": args.registry}
    if args.basic_auth:
        conf["basic.auth.user.info"] = args.basic_auth
    if args.bearer_token:
        # The client insists on a logical cluster with static tokens; a registry of ours
        # ignores it.
        conf.update({"bearer.auth.credentials.source": "STATIC_TOKEN",
                     "bearer.auth.token": args.bearer_token,
                     "bearer.auth.logical.cluster": "-"})
    return SchemaRegistryClient(conf)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", required=True, metavar="HOST:PORT",
                        help="Kafka bootstrap servers")
    parser.add_argument("--registry", required=True, metavar="URL", help="Schema Registry URL")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--basic-auth", metavar="USER:PASSWORD", help="registry Basic auth")
    auth.add_argument("--bearer-token", metavar="TOKEN", help="registry Bearer token")


# --- produce ------------------------------------------------------------------------------

class Line:
    """One input line that is an envelope."""

    def __init__(self, number: int, envelope: Dict[str, Any], topic: str) -> None:
        self.number = number
        self.topic = topic
        self.key: Optional[str] = envelope.get("key")
        self.timestamp: Optional[int] = envelope.get("timestamp")
        self.value = envelope.get("value")
        self.headers: Optional[Dict[str, str]] = envelope.get("headers")
        self.type = self.value.get("type") if isinstance(self.value, dict) else None


def envelope_problem(envelope: Any) -> Optional[str]:
    if not isinstance(envelope, dict):
        return "not a JSON object"
    if not isinstance(envelope.get("topic"), str) or not envelope["topic"]:
        return "no \"topic\" string"
    if envelope.get("key") is not None and not isinstance(envelope["key"], str):
        return "\"key\" is neither a string nor null"
    ts = envelope.get("timestamp")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or ts < 0):
        return "\"timestamp\" is not a non-negative integer"
    headers = envelope.get("headers")
    if headers is not None and not (isinstance(headers, dict)
                                    and all(isinstance(v, str) for v in headers.values())):
        return "\"headers\" is not an object of strings"
    return None


def read_lines(path: str, topic_map: Dict[str, str], skip_unmapped: bool,
               skipped: List[str]) -> List[Line]:
    lines = []
    with open(path, "rb") as f:
        data = f.read()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            envelope = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            skipped.append("line {}: not a JSON envelope ({})".format(number, e))
            continue
        problem = envelope_problem(envelope)
        if problem:
            skipped.append("line {}: not an envelope: {}".format(number, problem))
            continue
        if skip_unmapped and envelope["topic"] not in topic_map:
            skipped.append("line {}: topic {} is not in the topic map".format(
                number, envelope["topic"]))
            continue
        lines.append(Line(number, envelope, topic_map.get(envelope["topic"], envelope["topic"])))
    return lines


def produce(args: argparse.Namespace) -> int:
    topic_map: Dict[str, str] = {}
    for item in args.topic_map:
        default, sep, actual = item.partition("=")
        if not sep or not default or not actual:
            log("error: --topic-map wants DEFAULT=ACTUAL, got {!r}".format(item))
            return 2
        topic_map[default] = actual
    schemas = load_schemas()
    skipped: List[str] = []
    lines = read_lines(args.input, topic_map, args.skip_unmapped, skipped)

    # One event type per topic: the default subject <topic>-value; several: one subject per
    # record type, so that each type's schema evolves on its own.
    types: Dict[str, set] = {}
    for line in lines:
        if line.type in schemas:
            types.setdefault(line.topic, set()).add(line.type)
    strategy = {topic: topic_subject_name_strategy if len(ts) == 1
                else topic_record_subject_name_strategy for topic, ts in types.items()}

    registry = registry_client(args)
    serializers: Dict[Tuple[str, Callable], AvroSerializer] = {}
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        # In file order even across retries (a new topic's leader settling), as a connector.
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 60000,
    })
    errors: List[str] = []

    def delivered(err: Optional[KafkaError], msg: Any) -> None:
        if err is not None:
            errors.append("{} [{}]: {}".format(msg.topic(), msg.partition(), err))

    counts: "OrderedDict[str, int]" = OrderedDict()
    subjects: Dict[str, set] = {}
    try:
        for line in lines:
            if not isinstance(line.value, dict):
                skipped.append("line {}: \"value\" is not an object".format(line.number))
                continue
            if line.type not in schemas:
                skipped.append("line {}: unknown event type {}".format(
                    line.number, describe(line.type)))
                continue
            text, converter = schemas[line.type]
            try:
                datum = converter.record(converter.schema, line.value, "(event)",
                                         converter.schema.get("namespace", ""))
            except Invalid as e:
                skipped.append("line {}: {} does not fit its schema: {}".format(
                    line.number, line.type, e))
                continue
            strat = strategy[line.topic]
            serializer = serializers.get((line.type, strat))
            if serializer is None:
                serializer = serializers[(line.type, strat)] = AvroSerializer(
                    registry, text,
                    conf={"auto.register.schemas": True, "subject.name.strategy": strat})
            ctx = SerializationContext(line.topic, MessageField.VALUE)
            try:
                value = serializer(datum, ctx)
            except (ValueError, TypeError) as e:  # fastavro's word that the datum does not fit
                skipped.append("line {}: serializing {} failed: {}".format(line.number, line.type, e))
                continue
            record_name = converter.fullname(converter.schema["name"],
                                             converter.schema.get("namespace", ""))
            subjects.setdefault(line.topic, set()).add(strat(ctx, record_name))
            headers = [(k, v.encode("utf-8")) for k, v in (line.headers or {}).items()]
            while True:
                try:
                    producer.produce(
                        line.topic, value=value,
                        key=line.key.encode("utf-8") if line.key is not None else None,
                        timestamp=line.timestamp or 0, headers=headers or None,
                        on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
            producer.poll(0)
            counts[line.topic] = counts.get(line.topic, 0) + 1
    except SchemaRegistryError as e:
        log("error: schema registry at {}: {}".format(args.registry, e))
        producer.flush(30)
        return 1
    finally:
        registry.close()
    left = producer.flush(90)

    # Sorted by line number: envelope problems are found before value problems.
    for message in sorted(skipped, key=lambda m: int(m.split()[1].rstrip(":"))):
        log("skipped " + message)
    for topic, n in counts.items():
        log("sent {} record(s) to {} (subjects: {})".format(
            n, topic, ", ".join(sorted(subjects.get(topic, ())))))
    log("{} record(s) sent, {} line(s) skipped".format(sum(counts.values()), len(skipped)))
    if errors or left:
        for e in errors:
            log("error: delivery failed: " + e)
        if left:
            log("error: {} record(s) still undelivered after 90 s".format(left))
        return 1
    return 0


# --- consume ------------------------------------------------------------------------------

def list_offsets(admin: AdminClient, partitions: List[TopicPartition],
                 isolation: IsolationLevel) -> Dict[Tuple[str, int], int]:
    if not partitions:
        return {}
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions},
                                 isolation_level=isolation, request_timeout=30)
    return {(tp.topic, tp.partition): f.result(60).offset for tp, f in futures.items()}


def consume(args: argparse.Namespace) -> int:
    topics = [t for t in args.topics.split(",") if t]
    if not topics:
        log("error: --topics names no topic")
        return 2
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    metadata = admin.list_topics(timeout=30)
    partitions: List[TopicPartition] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            log("error: topic {} does not exist ({})".format(
                topic, meta.error if meta is not None else "not in the metadata"))
            return 1
        partitions += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
    # The end: each partition's high watermark now. Records committed later are not waited for;
    # records of transactions still open below it are (read_committed holds them back).
    ends = list_offsets(admin, partitions, IsolationLevel.READ_UNCOMMITTED)

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "avro-records-{}".format(os.getpid()),  # required, but never joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        # An end-of-partition event once the fetcher has passed everything below the end,
        # transaction markers included: see unfinished() below.
        "enable.partition.eof": True,
    })
    consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
    registry = registry_client(args)
    deserializer = AvroDeserializer(registry)
    records: Dict[Tuple[str, int], List[Tuple[int, Dict[str, Any]]]] = {}
    eof_at: Dict[Tuple[str, int], int] = {}
    deadline = time.monotonic() + args.timeout

    def unfinished(positions: Iterable[TopicPartition]) -> List[TopicPartition]:
        """The partitions not yet read to their end. A partition is done when the consumer's
        position (next offset for the application) reached the end, or when an end-of-partition
        event came at or past it: a transaction's commit or abort marker takes an offset but
        is never delivered, so after the last record of a transactional producer the position
        may stay below the high watermark, while the fetcher (which skips markers and aborted
        records) reports the end past them."""
        return [tp for tp in positions
                if ends[(tp.topic, tp.partition)] > 0
                and tp.offset < ends[(tp.topic, tp.partition)]
                and eof_at.get((tp.topic, tp.partition), -1) < ends[(tp.topic, tp.partition)]]

    try:
        while True:
            pending = unfinished(consumer.position(partitions))
            if not pending:
                break
            if time.monotonic() >= deadline:
                stable = list_offsets(admin, pending, IsolationLevel.READ_COMMITTED)
                log("error: not read to the end within {} s:".format(args.timeout))
                for tp in pending:
                    key = (tp.topic, tp.partition)
                    log("  {} [{}]: position {}, end {}, last stable offset {}{}".format(
                        tp.topic, tp.partition, tp.offset if tp.offset >= 0 else "none",
                        ends[key], stable[key],
                        " (a transaction is still open)" if stable[key] < ends[key] else ""))
                return 1
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof_at[(msg.topic(), msg.partition())] = msg.offset()
                    continue
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                log("consumer: {}".format(msg.error()))
                continue
            key = (msg.topic(), msg.partition())
            if msg.offset() >= ends[key]:
                continue  # produced after the start: not ours to print
            records.setdefault(key, []).append((msg.offset(), record_line(msg, deserializer, registry)))
    finally:
        consumer.close()
        registry.close()

    for tp in partitions:
        for _, line in sorted(records.get((tp.topic, tp.partition), []), key=lambda r: r[0]):
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    log("read {} record(s) from {}".format(sum(len(r) for r in records.values()), ", ".join(topics)))
    return 0


class Undecodable(Exception):
    """A record value that is not an event in Confluent Avro (not a registry outage)."""


def decode_value(raw: bytes, deserializer: AvroDeserializer,
                 registry: SchemaRegistryClient) -> Any:
    if len(raw) < 5 or raw[0] != 0:
        raise Undecodable("not in Confluent's wire format (magic byte 0, 4-byte schema id)")
    schema_id = struct.unpack(">I", raw[1:5])[0]
    # The writer schema first, by hand: an id the registry does not know makes the value
    # undecodable, while any other registry failure ends the run (it propagates). The
    # deserializer then finds the schema in the client's cache.
    try:
        writer = json.loads(registry.get_schema(schema_id).schema_str)
    except SchemaRegistryError as e:
        if e.http_status_code == 404:
            raise Undecodable("schema id {}: {}".format(schema_id, e)) from None
        raise
    try:
        # No SerializationContext: the subject is not needed to read, and a topic's subject
        # cannot be told from its name anyway when it carries several record types.
        decoded = deserializer(raw, None)
        if isinstance(decoded, dict) and isinstance(writer, dict) and "name" in writer:
            # The event type is the writer schema's record name.
            value: Any = OrderedDict([("type", writer["name"].rpartition(".")[2])])
            value.update(to_json(decoded))
        else:
            value = to_json(decoded)
        json.dumps(value, allow_nan=False)  # NaN and Infinity have no JSON form
    except Exception as e:  # whatever fastavro says of bytes that do not fit the schema
        raise Undecodable("{}: {}".format(type(e).__name__, e)) from None
    return value


def record_line(msg: Any, deserializer: AvroDeserializer,
                registry: SchemaRegistryClient) -> Dict[str, Any]:
    kind_, stamp = msg.timestamp()
    line: Dict[str, Any] = {
        "topic": msg.topic(),
        "key": msg.key().decode("utf-8", "replace") if msg.key() is not None else None,
        "timestamp": stamp if kind_ != TIMESTAMP_NOT_AVAILABLE else None,
    }
    raw = msg.value()
    try:
        if raw is None:
            line["value"] = None  # a tombstone
        else:
            line["value"] = decode_value(raw, deserializer, registry)
    except Undecodable as e:  # reported on the line, and reading goes on
        line["error"] = str(e)
        line["value_hex"] = raw.hex()
    headers = msg.headers()
    if headers:
        line["headers"] = {k: (v or b"").decode("utf-8", "replace") for k, v in headers}
    return line


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Produce crmflow events as Confluent Avro, or consume them back as JSON lines.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("produce", help="produce envelope JSON lines as Confluent Avro")
    add_common(p)
    p.add_argument("--topic-map", action="append", default=[], metavar="DEFAULT=ACTUAL",
                   help="produce lines of topic DEFAULT to ACTUAL (repeatable); others keep theirs")
    p.add_argument("--skip-unmapped", action="store_true",
                   help="skip lines whose topic --topic-map does not name")
    p.add_argument("--input", required=True, metavar="FILE.jsonl", help="envelope lines")
    c = commands.add_parser("consume", help="print Confluent Avro records as envelope JSON lines")
    add_common(c)
    c.add_argument("--topics", required=True, metavar="T1,T2,...", help="topics to read")
    c.add_argument("--timeout", type=float, default=120, metavar="SECONDS",
                   help="give up (exit 1) when not read to the end by then (default 120)")
    args = parser.parse_args(argv)
    try:
        return produce(args) if args.command == "produce" else consume(args)
    except KafkaException as e:
        log("error: kafka: {}".format(e))
        return 1
    except SchemaRegistryError as e:
        log("error: schema registry at {}: {}".format(args.registry, e))
        return 1
    except OSError as e:  # e.g. the input file
        log("error: {}".format(e))
        return 1
    except Exception as e:  # e.g. the registry unreachable (httpx's errors)
        log("error: {}: {}".format(type(e).__name__, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
