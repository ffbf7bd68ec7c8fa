"""The real-client check for matrix-nio (with its e2e extra, vodozemac, when installed).

    python check-nio.py <homeserver-base-url>

run.sh runs it in the virtualenv it makes. Prints one line per step on stdout:

    real-client matrix-nio <version> | <step> | PASS|FAIL|BLOCKED|UNSUPPORTED (<ms> ms)[: <detail>]

followed, for a failed step, by indented `http:` lines: the requests of that step that the
server answered with an error, and the exchanges that explain the failure. nio's own log goes
to stderr. Environment: MXC_STEP_TIMEOUT_MS (default 20000), MXC_TOTAL_TIMEOUT_MS (default
240000), MXC_CLIENT_LOG (nio's log level on stderr: default WARNING), MXC_NIO_E2E=0 (run as if
the e2e extra were missing).

Exit status: 0 when no step failed or was blocked (steps nio cannot do are UNSUPPORTED), 1
otherwise, 2 on a usage error.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import nio
from nio import AsyncClient, AsyncClientConfig
from nio.crypto import ENCRYPTION_ENABLED
from nio.event_builders import ToDeviceMessage

CLIENT = "matrix-nio"
VERSION = importlib.metadata.version("matrix-nio")
STEP_TIMEOUT = int(os.environ.get("MXC_STEP_TIMEOUT_MS") or 20000) / 1000
TOTAL_TIMEOUT = int(os.environ.get("MXC_TOTAL_TIMEOUT_MS") or 240000) / 1000
HISTORY = 30
E2E = ENCRYPTION_ENABLED and os.environ.get("MXC_NIO_E2E", "1") != "0"
if not ENCRYPTION_ENABLED:
    E2E_MISSING = "matrix-nio's e2e extra (vodozemac) is not installed"
elif not E2E:
    E2E_MISSING = "run with MXC_NIO_E2E=0"
else:
    E2E_MISSING = ""


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# What was said on the wire: every request of every client, for the evidence of a failed step.


@dataclass
class Exchange:
    seq: int
    who: str
    method: str
    path: str
    request: str
    status: object = None
    response: str = ""

    def describe(self) -> str:
        req = f" {self.request}" if self.request else ""
        res = f" {self.response}" if self.response else ""
        status = "no answer yet" if self.status is None else self.status
        return f"http: {self.who} {self.method} {self.path}{req} -> {status}{res}"


HTTP_LOG: list[Exchange] = []
SECRET = re.compile(r'("(?:password|access_token|refresh_token)"\s*:\s*)"[^"]*"')


def snippet(text: str | None, limit: int = 400) -> str:
    if not text:
        return ""
    text = SECRET.sub(r'\1"…"', text)
    return text if len(text) <= limit else text[:limit] + "…"


class RecordingClient(AsyncClient):
    """nio's AsyncClient, recording each request it sends and the server's answer."""

    def __init__(self, *args, who: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.who = who

    async def send(self, method, path, data=None, headers=None, trace_context=None, timeout=None):
        entry = Exchange(
            seq=len(HTTP_LOG) + 1,
            who=self.who,
            method=method.upper(),
            path=path.split("?", 1)[0],
            request=snippet(data) if isinstance(data, str) else "",
        )
        HTTP_LOG.append(entry)
        try:
            resp = await super().send(method, path, data, headers, trace_context, timeout)
        except BaseException as err:
            entry.status = f"no answer ({type(err).__name__})"
            raise
        entry.status = resp.status
        if resp.status >= 400 or not entry.path.endswith("/sync"):
            try:
                entry.response = snippet((await resp.read()).decode("utf-8", "replace"))
            except Exception:  # noqa: BLE001 - the body is evidence only
                pass
        return resp


def refused_by_server(e: Exchange) -> bool:
    if e.status is None:
        return not e.path.endswith("/sync")  # a long-poll still open is normal
    if not isinstance(e.status, int):
        return True
    if e.status < 400:
        return False
    if e.status == 401 and '"flows"' in e.response:
        return False  # a user-interactive auth stage
    return True


# ---------------------------------------------------------------------------------------------
# Steps: each bounded in time, each one result line.


class StepFailure(Exception):
    def __init__(self, message: str, evidence: list[str] | None = None):
        super().__init__(message)
        self.evidence = evidence or []


class Unsupported(Exception):
    pass


RESULTS: dict[str, str] = {}
PLAN: list[dict] = []
NOTE = {"text": "starting"}


def note(text: str) -> None:
    NOTE["text"] = text


def emit(step_id: str, status: str, ms: float, detail: str = "", evidence: list[str] | None = None) -> None:
    RESULTS[step_id] = status
    out(f"real-client {CLIENT} {VERSION} | {step_id} | {status} ({round(ms)} ms){': ' + detail if detail else ''}")
    for line in (evidence or [])[:8]:
        out(f"    {line}")


async def until(what: str, probe, interval: float = 0.1):
    """Polls `probe` (sync or async) until it returns a truthy value; the step's bound stops it."""
    note(what)
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)


