#!/usr/bin/env python3
"""A corpus of real PDUs made by Synapse, and a checker of `mxconform pdu` against it.

    # Mode 1: make the corpus. Needs the test Synapse (harness/synapse/synapse.sh start) and
    # its virtualenv's python, which can import synapse.
    target/synapse/venv/bin/python harness/synapse/pdus.py make \
        --url http://127.0.0.1:18008 --db target/synapse/data/homeserver.db --out pdu/tests/data

    # Mode 2: check a build of the tool against a corpus. Plain python3, no synapse needed.
    python3 harness/synapse/pdus.py check --bin target/debug/mxconform --dir pdu/tests/data

`make` creates rooms of every room version 1..12 through the client-server API only (stdlib
urllib), fills each with a realistic set of events, then reads the events back from Synapse's
SQLite database and annotates each with what Synapse's own functions compute for it (event id,
redaction, canonical JSON, reference hash, content hash and signature checks). It writes:

    synapse-pdus.jsonl   one event per line, ordered by room version, then stream order
    tampered.jsonl       altered copies that a verifier must refuse
    synapse-key.json     Synapse's server key document (GET /_matrix/key/v2/server)
    README.md            what these are, which Synapse made them, how to remake them

`check` feeds the corpus to `mxconform pdu canonical|id|redact|verify` (JSON Lines on stdin,
one output line per input line; `verify` takes one PDU and exits non-zero naming the failing
check) and compares the answers with Synapse's.
"""

import argparse
import collections
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOM_VERSIONS = [str(v) for v in range(1, 13)]
HTTP_TIMEOUT = 30
DEFAULT_SHARED_SECRET = "mxconform-test-shared-secret"

# Text that exercises canonical JSON: non-ASCII, emoji (astral), quotes, backslash, newline,
# tab, control characters, a slash, U+2028, DEL and a combining accent.
TRICKY = (
    'Sujet: "quoted" \\ back\\slash, new\nline, tab\t, ctrl \u0001 \u001f, del \u007f, '
    "sep \u2028, slash </script>, caf\u00e9 / cafe\u0301, \u65e5\u672c\u8a9e, "
    "emoji \U0001F389\U0001F468\u200D\U0001F469\u200D\U0001F467"
)
# Keys whose code-point order differs from their UTF-16 order (U+FF5E vs U+1F600), an empty
# key, upper before lower case, a key with an accent.
TRICKY_KEYS = {
    "a": 1,
    "B": 2,
    "cl\u00e9": "valeur",
    "\uff5e": "fullwidth tilde",
    "\U0001F600": "grinning face",
    "": "empty key",
    "nested": {"z": [3, 2, 1], "a": {"\u00e4": True, "null": None, "false": False}},
    "max_safe": 9007199254740991,
    "min_safe": -9007199254740991,
    "zero": 0,
    "negative": -42,
    "text": TRICKY,
}


# --------------------------------------------------------------------------------------------
# Client-server API


class ApiError(Exception):
    def __init__(self, method, path, status, body):
        super().__init__(f"{method} {path}: HTTP {status}: {body}")
        self.status = status
        self.body = body


