"""Tests registry_standin.py through confluent-kafka's own SchemaRegistryClient and Avro serdes,
and through the raw REST calls the Rust crate schema_registry_converter makes. No Kafka needed.

    py=$(deploy/scripts/python-venv.sh tests/interop/requirements.txt ~/.cache/crmflow/interop-venv)
    "$py" -m unittest discover -s tests/interop -p test_registry_standin.py -v
"""

import base64
import json
import os
import struct
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request
from typing import Any, Optional, Tuple

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_support import STANDIN, Standin, read_schema  # noqa: E402

USER_ASSIGNED = read_schema("UserAssignedToTeam")
PERSON_V1 = json.dumps({"type": "record", "name": "Person", "namespace": "t",
                        "fields": [{"name": "name", "type": "string"}]})
PERSON_V2 = json.dumps({"type": "record", "name": "Person", "namespace": "t",
                        "fields": [{"name": "name", "type": "string"},
                                   {"name": "age", "type": ["null", "long"], "default": None}]})


class StandinCase(unittest.TestCase):
    """Starts a stand-in per test (ids start at 1 each time) and shows its log on failure."""

    standin_args: Tuple[str, ...] = ()

    def setUp(self) -> None:
        self.standin = Standin(*self.standin_args)
        self.addCleanup(self.standin.stop)

    def run(self, result: Optional[unittest.TestResult] = None) -> Any:
        failures = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > failures:
            sys.stderr.write("\n--- stand-in log of {} ---\n{}".format(self.id(), self.standin.log()))
        self.standin.close()
        return out

    def client(self, **conf: Any) -> SchemaRegistryClient:
        client = SchemaRegistryClient({"url": self.standin.url, **conf})
        self.addCleanup(client.close)
        return client

    def http(self, method: str, path: str, body: Any = None,
             headers: Optional[dict] = None) -> Tuple[int, Any, str]:
        """A raw request: (status, decoded JSON body, content type)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.standin.url + path, data=data, method=method,
                                         headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response), response.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            return e.code, json.load(e), e.headers["Content-Type"]


class ClientTest(StandinCase):
    def test_register_lookup_get(self) -> None:
        client = self.client()
        id1 = client.register_schema("people-value", Schema(PERSON_V1, "AVRO"))
        self.assertEqual(id1, 1)
        # The same schema written differently, under another subject: the same global id.
        spaced = json.dumps(json.loads(PERSON_V1), indent=2, sort_keys=True)
        self.assertEqual(self.client().register_schema("other-value", Schema(spaced, "AVRO")), 1)
        id2 = client.register_schema("people-value", Schema(PERSON_V2, "AVRO"))
        self.assertEqual(id2, 2)
        # Registering again is idempotent (a fresh client, so its cache does not answer).
        self.assertEqual(self.client().register_schema("people-value", Schema(PERSON_V1, "AVRO")), 1)

        found = self.client().lookup_schema("people-value", Schema(PERSON_V2, "AVRO"))
        self.assertEqual((found.schema_id, found.version, found.subject), (2, 2, "people-value"))

        fetched = self.client().get_schema(1)
        self.assertEqual(json.loads(fetched.schema_str), json.loads(PERSON_V1))
        self.assertEqual(fetched.schema_type, "AVRO")

        latest = self.client().get_latest_version("people-value")
        self.assertEqual((latest.schema_id, latest.version), (2, 2))
        self.assertEqual(json.loads(latest.schema.schema_str), json.loads(PERSON_V2))
        first = self.client().get_version("people-value", 1)
        self.assertEqual((first.schema_id, first.version), (1, 1))

        self.assertEqual(self.client().get_versions("people-value"), [1, 2])
        self.assertEqual(sorted(self.client().get_subjects()), ["other-value", "people-value"])

    def test_not_found(self) -> None:
        client = self.client()
        client.register_schema("people-value", Schema(PERSON_V1, "AVRO"))
        with self.assertRaises(SchemaRegistryError) as caught:
            client.get_schema(99)
        self.assertEqual((caught.exception.http_status_code, caught.exception.error_code),
                         (404, 40403))
        self.assertEqual(caught.exception.error_message, "Schema 99 not found")
        with self.assertRaises(SchemaRegistryError) as caught:
            client.lookup_schema("people-value", Schema(PERSON_V2, "AVRO"))
        self.assertEqual(caught.exception.error_code, 40403)
        with self.assertRaises(SchemaRegistryError) as caught:
            client.lookup_schema("nobody-value", Schema(PERSON_V1, "AVRO"))
        self.assertEqual(caught.exception.error_code, 40401)
        with self.assertRaises(SchemaRegistryError) as caught:
            client.get_version("people-value", 7)
        self.assertEqual(caught.exception.error_code, 40402)
        with self.assertRaises(SchemaRegistryError) as caught:
            client.get_latest_version("nobody-value")
        self.assertEqual(caught.exception.error_code, 40401)

    def test_avro_round_trip(self) -> None:
        client = self.client()
        serializer = AvroSerializer(client, USER_ASSIGNED)
        ctx = SerializationContext("team.assignments", MessageField.VALUE)
        event = {"company_id": "acme", "user_id": "u1", "team_id": "oslo",
                 "changed_at": 1714557603000}
        data = serializer(event, ctx)
        assert data is not None
        # Confluent's wire format: magic byte 0, the schema id (big-endian), the Avro datum.
        self.assertEqual(data[0], 0)
        self.assertEqual(struct.unpack(">I", data[1:5])[0], 1)
        self.assertEqual(self.client().get_subjects(), ["team.assignments-value"])

        # A fresh client, so the writer schema is fetched by its id.
        decoded = AvroDeserializer(self.client())(data, ctx)
        assert decoded is not None
        self.assertEqual(decoded["team_id"], "oslo")
        self.assertEqual(int(decoded["changed_at"].timestamp() * 1000), 1714557603000)
        self.assertIn("GET /schemas/ids/1", self.standin.log())
        # The default subject name strategy asks for associations first (none: {topic}-value).
        self.assertIn('"GET /associations/resources/-/team.assignments?resourceType=topic'
                      '&associationType=value HTTP/1.1" 200', self.standin.log())


class BasicAuthTest(StandinCase):
    standin_args = ("--basic-auth", "alice:s3cret")

    def test_accepted_and_refused(self) -> None:
        good = self.client(**{"basic.auth.user.info": "alice:s3cret"})
        self.assertEqual(good.register_schema("p-value", Schema(PERSON_V1, "AVRO")), 1)
        self.assertEqual(good.get_subjects(), ["p-value"])
        for conf in ({"basic.auth.user.info": "alice:wrong"}, {}):
            with self.assertRaises(SchemaRegistryError) as caught:
                self.client(**conf).get_subjects()
            self.assertEqual((caught.exception.http_status_code, caught.exception.error_code),
                             (401, 40101))


class BearerAuthTest(StandinCase):
    standin_args = ("--bearer-token", "tok-123")

    def bearer(self, token: str) -> SchemaRegistryClient:
        return self.client(**{"bearer.auth.credentials.source": "STATIC_TOKEN",
                              "bearer.auth.token": token,
                              "bearer.auth.logical.cluster": "lsrc-test",
                              "bearer.auth.identity.pool.id": "pool-test"})

    def test_accepted_and_refused(self) -> None:
        self.assertEqual(self.bearer("tok-123").register_schema("p-value", Schema(PERSON_V1, "AVRO")), 1)
        with self.assertRaises(SchemaRegistryError) as caught:
            self.bearer("tok-999").get_subjects()
        self.assertEqual(caught.exception.error_code, 40101)
        status, body, _ = self.http("GET", "/subjects",
                                    headers={"Authorization": "Bearer tok-123"})
        self.assertEqual((status, body), (200, ["p-value"]))


class RestTest(StandinCase):
    """The calls schema_registry_converter 6 (blocking) makes, and error shapes."""

    standin_args = ("--basic-auth", "svc:pw")
    auth = {"Authorization": "Basic " + base64.b64encode(b"svc:pw").decode()}

    def test_rust_client_calls(self) -> None:
        # post_schema: `/subjects/{subject}/versions` with schemaType; subjects with `/` escaped.
        body = {"schema": USER_ASSIGNED, "schemaType": "AVRO"}
        status, answer, ctype = self.http("POST", "/subjects/t%2Fa-value/versions", body, self.auth)
        self.assertEqual((status, answer), (200, {"id": 1}))
        self.assertEqual(ctype, "application/vnd.schemaregistry.v1+json")
        # get_schema_by_id
        status, answer, _ = self.http("GET", "/schemas/ids/1?deleted=true", headers=self.auth)
        self.assertEqual((status, answer), (200, {"schema": USER_ASSIGNED}))
        # lookup (post for version)
        status, answer, _ = self.http("POST", "/subjects/t%2Fa-value?deleted=false", body, self.auth)
        self.assertEqual((status, answer["id"], answer["version"], answer["subject"]),
                         (200, 1, 1, "t/a-value"))
        status, answer, _ = self.http("GET", "/subjects/t%2Fa-value/versions/latest", headers=self.auth)
        self.assertEqual((status, answer["id"], answer["version"]), (200, 1, 1))
        # A non-AVRO schema carries its type.
        status, answer, _ = self.http("POST", "/subjects/j-value/versions",
                                      {"schema": '{"type":"object"}', "schemaType": "JSON"}, self.auth)
        self.assertEqual(answer, {"id": 2})
        status, answer, _ = self.http("GET", "/schemas/ids/2", headers=self.auth)
        self.assertEqual(answer, {"schema": '{"type":"object"}', "schemaType": "JSON"})

    def test_errors(self) -> None:
        self.assertEqual(self.http("GET", "/schemas/ids/5", headers=self.auth)[:2],
                         (404, {"error_code": 40403, "message": "Schema 5 not found"}))
        status, answer, _ = self.http("GET", "/config", headers=self.auth)
        self.assertEqual((status, answer["error_code"]), (404, 404))
        status, answer, _ = self.http("POST", "/subjects/x/versions", {"schema": "{not json"}, self.auth)
        self.assertEqual((status, answer["error_code"]), (422, 42201))
        status, answer, _ = self.http("GET", "/subjects")
        self.assertEqual((status, answer["error_code"]), (401, 40101))
        wrong = {"Authorization": "Basic " + base64.b64encode(b"svc:nope").decode()}
        self.assertEqual(self.http("GET", "/subjects", headers=wrong)[0], 401)


class LifecycleTest(unittest.TestCase):
    def test_exits_when_parent_is_gone(self) -> None:
        parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
        standin = subprocess.Popen([sys.executable, STANDIN, "--parent-pid", str(parent.pid)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertTrue(standin.stdout.readline().decode().startswith("http://127.0.0.1:"))
        parent.wait()  # reaped, so the pid is gone rather than a zombie
        started = time.monotonic()
        self.assertEqual(standin.wait(10), 0)
        self.assertLess(time.monotonic() - started, 5)
        standin.stdout.close()
        self.assertIn(b"is gone", standin.stderr.read())
        standin.stderr.close()

    def test_sigterm_exits_zero(self) -> None:
        standin = Standin()
        self.assertEqual(standin.stop(), 0)
        standin.close()


if __name__ == "__main__":
    unittest.main()