def explain(err: BaseException) -> str:
    if isinstance(err, (StepFailure, Unsupported)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def check(resp, *ok_types):
    """Returns a nio response of an expected type; fails the step with the server's answer otherwise."""
    if isinstance(resp, ok_types):
        return resp
    transport = getattr(resp, "transport_response", None)
    where = f" ({transport.method} {transport.url.path})" if transport is not None else ""
    status = getattr(resp, "status_code", None)
    message = getattr(resp, "message", None) or repr(resp)
    raise StepFailure(f"{type(resp).__name__}{where}: {status or ''} {message}".replace("  ", " "))


def plan(step_id: str, needs: list[str], timeout: float | None = None, unsupported: str = ""):
    def register(fn):
        PLAN.append({"id": step_id, "needs": needs, "fn": fn, "timeout": timeout or STEP_TIMEOUT, "unsupported": unsupported})
        return fn

    return register


async def run_step(s: dict) -> None:
    if s["unsupported"]:
        emit(s["id"], "UNSUPPORTED", 0, s["unsupported"])
        return
    missing = [n for n in s["needs"] if RESULTS.get(n) != "PASS"]
    if missing:
        emit(s["id"], "BLOCKED", 0, f"needs {', '.join(missing)}, which did not pass")
        return
    note("starting")
    first = len(HTTP_LOG) + 1
    start = time.monotonic()
    try:
        detail = await asyncio.wait_for(s["fn"](), s["timeout"])
        emit(s["id"], "PASS", (time.monotonic() - start) * 1000, detail or "")
    except Unsupported as err:
        emit(s["id"], "UNSUPPORTED", (time.monotonic() - start) * 1000, str(err))
    except (asyncio.TimeoutError, TimeoutError):
        ms = (time.monotonic() - start) * 1000
        refused = [e.describe() for e in HTTP_LOG[first - 1 :] if refused_by_server(e)]
        emit(s["id"], "FAIL", ms, f"timed out after {s['timeout']:g} s while {NOTE['text']}", refused)
    except Exception as err:  # noqa: BLE001 - any failure of the client is the step's result
        ms = (time.monotonic() - start) * 1000
        refused = [e.describe() for e in HTTP_LOG[first - 1 :] if refused_by_server(e)]
        emit(s["id"], "FAIL", ms, explain(err), refused + getattr(err, "evidence", []))


# ---------------------------------------------------------------------------------------------
# The clients.

BASE = ""
TAG = secrets.token_hex(4)
PASSWORD = f"pw-{secrets.token_hex(12)}"
USERS = {name: {"localpart": f"rc-{name}-{TAG}"} for name in ("alice", "bob")}
CLIENTS: dict[str, RecordingClient] = {}
SYNCERS: dict[str, asyncio.Task] = {}
EVENTS: dict[str, list] = {}  # name -> [(room_id, event)]
TO_DEVICE: dict[str, list] = {}  # name -> [event]
STATE: dict[str, object] = {}
STORE = tempfile.mkdtemp(prefix="real-client-nio-")
CONFIG = AsyncClientConfig(
    encryption_enabled=E2E,
    store_sync_tokens=False,
    max_limit_exceeded=2,
    max_timeouts=2,
    request_timeout=15,
)


def make_client(name: str) -> RecordingClient:
    u = USERS[name]
    path = os.path.join(STORE, name)
    os.makedirs(path, exist_ok=True)
    client = RecordingClient(BASE, u["user_id"], device_id=u.get("device_id"), store_path=path, config=CONFIG, who=name)
    EVENTS[name] = []
    TO_DEVICE[name] = []
    client.add_event_callback(lambda room, event, n=name: EVENTS[n].append((room.room_id, event)), nio.Event)
    client.add_to_device_callback(lambda event, n=name: TO_DEVICE[n].append(event), nio.ToDeviceEvent)
    CLIENTS[name] = client
    return client


def start_syncing(name: str, **kwargs) -> None:
    client = CLIENTS[name]
    SYNCERS[name] = asyncio.ensure_future(client.sync_forever(timeout=3000, **kwargs))


def sync_failure(name: str) -> str:
    task = SYNCERS.get(name)
    if task is not None and task.done() and not task.cancelled() and task.exception():
        return f"; {name}'s sync loop died: {task.exception()!r}"
    return ""


async def stop(name: str) -> None:
    task = SYNCERS.pop(name, None)
    if task is not None:
        CLIENTS[name].stop_sync_forever()
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - cancelled or failed: stopped either way
            pass
    await CLIENTS[name].close()


def room_events(name: str, room_id: str) -> list:
    return [e for r, e in EVENTS[name] if r == room_id]


def undecryptable(name: str, room_id: str) -> str:
    bad = [e for e in room_events(name, room_id) if isinstance(e, nio.MegolmEvent)]
    return f"; {name} has {len(bad)} undecryptable event(s)" if bad else ""


async def wait_for_message(receiver: str, sender: str, room_id: str, body: str):
    def probe():
        for e in room_events(receiver, room_id):
            if isinstance(e, nio.RoomMessageText) and e.sender == USERS[sender]["user_id"] and e.body == body:
                return e
        note(f'{receiver} waits for "{body}" from {sender}{undecryptable(receiver, room_id)}{sync_failure(receiver)}')
        return None

    return await until(f'{receiver} waits for "{body}" from {sender}', probe)


# ---------------------------------------------------------------------------------------------

ROOM = "encrypted-room" if E2E else "room"


@plan("register", [])
async def _register():
    for name in ("alice", "bob"):
        u = USERS[name]
        client = RecordingClient(BASE, who=name)
        try:
            # nio's register() sends the m.login.dummy stage straight away, without asking first.
            resp = check(await client.register(u["localpart"], PASSWORD, device_name=f"real-client {name}"), nio.RegisterResponse)
            u["user_id"] = resp.user_id
        finally:
            await client.close()
    return f"{USERS['alice']['user_id']} and {USERS['bob']['user_id']} through nio's register() (m.login.dummy)"


@plan("login", ["register"])
async def _login():
    for name in ("alice", "bob"):
        client = make_client(name)
        resp = check(await client.login(PASSWORD, device_name=f"real-client {name}"), nio.LoginResponse)
        if resp.user_id != USERS[name]["user_id"]:
            raise StepFailure(f"login answered user_id {resp.user_id}, registered as {USERS[name]['user_id']}")
        USERS[name]["device_id"] = resp.device_id
        USERS[name]["access_token"] = resp.access_token
    return f"m.login.password: devices {USERS['alice']['device_id']}, {USERS['bob']['device_id']}"


@plan("e2ee-init", ["login"], unsupported="" if E2E else E2E_MISSING)
async def _e2ee_init():
    for name in ("alice", "bob"):
        if CLIENTS[name].olm is None:
            raise StepFailure(f"{name}'s client has no olm machine after login")
    return f"olm machine loaded (vodozemac {importlib.metadata.version('vodozemac')})"


@plan("first-sync", ["login"])
async def _first_sync():
    for name in ("alice", "bob"):
        start_syncing(name, full_state=True)
    for name in ("alice", "bob"):
        await until(f"{name} waits for its first sync", lambda n=name: CLIENTS[n].next_batch or sync_failure(n))
        if sync_failure(name):
            raise StepFailure(sync_failure(name).lstrip("; "))
    return "both clients syncing (sync_forever)"


@plan(ROOM, ["first-sync"] + (["e2ee-init"] if E2E else []))
async def _room():
    alice, bob = CLIENTS["alice"], CLIENTS["bob"]
    bob_id = USERS["bob"]["user_id"]
    initial_state = [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}] if E2E else []
    note("alice creates the room")
    resp = check(
        await alice.room_create(name=f"real-client {TAG}", invite=[bob_id], initial_state=initial_state, preset=nio.RoomPreset.private_chat),
        nio.RoomCreateResponse,
    )
    room_id = resp.room_id
    STATE["room_id"] = room_id
    await until("bob waits for the invite in his sync", lambda: room_id in bob.invited_rooms)
    note("bob joins")
    check(await bob.join(room_id), nio.JoinResponse)

    def joined():
        room = alice.rooms.get(room_id)
        return room is not None and bob_id in room.users

    await until("alice waits to see bob joined", joined)
    if E2E:
        for name in ("alice", "bob"):
            await until(
                f"{name}'s client waits to see the room as encrypted",
                lambda n=name: CLIENTS[n].rooms.get(room_id) is not None and CLIENTS[n].rooms[room_id].encrypted,
            )
        return f"{room_id}: m.megolm.v1.aes-sha2, bob invited and joined, both see it encrypted"
    return f"{room_id}: unencrypted ({E2E_MISSING}), bob invited and joined"