class Api:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def call(self, method, path, body=None, token=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        for attempt_no in range(5):
            try:
                with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                    raw = resp.read()
                    return json.loads(raw) if raw else {}
            except urllib.error.HTTPError as e:
                raw = e.read()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = raw.decode("utf-8", "replace")
                if e.code == 429 and attempt_no < 4 and isinstance(parsed, dict):
                    time.sleep(min(parsed.get("retry_after_ms", 500), 5000) / 1000)
                    continue
                raise ApiError(method, path, e.code, parsed) from None

    def wait_ready(self, seconds=60):
        """The server key document, once the server answers (a freshly started Synapse)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self.call("GET", "/_matrix/key/v2/server")
            except (OSError, ApiError) as e:
                if time.monotonic() > deadline:
                    sys.exit(f"{self.base} does not serve its key document: {e}")
                time.sleep(0.5)


def q(s):
    return urllib.parse.quote(s, safe="")


class User:
    def __init__(self, api, user_id, token):
        self.api = api
        self.user_id = user_id
        self.token = token
        self.txn = 0

    def call(self, method, path, body=None):
        return self.api.call(method, "/_matrix/client/v3" + path, body, self.token)

    def create_room(self, **body):
        return self.call("POST", "/createRoom", body)["room_id"]

    def state(self, room, typ, content, state_key=""):
        return self.call("PUT", f"/rooms/{q(room)}/state/{q(typ)}/{q(state_key)}", content)[
            "event_id"
        ]

    def send(self, room, typ, content):
        self.txn += 1
        txn = f"pdus-{time.time_ns()}-{self.txn}"
        return self.call("PUT", f"/rooms/{q(room)}/send/{q(typ)}/{txn}", content)["event_id"]

    def redact(self, room, event_id, reason=None):
        self.txn += 1
        txn = f"pdus-{time.time_ns()}-{self.txn}"
        body = {} if reason is None else {"reason": reason}
        return self.call("PUT", f"/rooms/{q(room)}/redact/{q(event_id)}/{txn}", body)["event_id"]

    def join(self, room, reason=None):
        body = {} if reason is None else {"reason": reason}
        return self.call("POST", f"/join/{q(room)}", body)["room_id"]

    def knock(self, room, reason=None):
        body = {} if reason is None else {"reason": reason}
        return self.call("POST", f"/knock/{q(room)}", body)["room_id"]

    def leave(self, room, reason=None):
        body = {} if reason is None else {"reason": reason}
        self.call("POST", f"/rooms/{q(room)}/leave", body)

    def membership(self, action, room, target, reason=None):
        body = {"user_id": target.user_id}
        if reason is not None:
            body["reason"] = reason
        self.call("POST", f"/rooms/{q(room)}/{action}", body)

    def upgrade(self, room, new_version, **extra):
        body = {"new_version": new_version, **extra}
        return self.call("POST", f"/rooms/{q(room)}/upgrade", body)["replacement_room"]


def register(api, localpart, shared_secret):
    """Registers a user with m.login.dummy; falls back to shared-secret registration."""
    password = "pdus-" + secrets.token_hex(8)
    body = {"username": localpart, "password": password, "inhibit_login": False}
    try:
        try:
            resp = api.call("POST", "/_matrix/client/v3/register", body)
        except ApiError as e:
            if e.status != 401 or not isinstance(e.body, dict):
                raise
            body["auth"] = {"type": "m.login.dummy", "session": e.body.get("session")}
            resp = api.call("POST", "/_matrix/client/v3/register", body)
    except ApiError as first:
        if not shared_secret:
            raise
        try:
            nonce = api.call("GET", "/_synapse/admin/v1/register")["nonce"]
        except ApiError:
            raise first from None
        # The MAC is over nonce, user, password and "notadmin", NUL-separated.
        message = b"\x00".join(p.encode("utf-8") for p in (nonce, localpart, password, "notadmin"))
        mac = hmac.new(shared_secret.encode("utf-8"), message, hashlib.sha1).hexdigest()
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac}
        resp = api.call("POST", "/_synapse/admin/v1/register", body)
    return User(api, resp["user_id"], resp["access_token"])


# --------------------------------------------------------------------------------------------
# The scenario: what happens in the rooms of one room version


class Notes:
    """What Synapse refused (or accepted) that is worth recording, per room version."""

    def __init__(self):
        self.lines = []

    def add(self, version, what, outcome):
        self.lines.append((int(version), what, outcome))


def attempt(notes, version, what, fn, expect_refusal=False):
    """Runs an API call whose refusal is an outcome to record, not an error."""
    try:
        result = fn()
    except ApiError as e:
        code = e.body.get("errcode") if isinstance(e.body, dict) else None
        err = e.body.get("error") if isinstance(e.body, dict) else e.body
        notes.add(version, what, f"refused: HTTP {e.status} {code}: {err}")
        return None
    notes.add(version, what, "accepted" + (" (a refusal was expected)" if expect_refusal else ""))
    return result


def populate(version, users, notes, available):
    """Makes the rooms of one room version; returns every room id touched (incl. upgrades)."""
    alice, bob, carol, dave = users
    v = int(version)
    rooms = []

    creation_content = {"m.federate": True, "org.mxconform.note": "cr\u00e9ation \U0001F3E0"}
    # v12 (MSC4289): creators have unlimited power and must not be listed in power levels.
    pl_users = {bob.user_id: 50}
    if v >= 12:
        creation_content["additional_creators"] = [dave.user_id]
    else:
        pl_users[alice.user_id] = 100

    main = alice.create_room(
        room_version=version,
        preset="private_chat",
        name=f"Salle v{version} \u00e0 \u00e9preuve \U0001F9EA \"quoted\"",
        topic="first topic",
        creation_content=creation_content,
        power_level_content_override={
            "events": {"m.room.name": 50, "m.room.topic": 0, "org.mxconform.custom": 10},
            "notifications": {"room": 50},
            "users": pl_users,
        },
        initial_state=[
            {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
        ],
    )
    rooms.append(main)

    alice.state(main, "m.room.topic", {"topic": TRICKY, "org.mxconform.keys": TRICKY_KEYS})
    alice.state(main, "m.room.history_visibility", {"history_visibility": "joined"})
    alice.membership("invite", main, bob, reason="come in \U0001F44B")
    bob.join(main)
    alice.state(main, "m.room.join_rules", {"join_rule": "public"})
    carol.join(main, reason="hello")
    first = alice.send(main, "m.room.message", {"msgtype": "m.text", "body": "Hello, world! \U0001F30D"})
    bob_msg = bob.send(
        main,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "**bold** & <tags> \"q\"",
            "format": "org.matrix.custom.html",
            "formatted_body": "<b>bold</b> &amp; &lt;tags&gt; &quot;q&quot;",
        },
    )
    carol.send(main, "m.room.message", {"msgtype": "m.emote", "body": "waves \u270B"})
    alice.send(main, "m.room.message", {"msgtype": "m.notice", "body": TRICKY, "org.mxconform.keys": TRICKY_KEYS})
    alice.send(
        main,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* Hello, edited world! \U0001F30E",
            "m.new_content": {"msgtype": "m.text", "body": "Hello, edited world! \U0001F30E"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": first},
        },
    )
    bob.send(main, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "\U0001F44D"}})
    bob.send(
        main,
        "m.room.message",
        {"msgtype": "m.text", "body": "a reply", "m.relates_to": {"m.in_reply_to": {"event_id": first}}},
    )
    custom = alice.state(
        main,
        "org.mxconform.custom",
        {"mine": True, "list": [1, "two", {"z": 1, "a": 2}], "keys": TRICKY_KEYS},
        state_key=alice.user_id,
    )
    alice.state(main, "org.mxconform.custom", {"empty state key": ""})
    alice.membership("invite", main, dave)
    carol.leave(main, reason="bye \U0001F44B")
    alice.membership("kick", main, bob, reason="kicked for testing \u2702")
    bob.join(main)
    alice.membership("ban", main, carol, reason="banned for testing \U0001F6AB")
    alice.membership("unban", main, carol, reason="forgiven")
    alice.redact(main, bob_msg, reason="redacted for testing")
    alice.redact(main, custom)
    alice.state(
        main,
        "m.room.power_levels",
        {
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "events_default": 0,
            "state_default": 50,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.tombstone": 100,
                "m.reaction": 0,
                "org.mxconform.custom": 10,
            },
            "notifications": {"room": 20},
            "users": pl_users,
        },
    )
    alice.state(main, "m.room.name", {"name": f"Renamed v{version} \u2014 \U0001F4DB"})

    # Numbers outside canonical JSON: Synapse refuses them in v6+ (strict canonical JSON).
    old = v <= 5
    attempt(
        notes, version, "state content with a float {\"f\": 1.5}",
        lambda: alice.state(main, "org.mxconform.numbers", {"f": 1.5}, state_key="float"),
        expect_refusal=not old,
    )
    attempt(
        notes, version, "state content with a large integer {\"big\": 9007199254740993}",
        lambda: alice.state(main, "org.mxconform.numbers", {"big": 9007199254740993}, state_key="big"),
        expect_refusal=not old,
    )
    if old:
        attempt(
            notes, version,
            "message with {\"f\": 1.5, \"small\": 0.1, \"exp\": 1e300, \"big\": 9007199254740993, \"neg\": -9007199254740993}",
            lambda: alice.send(
                main,
                "m.room.message",
                {"msgtype": "m.text", "body": "numbers", "f": 1.5, "big": 9007199254740993,
                 "neg": -9007199254740993, "exp": 1e300, "small": 0.1},
            ),
        )

    if v >= 7:
        # Knocking: bob knocks and is let in (invite, join); carol knocks and is refused (kick).
        knock_room = alice.create_room(
            room_version=version,
            preset="private_chat",
            name="Knock knock",
            initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        )
        rooms.append(knock_room)
        bob.knock(knock_room, reason="may I come in?")
        carol.knock(knock_room)
        alice.membership("invite", knock_room, bob)
        bob.join(knock_room)
        alice.membership("kick", knock_room, carol, reason="not today")
        bob.send(knock_room, "m.room.message", {"msgtype": "m.text", "body": "in through a knock"})

    if v >= 8:
        # Restricted: members of the main room may join; Synapse adds
        # join_authorised_via_users_server to bob's join. carol (not a member) is refused.
        allow = [{"type": "m.room_membership", "room_id": main}]
        restricted = alice.create_room(
            room_version=version,
            preset="private_chat",
            name="Members of the main room only",
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "restricted", "allow": allow}}
            ],
        )
        rooms.append(restricted)
        bob.join(restricted)
        bob.send(restricted, "m.room.message", {"msgtype": "m.text", "body": "in through the allow list"})
        attempt(notes, version, "restricted join by a user not in the allowed room",
                lambda: carol.join(restricted), expect_refusal=True)

    if v >= 10:
        kr = alice.create_room(
            room_version=version,
            preset="private_chat",
            name="Knock or be a member",
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "",
                 "content": {"join_rule": "knock_restricted", "allow": [{"type": "m.room_membership", "room_id": main}]}}
            ],
        )
        rooms.append(kr)
        bob.join(kr)
        carol.knock(kr, reason="not a member, knocking")

    # The upgrade: tombstone in the old room, a new room (of the next version) whose create
    # event names its predecessor. Its events belong to the next version's group.
    target = str(v + 1) if str(v + 1) in available else version
    extra = {}
    if int(target) >= 12:
        extra["additional_creators"] = [dave.user_id]
    new_room = alice.upgrade(main, target, **extra)
    rooms.append(new_room)
    alice.send(new_room, "m.room.message", {"msgtype": "m.text", "body": f"upgraded from v{version}"})
    return rooms


# --------------------------------------------------------------------------------------------
# Synapse's own computations


def synapse_tools():
    """Imports the Synapse functions used to annotate the corpus (fails clearly without)."""
    try:
        from importlib.metadata import version as distribution_version

        from canonicaljson import encode_canonical_json
        from signedjson.key import decode_verify_key_bytes
        from unpaddedbase64 import decode_base64, encode_base64

        from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
        from synapse.crypto.event_signing import (
            check_event_content_hash,
            compute_content_hash,
            compute_event_reference_hash,
        )
        from synapse.events import make_event_from_dict
        from synapse.federation.federation_base import _check_sigs_on_pdu
    except ImportError as e:
        sys.exit(f"make needs Synapse's python (target/synapse/venv/bin/python): {e}")
    try:  # Synapse >= 1.14x: the redaction algorithm moved to Rust
        from synapse.synapse_rust.events import redact_event_dict as prune
        prune_name = "synapse.synapse_rust.events.redact_event_dict"
    except ImportError:
        from synapse.events.utils import prune_event_dict as prune
        prune_name = "synapse.events.utils.prune_event_dict"
    return dict(
        version=distribution_version("matrix-synapse"),
        encode_canonical_json=encode_canonical_json,
        decode_verify_key_bytes=decode_verify_key_bytes,
        decode_base64=decode_base64,
        encode_base64=encode_base64,
        KNOWN_ROOM_VERSIONS=KNOWN_ROOM_VERSIONS,
        check_event_content_hash=check_event_content_hash,
        compute_content_hash=compute_content_hash,
        compute_event_reference_hash=compute_event_reference_hash,
        make_event_from_dict=make_event_from_dict,
        check_sigs_on_pdu=_check_sigs_on_pdu,
        prune=prune,
        prune_name=prune_name,
    )


class StaticKeyring:
    """Stands in for Synapse's Keyring when its `_check_sigs_on_pdu` asks whether an event is
    signed by a server: the keys come from the server key document, nothing is fetched. As
    Synapse's Keyring does, it accepts when a signature by one of the server's known keys
    verifies over the redacted event, and fails when none of the signing keys is known."""

    def __init__(self, tools, keys):
        self.tools = tools
        self.keys = keys  # {server: {key_id: VerifyKey}}

    async def verify_event_for_server(self, server_name, event, _valid_until):
        from signedjson.sign import verify_signed_json

        sigs = event.signatures
        if server_name not in sigs:
            raise ValueError(f"not signed by {server_name}")
        known = self.keys.get(server_name, {})
        key_ids = [k for k in sigs[server_name] if k in known]
        if not key_ids:
            raise ValueError(f"no known key among {sorted(sigs[server_name])} for {server_name}")
        redacted = self.tools["prune"](event.room_version, event.get_pdu_json())
        for key_id in key_ids:
            verify_signed_json(redacted, server_name, known[key_id])


def verify_keys_from(tools, key_doc):
    keys = {}
    server = key_doc["server_name"]
    for key_id, entry in list(key_doc.get("verify_keys", {}).items()) + list(
        key_doc.get("old_verify_keys", {}).items()
    ):
        raw = tools["decode_base64"](entry["key"])
        keys.setdefault(server, {})[key_id] = tools["decode_verify_key_bytes"](key_id, raw)
    return keys


def annotate(tools, keyring, room_version, pdu_dict, rejected=None, internal_metadata=None, format_version=None):
    """Everything Synapse computes for one PDU."""
    import asyncio

    rv = tools["KNOWN_ROOM_VERSIONS"][room_version]
    event = tools["make_event_from_dict"](pdu_dict, rv, internal_metadata or {}, rejected)
    pdu = event.get_pdu_json()
    # get_pdu_json() puts `unsigned` (age, prev_content, replaces_state, invite/knock room
    # state...) on the PDU: it changes with the clock and is no part of hashes, signatures or
    # ids. Dropped so that the corpus is stable.
    pdu.pop("unsigned", None)
    event = tools["make_event_from_dict"](pdu, rv, internal_metadata or {}, rejected)
    _, ref = tools["compute_event_reference_hash"](event)
    try:
        content_ok = bool(tools["check_event_content_hash"](event))
    except Exception:  # a malformed `hashes` raises
        content_ok = False
    try:
        asyncio.run(tools["check_sigs_on_pdu"](keyring, rv, event))
        sigs_ok = True
    except Exception:
        sigs_ok = False
    return {
        "room_version": room_version,
        "event_id": event.event_id,
        "pdu": pdu,
        "redacted": tools["prune"](rv, pdu),
        "canonical": tools["encode_canonical_json"](pdu).decode("utf-8"),
        "reference_hash": tools["encode_base64"](ref),
        "content_hash_ok": content_ok,
        "signatures_ok": sigs_ok,
        "rejected": rejected,
        "format_version": format_version,
    }


def read_events(db_path, room_ids):
    """Every event of the rooms, with its room version, in stream order."""
    conn = sqlite3.connect(f"file:{os.path.abspath(db_path)}?mode=ro", uri=True, timeout=30)
    try:
        marks = ",".join("?" * len(room_ids))
        versions = dict(
            conn.execute(f"SELECT room_id, room_version FROM rooms WHERE room_id IN ({marks})", room_ids)
        )
        rows = conn.execute(
            f"""SELECT e.stream_ordering, e.event_id, e.room_id, j.json, j.format_version,
                       j.internal_metadata, COALESCE(r.reason, e.rejection_reason)
                  FROM events e JOIN event_json j ON j.event_id = e.event_id
                  LEFT JOIN rejections r ON r.event_id = e.event_id
                 WHERE e.room_id IN ({marks})
                 ORDER BY e.stream_ordering""",
            room_ids,
        ).fetchall()
    finally:
        conn.close()
    return versions, rows


def tamper_all(tools, keyring, corpus, problems):
    """Altered copies of real events that a verifier must refuse."""

    def pick(version, pred):
        for rec in corpus:
            if rec["room_version"] == version and pred(rec["pdu"]):
                return rec
        return None

    def is_message(p):
        return p["type"] == "m.room.message" and isinstance(p["content"].get("body"), str)

    def is_join_rules(p):
        return p["type"] == "m.room.join_rules"

    def rehash(rv_id, pdu):
        """Gives the altered PDU a correct content hash, so that only its signature fails."""
        name, digest = tools["compute_content_hash"](pdu, hashlib.sha256)
        pdu["hashes"] = {name: tools["encode_base64"](digest)}

    out = []

    def add(version, pred, what, expect, change):
        rec = pick(version, pred)
        if rec is None:
            return
        pdu = json.loads(json.dumps(rec["pdu"]))
        change(version, pdu)
        t = annotate(tools, keyring, version, pdu, None, None, rec["format_version"])
        t["tamper"] = f"{what} (of {rec['event_id']})"
        t["expect"] = expect
        # Synapse's own checks must agree with the expectation.
        want = (False, True) if expect == "hash" else (True, False)
        if (t["content_hash_ok"], t["signatures_ok"]) != want:
            problems.append(
                f"tampered {t['tamper']}: Synapse says content hash ok {t['content_hash_ok']}, "
                f"signatures ok {t['signatures_ok']}; expected the {expect} check alone to fail"
            )
        out.append(t)

    def body(_, pdu):
        pdu["content"]["body"] += " (altered)"

    def sender(v, pdu):
        pdu["sender"] = "@" + "mallory" + ":" + pdu["sender"].split(":", 1)[1]
        rehash(v, pdu)

    def typ(v, pdu):
        pdu["type"] = "m.room.notice.altered"
        rehash(v, pdu)

    def join_rule(v, pdu):
        pdu["content"]["join_rule"] = "public" if pdu["content"]["join_rule"] != "public" else "invite"
        rehash(v, pdu)

    def unsigned(_, pdu):
        pdu["signatures"] = {}

    def unknown_key(_, pdu):
        server = sorted(pdu["signatures"])[0]
        sig = pdu["signatures"][server].popitem()[1]
        pdu["signatures"][server]["ed25519:unknown_key"] = sig

    def origin_ts(v, pdu):
        pdu["origin_server_ts"] += 1
        rehash(v, pdu)

    for version in ("1", "3", "6", "12"):
        add(version, is_message, "message body changed, content hash left as it was", "hash", body)
        add(version, is_message, "sender changed to another user of the same server, content hash recomputed", "signature", sender)
        add(version, is_message, "type changed, content hash recomputed", "signature", typ)
        add(version, is_message, "signatures removed", "signature", unsigned)
        add(version, is_message, "signature moved to an unknown key id", "signature", unknown_key)
    for version in ("4", "11"):
        add(version, is_join_rules, "join_rule (kept by redaction) changed, content hash recomputed", "signature", join_rule)
        add(version, is_message, "origin_server_ts changed, content hash recomputed", "signature", origin_ts)
    return out


def make(args):
    tools = synapse_tools()
    started = time.monotonic()
    api = Api(args.url)
    key_doc = api.wait_ready()
    keyring = StaticKeyring(tools, verify_keys_from(tools, key_doc))

    tag = secrets.token_hex(3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        users = list(
            pool.map(lambda n: register(api, f"pdus_{tag}_{n}", args.shared_secret), ["alice", "bob", "carol", "dave"])
        )
    notes = Notes()
    wanted = [v.strip() for v in args.versions.split(",")] if args.versions else ROOM_VERSIONS
    caps = users[0].call("GET", "/capabilities").get("capabilities", {})
    available = caps.get("m.room_versions", {}).get("available", {})
    versions = [v for v in wanted if v in available and v in tools["KNOWN_ROOM_VERSIONS"]]
    for v in wanted:
        if v not in versions:
            notes.add(v, "room version", "not supported by this Synapse: skipped")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        room_lists = list(pool.map(lambda v: populate(v, users, notes, available), versions))
    made = time.monotonic()
    rooms = sorted({r for rl in room_lists for r in rl})

    room_versions, rows = read_events(args.db, rooms)
    missing = [r for r in rooms if r not in room_versions]
    if missing:
        sys.exit(f"rooms not in {args.db}: {missing} (is it the database of {args.url}?)")
    corpus = []
    problems = []
    for stream, event_id, room_id, raw, fmt, meta, rejected in rows:
        version = room_versions[room_id]
        rv = tools["KNOWN_ROOM_VERSIONS"][version]
        if fmt != rv.event_format:
            problems.append(f"{event_id}: format_version {fmt}, room version {version} has {rv.event_format}")
        rec = annotate(tools, keyring, version, json.loads(raw), rejected, json.loads(meta), fmt)
        if rec["event_id"] != event_id:
            problems.append(f"{event_id}: Synapse computes the id {rec['event_id']}")
        if not rec["content_hash_ok"] or not rec["signatures_ok"]:
            problems.append(f"{event_id}: content hash ok {rec['content_hash_ok']}, signatures ok {rec['signatures_ok']}")
        rec["_order"] = (int(version), stream)
        corpus.append(rec)
    corpus.sort(key=lambda r: r["_order"])
    for rec in corpus:
        del rec["_order"]
    tampered = tamper_all(tools, keyring, corpus, problems)
    elapsed = time.monotonic() - started

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "synapse-pdus.jsonl"), "w", encoding="utf-8") as f:
        for rec in corpus:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    with open(os.path.join(args.out, "tampered.jsonl"), "w", encoding="utf-8") as f:
        for rec in tampered:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    with open(os.path.join(args.out, "synapse-key.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(key_doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(tools, corpus, tampered, notes, key_doc))

    per_version = collections.Counter(r["room_version"] for r in corpus)
    print(
        f"pdus: {len(corpus)} events ("
        + ", ".join(f"v{v} {n}" for v, n in sorted(per_version.items(), key=lambda x: int(x[0])))
        + f"), {len(tampered)} tampered, Synapse {tools['version']}; "
        f"API {made - started:.1f} s, total {elapsed:.1f} s -> {args.out}"
    )
    for p in problems:
        print("problem:", p, file=sys.stderr)
    return 1 if problems else 0


def readme(tools, corpus, tampered, notes, key_doc):
    per_version = collections.Counter(r["room_version"] for r in corpus)
    kinds = collections.Counter()
    for r in corpus:
        p = r["pdu"]
        kind = p["type"]
        if p["type"] == "m.room.member":
            kind += " " + p["content"].get("membership", "?")
            if "join_authorised_via_users_server" in p["content"]:
                kind += " (join_authorised_via_users_server)"
        kinds[kind] += 1
    lines = [
        "# Real PDUs made by Synapse",
        "",
        f"Made by Synapse {tools['version']} with `harness/synapse/pdus.py make`, through the",
        "client-server API of the test Synapse (`harness/synapse/synapse.sh start`), then read from",
        "its SQLite database and annotated with what Synapse's own code computes. Remake with:",
        "",
        "    harness/synapse/synapse.sh start",
        "    target/synapse/venv/bin/python harness/synapse/pdus.py make \\",
        "        --url http://127.0.0.1:18008 --db target/synapse/data/homeserver.db --out pdu/tests/data",
        "",
        "Check a build of `mxconform` against it with:",
        "",
        "    python3 harness/synapse/pdus.py check --bin target/debug/mxconform --dir pdu/tests/data",
        "",
        "which feeds each room version's PDUs (JSON Lines, not canonical: keys in Synapse's order,",
        "`\\u` escapes) to `mxconform pdu id|redact --room-version V` and `mxconform pdu canonical`",
        "(one output line per input line: the event id; the redacted PDU as canonical JSON; the",
        "canonical JSON), and each PDU alone to `mxconform pdu verify --room-version V --key SERVER",
        "KEY_ID BASE64_KEY` with the key of `synapse-key.json` (exit 0 when the content hash and",
        "every required signature hold); every tampered copy must be refused, naming the check",
        "(`hash` or `signature`) that failed.",
        "",
        "Every run makes new users, rooms, timestamps and (with a fresh Synapse) a new signing key, so",
        "a remade corpus differs throughout; the files of one run belong together.",
        "",
        "## Files",
        "",
        "`synapse-pdus.jsonl`: one event per line, ordered by room version, then Synapse's stream",
        "order. Fields:",
        "",
        "- `room_version`: `rooms.room_version` of the event's room.",
        "- `event_id`: Synapse's event id (`Event.event_id`: the `event_id` field in v1 and v2, the",
        "  reference hash after `$` from v3, standard base64 in v3 and URL-safe from v4).",
        "- `pdu`: the event as sent over federation, `Event.get_pdu_json()` of",
        "  `make_event_from_dict(event_json.json, room_version)`, **without `unsigned`** (it holds",
        "  `age` and other per-server, per-moment data, and is covered by no hash or signature).",
        f"- `redacted`: `{tools['prune_name']}(room_version, pdu)`, the redaction",
        "  algorithm of the room version applied to the whole PDU (so `signatures` and `hashes` are kept).",
        "- `canonical`: `canonicaljson.encode_canonical_json(pdu)` as a string.",
        "- `reference_hash`: `synapse.crypto.event_signing.compute_event_reference_hash(event)`, sha256",
        "  of the canonical redacted event without `signatures` and `unsigned`, unpadded standard base64.",
        "- `content_hash_ok`: `synapse.crypto.event_signing.check_event_content_hash(event)`.",
        "- `signatures_ok`: `synapse.federation.federation_base._check_sigs_on_pdu` (which servers must",
        "  sign: the sender's, in v1/v2 the event id's, and the authorising server of a restricted",
        "  join) over a keyring holding only the keys of `synapse-key.json`; signatures checked with",
        "  `signedjson.sign.verify_signed_json` on the redacted event, as Synapse's keyring does.",
        "- `rejected`: the reason from Synapse's `rejections` table, or null.",
        "",
        "`tampered.jsonl`: altered copies of corpus events, the same fields (computed by Synapse for the",
        "altered PDU), plus `tamper` (what was changed) and `expect`: `hash` when only the content",
        "hash fails (a change redaction removes), `signature` when the content hash was recomputed",
        "so that only a signature fails. A verifier must refuse every one.",
        "",
        "`synapse-key.json`: the server's key document, `GET /_matrix/key/v2/server`"
        f" (server `{key_doc.get('server_name')}`, keys {', '.join(sorted(key_doc.get('verify_keys', {})))}).",
        "",
        "## Counts",
        "",
        f"{len(corpus)} events, {len(tampered)} tampered copies.",
        "",
        "| room version | events |",
        "|---|---|",
    ]
    lines += [f"| {v} | {n} |" for v, n in sorted(per_version.items(), key=lambda x: int(x[0]))]
    lines += ["", "Event kinds over all room versions:", "", "| kind | events |", "|---|---|"]
    lines += [f"| `{k}` | {n} |" for k, n in sorted(kinds.items())]
    pairs = collections.Counter()
    for r in corpus:
        if r["room_version"] in ("1", "2"):
            for field in ("prev_events", "auth_events"):
                for ref in r["pdu"].get(field, []):
                    pairs["empty" if ref[1] == {} else "sha256"] += 1
    floats = [r for r in corpus if any(isinstance(x, float) for x in walk(r["pdu"]))]
    lines += [
        "",
        "## Worth knowing",
        "",
        "- v1 and v2 PDUs carry `event_id`; from v3 they do not (the id is the reference hash). v12",
        "  create events carry no `room_id` (the room id is the create event's id with `!`).",
        "- v1 and v2 `prev_events` and `auth_events` are `[event_id, {\"sha256\": reference hash}]`",
        f"  pairs; Synapse leaves the hash object empty (`{{}}`) for events it made in one batch",
        f"  (createRoom's initial state): {pairs['empty']} empty, {pairs['sha256']} with a sha256 here.",
        "- No PDU has `origin` or `prev_state`: today's Synapse no longer writes them.",
        "- `Event.get_pdu_json()` returns `unsigned` too (`age_ts`, which `get_pdu_json(now)` turns",
        "  into `age`; `replaces_state`; `invite_room_state` / `knock_room_state`). Synapse's",
        "  redaction keeps `unsigned.age_ts` and `unsigned.replaces_state`, which the spec's algorithm",
        "  does not mention; dropping `unsigned` from the corpus keeps that out of the comparison.",
        f"- Rooms v1 to v5 accept floats and integers beyond 2^53 - 1 ({len(floats)} events here hold",
        "  floats). Synapse's canonical JSON writes a float as Python's `repr`: `1.5`, `0.1`,",
        "  `1e+300` (not `1e300`); content hashes, signatures and (v3+) event ids depend on it.",
        "",
        "## What Synapse accepted and refused",
        "",
        "Numbers outside canonical JSON (floats, integers beyond 2^53 - 1), sent through the",
        "client-server API, and a restricted join by a user outside the allowed room:",
        "",
        "| room version | attempt | outcome |",
        "|---|---|---|",
    ]
    lines += [f"| {v} | {what} | {outcome.replace('|', '/')} |" for v, what, outcome in sorted(notes.lines)]
    lines.append("")
    return "\n".join(lines)


def walk(value):
    """Every scalar inside a JSON value."""
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)
    else:
        yield value


# --------------------------------------------------------------------------------------------
# Mode 2: check a tool against a corpus


def canonical(value):
    """Canonical JSON (the Matrix spec's): sorted keys, no whitespace, UTF-8, shortest escapes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def wire(value):
    """A non-canonical serialisation for the tool's input: keys in the order Synapse gave
    them, non-ASCII as \\u escapes (astral characters as surrogate pairs), spaces."""
    return json.dumps(value, ensure_ascii=True)


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Checker:
    def __init__(self, binary, timeout):
        self.binary = binary
        self.timeout = timeout
        self.details = []

    def mismatch(self, text):
        self.details.append(text)

    def run(self, argv, stdin_text, timeout):
        try:
            p = subprocess.run(
                [self.binary] + argv,
                input=stdin_text.encode("utf-8"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None, "", f"timed out after {timeout} s"
        except OSError as e:
            return None, "", f"cannot run: {e}"
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def lines_of(self, command, version, records, inputs):
        """Runs one command over the whole group; returns its output lines (or None)."""
        argv = ["pdu", command] + ([] if command == "canonical" else ["--room-version", version])
        code, out, err = self.run(argv, "".join(i + "\n" for i in inputs), self.timeout * 4)
        label = " ".join(argv)
        if code != 0:
            self.mismatch(f"v{version} `{label}` failed (exit {code}) on {len(inputs)} lines: {first_line(err or out)}")
            return None
        lines = out.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        lines = [l.rstrip("\r") for l in lines]
        if len(lines) != len(inputs):
            self.mismatch(f"v{version} `{label}`: {len(lines)} output lines for {len(inputs)} input lines")
            return None
        return lines


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return "(no output)"


def short(text, n=160):
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def difference(want, got):
    """Both strings around their first difference."""
    i = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    start = max(0, i - 60)
    pre = "..." if start else ""
    return (f"first difference at char {i} (lengths {len(want)}, {len(got)}):\n"
            f"    want {pre}{want[start:i + 100]!r}\n    got  {pre}{got[start:i + 100]!r}")


def check(args):
    corpus = load_jsonl(os.path.join(args.dir, "synapse-pdus.jsonl"))
    tampered = load_jsonl(os.path.join(args.dir, "tampered.jsonl"))
    with open(os.path.join(args.dir, "synapse-key.json"), encoding="utf-8") as f:
        key_doc = json.load(f)
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        print(f"pdus: {args.bin} is not an executable (build it first)", file=sys.stderr)
        return 2
    key_args = []
    for section in ("verify_keys", "old_verify_keys"):
        for key_id, entry in sorted(key_doc.get(section, {}).items()):
            key_args += ["--key", key_doc["server_name"], key_id, entry["key"]]

    c = Checker(args.bin, args.timeout)
    groups = collections.OrderedDict()
    for rec in corpus:
        groups.setdefault(rec["room_version"], []).append(rec)

    ok = collections.Counter()
    for version, recs in groups.items():
        inputs = [wire(r["pdu"]) for r in recs]
        ids = c.lines_of("id", version, recs, inputs)
        if ids is not None:
            for r, got in zip(recs, ids):
                if got.strip() == r["event_id"]:
                    ok["id"] += 1
                else:
                    c.mismatch(f"v{version} id of {r['event_id']}: got {short(got)}")
        redacted = c.lines_of("redact", version, recs, inputs)
        if redacted is not None:
            for r, got in zip(recs, redacted):
                want = canonical(r["redacted"])
                if got == want:
                    ok["redact"] += 1
                else:
                    c.mismatch(f"v{version} redaction of {r['event_id']} ({r['pdu'].get('type')}): "
                               + difference(want, got))
        canon = c.lines_of("canonical", version, recs, inputs)
        if canon is not None:
            for r, got in zip(recs, canon):
                if got == r["canonical"]:
                    ok["canonical"] += 1
                else:
                    c.mismatch(f"v{version} canonical JSON of {r['event_id']} ({r['pdu'].get('type')}): "
                               + difference(r["canonical"], got))
        for r in recs:
            argv = ["pdu", "verify", "--room-version", version] + key_args
            code, out, err = c.run(argv, wire(r["pdu"]) + "\n", args.timeout)
            should_pass = r["content_hash_ok"] and r.get("signatures_ok", True)
            if (code == 0) == should_pass:
                ok["verify"] += 1
            else:
                status = "timed out" if code is None else f"exit {code}"
                c.mismatch(f"v{version} verify of {r['event_id']} ({r['pdu'].get('type')}): {status}, "
                           f"Synapse says {'valid' if should_pass else 'invalid'}: {first_line(err or out)}")

    for t in tampered:
        argv = ["pdu", "verify", "--room-version", t["room_version"]] + key_args
        code, out, err = c.run(argv, wire(t["pdu"]) + "\n", args.timeout)
        said = (out + "\n" + err).lower()
        if code is None:
            c.mismatch(f"tampered v{t['room_version']} ({t['tamper']}): {err}")
        elif code == 0:
            c.mismatch(f"tampered v{t['room_version']} accepted: {t['tamper']}")
        elif t["expect"] not in said:
            c.mismatch(f"tampered v{t['room_version']} ({t['tamper']}): refused, but the output does not name "
                       f"the {t['expect']} check: {first_line(err or out)}")
        else:
            ok["tampered"] += 1

    n = len(corpus)
    summary = (
        f"pdus: {n} events in {len(groups)} room versions: ids {ok['id']}/{n}, redactions {ok['redact']}/{n}, "
        f"canonical {ok['canonical']}/{n}, verify {ok['verify']}/{n}, "
        f"tampered refused {ok['tampered']}/{len(tampered)}"
    )
    for d in c.details[:20]:
        print(d)
    if len(c.details) > 20:
        print(f"... and {len(c.details) - 20} more mismatches")
    print(summary)
    return 1 if c.details else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("make", help="make the corpus from a running Synapse")
    m.add_argument("--url", default="http://127.0.0.1:18008")
    m.add_argument("--db", required=True, help="that Synapse's SQLite database")
    m.add_argument("--out", required=True, help="directory to write the corpus to")
    m.add_argument("--shared-secret", default=DEFAULT_SHARED_SECRET,
                   help="registration_shared_secret, used only if m.login.dummy registration fails")
    m.add_argument("--jobs", type=int, default=4, help="room versions populated at once")
    m.add_argument("--versions", help="comma-separated room versions (default: 1..12)")
    k = sub.add_parser("check", help="check `mxconform pdu ...` against a corpus")
    k.add_argument("--bin", required=True, help="the mxconform binary")
    k.add_argument("--dir", required=True, help="the corpus directory")
    k.add_argument("--timeout", type=float, default=30, help="seconds per subprocess (x4 per group)")
    args = ap.parse_args()
    return make(args) if args.mode == "make" else check(args)


if __name__ == "__main__":
    sys.exit(main())