@plan("device-keys", ["encrypted-room"], unsupported="" if E2E else E2E_MISSING)
async def _device_keys():
    # nio uploads its keys from the sync loop and asks /keys/query for the members of its
    # encrypted rooms: each then has the other's device with its identity keys.
    for name in ("alice", "bob"):
        await until(f"{name} uploads its device keys", lambda n=name: CLIENTS[n].olm.account.shared or sync_failure(n))
    found = []
    for me, other in (("bob", "alice"), ("alice", "bob")):
        o = USERS[other]

        def probe(me=me, o=o):
            device = CLIENTS[me].device_store.active_user_devices(o["user_id"])
            return any(d.id == o["device_id"] and d.ed25519 and d.curve25519 for d in device)

        await until(f"{me} looks for {other}'s device {o['device_id']} (nio's /keys/query)", probe)
        found.append(f"{me} sees {other}'s {o['device_id']}")
    return f"{', '.join(found)} with curve25519 and ed25519 keys"


NO_CROSS_SIGNING = "not supported by this client: matrix-nio has no cross-signing"
plan("cross-signing-setup", [], unsupported=NO_CROSS_SIGNING)(None)
plan("cross-signing-own-device", [], unsupported=NO_CROSS_SIGNING)(None)
plan("cross-signing-seen", [], unsupported=NO_CROSS_SIGNING)(None)


async def send_text(sender: str, body: str, extra: dict | None = None) -> str:
    content = {"msgtype": "m.text", "body": body, **(extra or {})}
    resp = check(
        await CLIENTS[sender].room_send(STATE["room_id"], "m.room.message", content, ignore_unverified_devices=True),
        nio.RoomSendResponse,
    )
    return resp.event_id


@plan("message-alice-to-bob", [ROOM])
async def _alice_to_bob():
    body = f"hello bob {TAG}"
    note("alice sends")
    STATE["alice_message"] = await send_text("alice", body)
    ev = await wait_for_message("bob", "alice", STATE["room_id"], body)
    if E2E and not ev.decrypted:
        raise StepFailure("bob got the message, but it was not encrypted on the wire")
    return f"bob {'decrypted' if E2E else 'received'} {STATE['alice_message']}" + (" (megolm)" if E2E else " (unencrypted room)")


@plan("message-bob-to-alice", [ROOM])
async def _bob_to_alice():
    body = f"hello alice {TAG}"
    note("bob sends")
    event_id = await send_text("bob", body)
    ev = await wait_for_message("alice", "bob", STATE["room_id"], body)
    if E2E and not ev.decrypted:
        raise StepFailure("alice got the message, but it was not encrypted on the wire")
    return f"alice {'decrypted' if E2E else 'received'} {event_id}" + (" (megolm)" if E2E else " (unencrypted room)")


@plan("to-device-plain", ["first-sync"])
async def _to_device_plain():
    nonce = secrets.token_hex(6)
    kind = "org.mxconform.real_client.ping"
    bob = USERS["bob"]
    note("alice sends a to-device event")
    check(await CLIENTS["alice"].to_device(ToDeviceMessage(kind, bob["user_id"], bob["device_id"], {"nonce": nonce})), nio.ToDeviceResponse)

    def probe():
        for e in TO_DEVICE["bob"]:
            if isinstance(e, nio.UnknownToDeviceEvent) and e.type == kind and e.source.get("content", {}).get("nonce") == nonce:
                return e
        return None

    got = await until("bob waits for the to-device event", probe)
    if got.sender != USERS["alice"]["user_id"]:
        raise StepFailure(f"the sender is {got.sender}")
    return f"{kind} from {got.sender} to {bob['device_id']}, in clear"


@plan("to-device-encrypted", ["message-alice-to-bob"], unsupported="" if E2E else E2E_MISSING)
async def _to_device_encrypted():
    # nio has no call to olm-encrypt a custom to-device event; the olm-encrypted to-device
    # event it does send is the m.room_key that alice's client shared with bob's device for the
    # room, which bob's client must have decrypted to read alice's message.
    room_id = STATE["room_id"]
    session = CLIENTS["alice"].olm.outbound_group_sessions.get(room_id)
    if session is None:
        raise StepFailure("alice's client has no outbound megolm session for the room")

    def probe():
        for e in TO_DEVICE["bob"]:
            if isinstance(e, nio.RoomKeyEvent) and e.room_id == room_id and e.session_id == session.id:
                return e
        return None

    got = await until("bob waits for alice's m.room_key (olm)", probe)
    if got.sender != USERS["alice"]["user_id"]:
        raise StepFailure(f"the room key came from {got.sender}")
    return (
        f"bob decrypted the olm-encrypted m.room_key for session {session.id[:10]}… from alice "
        "(nio cannot olm-encrypt custom to-device events: that part is not supported by this client)"
    )


@plan("edit", ["message-alice-to-bob"])
async def _edit():
    original = STATE["alice_message"]
    body = f"hello bob, edited {TAG}"
    note("alice sends the edit")
    event_id = await send_text(
        "alice",
        f"* {body}",
        {"m.new_content": {"msgtype": "m.text", "body": body}, "m.relates_to": {"rel_type": "m.replace", "event_id": original}},
    )

    def probe():
        for e in room_events("bob", STATE["room_id"]):
            if getattr(e, "event_id", None) != event_id:
                continue
            content = e.source.get("content", {})
            rel = content.get("m.relates_to", {})
            if rel.get("rel_type") == "m.replace" and rel.get("event_id") == original and content.get("m.new_content", {}).get("body") == body:
                return e
        return None

    await until("bob waits for the m.replace edit", probe)
    return f"bob {'decrypted' if E2E else 'received'} edit {event_id} of {original} with the new body (nio shows edits as events: it does not apply them)"


@plan("reaction", ["message-alice-to-bob"])
async def _reaction():
    target = STATE["alice_message"]
    key = "👍"
    note("bob reacts")
    resp = check(
        await CLIENTS["bob"].room_send(
            STATE["room_id"], "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}, ignore_unverified_devices=True
        ),
        nio.RoomSendResponse,
    )

    def probe():
        for e in room_events("alice", STATE["room_id"]):
            if isinstance(e, nio.ReactionEvent) and e.event_id == resp.event_id and e.reacts_to == target and e.key == key:
                return e
        return None

    await until("alice waits for the m.annotation reaction", probe)
    return f"alice sees bob's {key} on {target} (nio sends reactions unencrypted)"


@plan("back-pagination", ["message-alice-to-bob"], timeout=max(STEP_TIMEOUT, 60))
async def _back_pagination():
    room_id = STATE["room_id"]
    # bob's client stops; alice sends the history; a fresh client for bob's device (its store
    # kept, its sync state new) syncs with a one-event timeline and paginates backwards.
    note("bob's client stops")
    await stop("bob")
    sent = []
    for i in range(1, HISTORY + 1):
        note(f"alice sends history message {i}/{HISTORY}")
        body = f"history {i:02d}/{HISTORY} {TAG}"
        sent.append((await send_text("alice", body), body))
    bob = make_client("bob")
    u = USERS["bob"]
    bob.restore_login(u["user_id"], u["device_id"], u["access_token"])
    note("the fresh client syncs")
    sync = check(
        await bob.sync(timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 1}}}),
        nio.SyncResponse,
    )
    joined = sync.rooms.join.get(room_id)
    if joined is None:
        raise StepFailure("the fresh client's sync does not list the room as joined")
    token = joined.timeline.prev_batch
    found: list = []  # newest first
    ids = {event_id for event_id, _ in sent}
    pages = 0
    while token and len([e for e in found if getattr(e, "event_id", None) in ids]) < HISTORY and pages < 20:
        note(f"the fresh client paginates backwards (page {pages + 1})")
        resp = check(await bob.room_messages(room_id, start=token, direction=nio.MessageDirection.back, limit=10), nio.RoomMessagesResponse)
        pages += 1
        if not resp.chunk:
            break
        found.extend(resp.chunk)
        token = resp.end
    timeline = list(reversed(joined.timeline.events)) + found  # newest first
    mine = [e for e in reversed(timeline) if getattr(e, "event_id", None) in ids]
    seen_ids: list[str] = []
    for e in mine:
        if e.event_id not in seen_ids:
            seen_ids.append(e.event_id)
    if len(seen_ids) != HISTORY:
        raise StepFailure(f"after {pages} page(s) backwards the fresh client has {len(seen_ids)} of the {HISTORY} messages")
    expected = [event_id for event_id, _ in sent]
    if seen_ids != expected:
        at = next(i for i, (a, b) in enumerate(zip(seen_ids, expected)) if a != b)
        raise StepFailure(f"the messages come in another order: position {at + 1} is {seen_ids[at]}, sent as {expected[at]}")
    by_id = {e.event_id: e for e in mine}
    wrong = [eid for eid, body in sent if getattr(by_id[eid], "body", None) != body]
    if wrong:
        undecrypted = sum(isinstance(by_id[eid], nio.MegolmEvent) for eid in wrong)
        raise StepFailure(f"{len(wrong)} message(s) not read back as sent ({undecrypted} undecryptable), the first {wrong[0]}")
    return f"{HISTORY} {'encrypted ' if E2E else ''}messages, all found in order after {pages} page(s) of /messages" + (", all decrypted" if E2E else "")


plan("cross-signing-reset", [], unsupported=NO_CROSS_SIGNING)(None)


# ---------------------------------------------------------------------------------------------


async def main() -> int:
    header = f"# real-client {CLIENT} {VERSION}"
    header += f" with vodozemac {importlib.metadata.version('vodozemac')}" if E2E else f" without encryption ({E2E_MISSING})"
    out(f"{header}, python {sys.version.split()[0]}, against {BASE}")

    async def all_steps():
        for s in PLAN:
            await run_step(s)

    try:
        await asyncio.wait_for(all_steps(), TOTAL_TIMEOUT)
    except (asyncio.TimeoutError, TimeoutError):
        for s in PLAN:
            if s["id"] in RESULTS:
                continue
            if s["unsupported"]:
                emit(s["id"], "UNSUPPORTED", 0, s["unsupported"])
            else:
                emit(s["id"], "FAIL", 0, f"not finished: the whole check ran out of its {TOTAL_TIMEOUT:g} s")
    finally:
        for name in list(CLIENTS):
            try:
                await asyncio.wait_for(stop(name), 5)
            except BaseException:  # noqa: BLE001 - shutting down
                pass
        shutil.rmtree(STORE, ignore_errors=True)
    bad = [s for s, r in RESULTS.items() if r not in ("PASS", "UNSUPPORTED")]
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not re.match(r"^https?://", sys.argv[1]):
        sys.stderr.write("usage: python check-nio.py <homeserver-base-url>\n")
        sys.exit(2)
    BASE = sys.argv[1].rstrip("/")
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("MXC_CLIENT_LOG", "WARNING").upper())
    sys.exit(asyncio.run(main()))
