// The real-client check for matrix-js-sdk with its Rust crypto (matrix-sdk-crypto-wasm).
//
//   node check-js.mjs <homeserver-base-url>
//
// Needs Node 22 or newer (run.sh runs it with the Node that package.json installs). Prints one
// line per step on stdout:
//
//   real-client matrix-js-sdk <version> | <step> | PASS|FAIL|BLOCKED (<ms> ms)[: <detail>]
//
// followed, for a failed step, by indented `http:` lines: the requests of that step that the
// server answered with an error, and the exchanges that explain the failure. The SDK's own log
// goes to stderr. Environment: MXC_STEP_TIMEOUT_MS (default 20000), MXC_TOTAL_TIMEOUT_MS
// (default 240000), MXC_CLIENT_LOG (the SDK's log level on stderr: default warn).
//
// Exit status: 0 when every step passed, 1 when one did not, 2 on a usage error.

import { readFileSync } from "node:fs";
import { format } from "node:util";
import { randomBytes } from "node:crypto";
import { AsyncLocalStorage } from "node:async_hooks";

// Everything but the result lines goes to stderr, the SDK's logging included.
const print = (line) => process.stdout.write(line + "\n");
for (const method of ["log", "info", "debug", "warn", "error", "trace"]) {
  console[method] = (...args) => process.stderr.write(format(...args) + "\n");
}

const baseUrl = (process.argv[2] || "").replace(/\/+$/, "");
if (!/^https?:\/\//.test(baseUrl)) {
  process.stderr.write("usage: node check-js.mjs <homeserver-base-url>\n");
  process.exit(2);
}
const major = Number(process.versions.node.split(".")[0]);
if (major < 22) {
  process.stderr.write(`matrix-js-sdk needs Node 22 or newer; this is ${process.version}\n`);
  process.exit(2);
}

// An IndexedDB in memory, so that a client restarted later in this process finds its crypto
// store again (the back-pagination step restarts bob).
await import("fake-indexeddb/auto");
const sdk = await import("matrix-js-sdk");
const { ClientEvent, RoomEvent, SyncState } = sdk;
// The SDK's logger (a loglevel logger, not exported from the package's index).
const { logger: sdkLogger } = await import("matrix-js-sdk/lib/logger.js");
sdkLogger.setLevel(process.env.MXC_CLIENT_LOG || "warn");

const pkgVersion = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;
const CLIENT = "matrix-js-sdk";
const VERSION = pkgVersion("matrix-js-sdk");
const STEP_TIMEOUT = Number(process.env.MXC_STEP_TIMEOUT_MS || 20000);
const TOTAL_TIMEOUT = Number(process.env.MXC_TOTAL_TIMEOUT_MS || 240000);
const HISTORY = 30;

// ---------------------------------------------------------------------------------------------
// What was said on the wire: every request of every client, for the evidence of a failed step.

let seq = 0;
const httpLog = [];

function snippet(value, max = 400) {
  if (value === undefined || value === null) return "";
  let text = typeof value === "string" ? value : String(value);
  text = text.replace(/("(?:password|access_token|refresh_token)"\s*:\s*)"[^"]*"/g, '$1"…"');
  return text.length > max ? text.slice(0, max) + "…" : text;
}

function parseJson(text) {
  try {
    return typeof text === "string" ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function recordingFetch(who) {
  return async (input, init = {}) => {
    const url = new URL(typeof input === "string" ? input : input.url ?? String(input));
    const entry = {
      seq: ++seq,
      who,
      method: (init.method || "GET").toUpperCase(),
      path: url.pathname,
      request: typeof init.body === "string" ? snippet(init.body) : "",
      status: null,
      response: "",
    };
    httpLog.push(entry);
    if (httpLog.length > 2000) httpLog.splice(0, 1000);
    try {
      const res = await fetch(input, init);
      entry.status = res.status;
      // Sync bodies are large and long-polled: keep them only when they are errors.
      if (res.status >= 400 || !url.pathname.endsWith("/sync")) {
        entry.body = res
          .clone()
          .text()
          .then((text) => {
            entry.response = snippet(text);
            // Key exchanges are kept whole: the cross-signing evidence reads them.
            if (url.pathname.includes("/keys/")) {
              entry.requestJson = parseJson(init.body);
              entry.responseJson = parseJson(text);
            }
          })
          .catch(() => {});
      }
      return res;
    } catch (err) {
      entry.status = `no answer (${err.name === "AbortError" ? "aborted" : err.message})`;
      throw err;
    }
  };
}

const describeExchange = (e) =>
  `http: ${e.who} ${e.method} ${e.path}${e.request ? " " + e.request : ""} -> ${e.status ?? "no answer yet"}${
    e.response ? " " + e.response : ""
  }`;

// A request made by this script itself (not through the SDK), recorded like the others.
async function raw(who, token, method, path, body) {
  const res = await recordingFetch(who)(`${baseUrl}/_matrix/client/v3${path}`, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, json, text };
}

// ---------------------------------------------------------------------------------------------
// Steps: each bounded in time, each one result line.

class StepFailure extends Error {
  constructor(message, evidence = []) {
    super(message);
    this.evidence = evidence;
  }
}

const results = new Map();
const stepContext = new AsyncLocalStorage(); // { note, signal } of the running step

function emit(id, status, ms, detail, evidence = []) {
  results.set(id, status);
  print(`real-client ${CLIENT} ${VERSION} | ${id} | ${status} (${Math.round(ms)} ms)${detail ? ": " + detail : ""}`);
  for (const line of evidence.slice(0, 8)) print(`    ${line}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Says what the step is waiting for: a time-out reports the last note. */
function note(text) {
  const current = stepContext.getStore();
  if (current && !current.signal.aborted) current.note = text;
}

/** Polls `probe` until it returns a truthy value; the step's time bound stops it. */
async function until(what, probe, intervalMs = 100) {
  note(what);
  const signal = stepContext.getStore()?.signal;
  for (;;) {
    if (signal?.aborted) throw new StepFailure(`stopped while ${what}`);
    const value = await probe();
    if (value) return value;
    await sleep(intervalMs);
  }
}

function explain(err) {
  if (err instanceof StepFailure) return err.message;
  if (err && typeof err === "object" && "httpStatus" in err) {
    const where = err.url ? ` (${new URL(err.url).pathname})` : "";
    const code = err.errcode ? ` ${err.errcode}` : "";
    const text = err.data?.error ?? err.message;
    return `HTTP ${err.httpStatus}${code}${where}: ${text}`;
  }
  return String(err?.message ?? err);
}

/** A request worth showing for a failed step: refused, unanswered, or failed on the way. */
function refusedByServer(e) {
  if (e.status === null) return !e.path.endsWith("/sync"); // a long-poll still open is normal
  if (typeof e.status !== "number") return true;
  if (e.status < 400) return false;
  if (e.status === 401 && /"flows"/.test(e.response)) return false; // a user-interactive auth stage
  if (e.status === 404 && e.path.endsWith("/room_keys/version")) return false; // no key backup
  return true;
}

async function step({ id, needs, fn, timeoutMs = STEP_TIMEOUT, evidence }) {
  const missing = needs.filter((n) => results.get(n) !== "PASS");
  if (missing.length) {
    emit(id, "BLOCKED", 0, `needs ${missing.join(", ")}, which did not pass`);
    return;
  }
  const controller = new AbortController();
  // The step's own context: a step left running by its time-out cannot write over the next's.
  const current = { note: "starting", signal: controller.signal };
  const first = seq + 1;
  const start = performance.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const waiting = current.note;
      controller.abort();
      reject(new StepFailure(`timed out after ${timeoutMs / 1000} s while ${waiting}`));
    }, timeoutMs);
  });
  try {
    const detail = await Promise.race([stepContext.run(current, fn), timeout]);
    emit(id, "PASS", performance.now() - start, detail || "");
  } catch (err) {
    controller.abort();
    const ms = performance.now() - start;
    // The requests of this step the server refused, then what the step itself points at.
    await Promise.all(httpLog.map((e) => e.body).filter(Boolean));
    const refused = httpLog.filter((e) => e.seq >= first && refusedByServer(e)).map(describeExchange);
    const pointed = [...(err?.evidence ?? []), ...(evidence ? evidence() : [])];
    const lines = [...refused, ...pointed.map((e) => (typeof e === "string" ? e : describeExchange(e)))];
    emit(id, "FAIL", ms, explain(err), lines);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// The clients.

const tag = randomBytes(4).toString("hex");
const password = `pw-${randomBytes(12).toString("hex")}`;
const users = {
  alice: { localpart: `rc-alice-${tag}` },
  bob: { localpart: `rc-bob-${tag}` },
};
const clients = {};
const seen = {}; // name -> Map(event id -> MatrixEvent)
const toDevice = {}; // name -> [ReceivedToDeviceMessage]
const started = [];

function makeClient(name) {
  const u = users[name];
  const client = sdk.createClient({
    baseUrl,
    userId: u.userId,
    deviceId: u.deviceId,
    accessToken: u.accessToken,
    fetchFn: recordingFetch(name),
    timelineSupport: true,
  });
  seen[name] = new Map();
  toDevice[name] = [];
  client.on(RoomEvent.Timeline, (event) => seen[name].set(event.getId(), event));
  client.on(ClientEvent.ReceivedToDeviceMessage, (message) => toDevice[name].push(message));
  clients[name] = client;
  return client;
}

async function startSyncing(name, opts) {
  const client = clients[name];
  started.push(client);
  const ready = new Promise((resolve, reject) => {
    const onSync = (state, _prev, data) => {
      if (state === SyncState.Prepared || state === SyncState.Syncing) {
        client.off(ClientEvent.Sync, onSync);
        resolve();
      } else if (state === SyncState.Error) {
        client.off(ClientEvent.Sync, onSync);
        reject(new StepFailure(`${name}'s sync failed: ${explain(data?.error)}`));
      }
    };
    client.on(ClientEvent.Sync, onSync);
  });
  note(`${name} waits for its first sync`);
  await client.startClient(opts);
  await ready;
}

const roomEvents = (name, roomId) => [...seen[name].values()].filter((e) => e.getRoomId() === roomId);

function undecryptable(name, roomId) {
  const bad = roomEvents(name, roomId).filter((e) => e.isDecryptionFailure());
  if (!bad.length) return "";
  const reasons = [...new Set(bad.map((e) => e.decryptionFailureReason ?? e.getContent().body))];
  return `; ${name} has ${bad.length} undecryptable event(s): ${reasons.join(", ")}`;
}

async function waitForMessage(receiver, sender, roomId, body) {
  return until(`${receiver} waits for "${body}" from ${sender}`, () => {
    const match = roomEvents(receiver, roomId).find(
      (e) => e.getType() === "m.room.message" && e.getSender() === users[sender].userId && e.getContent().body === body,
    );
    if (!match) note(`${receiver} waits for "${body}" from ${sender}${undecryptable(receiver, roomId)}`);
    return match;
  });
}

// ---------------------------------------------------------------------------------------------

const state = {};

async function registerUser(name) {
  const u = users[name];
  const probe = sdk.createClient({ baseUrl, fetchFn: recordingFetch(name) });
  const request = { username: u.localpart, password, inhibit_login: true, initial_device_display_name: `real-client ${name}` };
  let session;
  try {
    // The user-interactive flow: ask first, then complete the m.login.dummy stage.
    await probe.registerRequest(request);
    throw new StepFailure("POST /register without auth succeeded; expected a 401 with the flows");
  } catch (err) {
    if (err instanceof StepFailure) throw err;
    if (err.httpStatus !== 401 || !Array.isArray(err.data?.flows)) throw err;
    const dummy = err.data.flows.some((f) => f.stages?.length === 1 && f.stages[0] === "m.login.dummy");
    if (!dummy) throw new StepFailure(`the server offers no m.login.dummy flow: ${JSON.stringify(err.data.flows)}`);
    session = err.data.session;
  }
  const res = await probe.registerRequest({ ...request, auth: { type: "m.login.dummy", session } });
  u.userId = res.user_id;
}

async function loginUser(name) {
  const u = users[name];
  const probe = sdk.createClient({ baseUrl, fetchFn: recordingFetch(name) });
  const res = await probe.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: u.localpart },
    password,
    initial_device_display_name: `real-client ${name}`,
  });
  if (res.user_id !== u.userId) throw new StepFailure(`login answered user_id ${res.user_id}, registered as ${u.userId}`);
  Object.assign(u, { accessToken: res.access_token, deviceId: res.device_id });
}

async function initCrypto(name) {
  const client = makeClient(name);
  // bob's crypto store outlives his client, for the restart of the back-pagination step.
  await client.initRustCrypto(
    name === "bob" ? { useIndexedDB: true, cryptoDatabasePrefix: `real-client-${users.bob.localpart}` } : { useIndexedDB: false },
  );
}

const allSteps = [];
function plan(id, needs, fn, timeoutMs) {
  const s = { id, needs, fn, timeoutMs };
  allSteps.push(s);
  return s;
}

plan("register", [], async () => {
  await registerUser("alice");
  await registerUser("bob");
  return `${users.alice.userId} and ${users.bob.userId} through the m.login.dummy flow`;
});

plan("login", ["register"], async () => {
  await loginUser("alice");
  await loginUser("bob");
  return `m.login.password: devices ${users.alice.deviceId}, ${users.bob.deviceId}`;
});

plan("e2ee-init", ["login"], async () => {
  await initCrypto("alice");
  await initCrypto("bob");
  return `initRustCrypto: ${clients.alice.getCrypto().getVersion()}`;
});

plan("first-sync", ["e2ee-init"], async () => {
  await startSyncing("alice", { initialSyncLimit: 10 });
  await startSyncing("bob", { initialSyncLimit: 10 });
  return "both clients syncing (startClient)";
});

plan("device-keys", ["first-sync"], async () => {
  // The SDK uploads device and one-time keys after its first sync; each user then finds the
  // other's device, with its identity keys, through /keys/query.
  const found = [];
  for (const [me, other] of [["bob", "alice"], ["alice", "bob"]]) {
    const o = users[other];
    await until(`${me} looks for ${other}'s device ${o.deviceId} in /keys/query`, async () => {
      const info = await clients[me].getCrypto().getUserDeviceInfo([o.userId], true);
      const device = info.get(o.userId)?.get(o.deviceId);
      return device?.getIdentityKey() && device?.getFingerprint();
    }, 250);
    found.push(`${me} sees ${other}'s ${o.deviceId}`);
  }
  return `${found.join(", ")} with curve25519 and ed25519 keys`;
});

plan("encrypted-room", ["first-sync"], async () => {
  const { alice, bob } = clients;
  note("alice creates the room");
  const { room_id: roomId } = await alice.createRoom({
    preset: "private_chat",
    name: `real-client ${tag}`,
    invite: [users.bob.userId],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  state.roomId = roomId;
  await until("bob waits for the invite in his sync", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  note("bob joins");
  await bob.joinRoom(roomId);
  await until("alice waits to see bob joined", () => alice.getRoom(roomId)?.getMember(users.bob.userId)?.membership === "join");
  for (const name of ["alice", "bob"]) {
    await until(`${name}'s client waits to see the room as encrypted (m.room.encryption in its sync)`, () =>
      clients[name].getCrypto().isEncryptionEnabledInRoom(roomId),
    );
  }
  return `${roomId}: m.megolm.v1.aes-sha2, bob invited and joined, both see it encrypted`;
});

plan("cross-signing-setup", ["first-sync"], async () => {
  const crypto = clients.alice.getCrypto();
  let how = "";
  note("alice bootstraps cross-signing");
  await crypto.bootstrapCrossSigning({
    setupNewCrossSigning: true,
    authUploadDeviceSigningKeys: async (makeRequest) => {
      try {
        await makeRequest(null);
        how = "the server asked no user-interactive auth";
        return;
      } catch (err) {
        if (err?.httpStatus !== 401 || !Array.isArray(err.data?.flows)) throw err;
        const ok = err.data.flows.some((f) => f.stages?.length === 1 && f.stages[0] === "m.login.password");
        if (!ok) throw new StepFailure(`no m.login.password flow for the key upload: ${JSON.stringify(err.data.flows)}`);
        await makeRequest({
          type: "m.login.password",
          identifier: { type: "m.id.user", user: users.alice.userId },
          password,
          session: err.data.session,
        });
        how = "user-interactive auth with m.login.password";
      }
    },
  });
  const master = await until("alice's client checks her cross-signing status", async () => {
    const ready = await crypto.isCrossSigningReady();
    const id = await crypto.getCrossSigningKeyId();
    note(`alice's client after bootstrapCrossSigning: isCrossSigningReady=${ready}, master key ${id}`);
    return ready && id;
  }, 250);
  state.aliceMaster = master;
  return `keys uploaded (${how}); isCrossSigningReady, master key ${master}`;
});

plan("cross-signing-own-device", ["cross-signing-setup"], async () => {
  // bootstrapCrossSigning signed alice's device with her self-signing key and uploaded the
  // signature; her client trusts the device once the server gives that signature back.
  const crypto = clients.alice.getCrypto();
  const a = users.alice;
  await until("alice's client waits to see her own device cross-signed", async () => {
    const own = await crypto.getDeviceVerificationStatus(a.userId, a.deviceId);
    note(`alice's client: her device ${a.deviceId} signedByOwner=${own?.signedByOwner}, crossSigningVerified=${own?.crossSigningVerified}`);
    return own?.crossSigningVerified;
  }, 250);
  return `alice's client sees her device ${a.deviceId} as cross-signing verified`;
}).evidence = () => crossSigningEvidence("alice");

// What alice told the server about her cross-signing, and what `viewer` last got back, in short.
function crossSigningEvidence(viewer) {
  const a = users.alice;
  const keyId = (key) => (key ? Object.keys(key.keys ?? {})[0] : "none");
  const signers = (obj, user) => `[${Object.keys(obj?.signatures?.[user] ?? {}).join(", ")}]`;
  const lines = [];
  for (const e of httpLog.filter((e) => e.who === "alice" && e.path.endsWith("/keys/device_signing/upload"))) {
    const kinds = Object.keys(e.requestJson ?? {}).filter((k) => k.endsWith("_key"));
    lines.push(`http: alice POST ${e.path} with ${kinds.join(", ")} -> ${e.status} ${e.response}`);
  }
  for (const e of httpLog.filter((e) => e.who === "alice" && e.path.endsWith("/keys/signatures/upload"))) {
    const signed = [];
    for (const [user, objects] of Object.entries(e.requestJson ?? {})) {
      for (const [id, obj] of Object.entries(objects ?? {})) signed.push(`${user} ${id} signed by ${signers(obj, user)}`);
    }
    lines.push(`http: alice POST ${e.path} with ${signed.join("; ")} -> ${e.status} ${e.response}`);
  }
  const query = httpLog
    .filter((e) => e.who === viewer && e.path.endsWith("/keys/query") && e.requestJson?.device_keys?.[a.userId])
    .at(-1);
  if (!query) {
    lines.push(`${viewer} never asked /keys/query for alice after that (no device_lists.changed for her in ${viewer}'s sync?)`);
  } else {
    const r = query.responseJson ?? {};
    const device = r.device_keys?.[a.userId]?.[a.deviceId];
    const upload = httpLog.filter((e) => e.who === "alice" && e.path.endsWith("/keys/signatures/upload")).at(-1);
    const when = upload && query.seq < upload.seq ? ` (made before the signature upload; ${viewer}'s client did not ask again: no device_lists.changed for alice in its sync?)` : "";
    lines.push(
      `http: ${viewer} POST ${query.path} for alice${when} -> ${query.status}: master key ${keyId(r.master_keys?.[a.userId])}, ` +
        `self-signing key ${keyId(r.self_signing_keys?.[a.userId])}, device ${a.deviceId} signed by ${signers(device, a.userId)}`,
    );
  }
  return lines;
}

plan("cross-signing-seen", ["cross-signing-setup", "encrypted-room"], async () => {
  const a = users.alice;
  const bob = clients.bob.getCrypto();
  const verdict = (q) => {
    const master = q?.master_keys?.[a.userId];
    const ssk = q?.self_signing_keys?.[a.userId];
    const device = q?.device_keys?.[a.userId]?.[a.deviceId];
    const sskId = ssk ? Object.keys(ssk.keys ?? {})[0] : null;
    const sigs = Object.keys(device?.signatures?.[a.userId] ?? {});
    if (!master) return "bob's /keys/query has no master key for alice";
    if (!ssk) return "bob's /keys/query has no self-signing key for alice";
    if (!device) return `bob's /keys/query has no device ${a.deviceId} for alice`;
    if (!sigs.includes(sskId)) {
      return `bob sees no self-signing signature on alice's device ${a.deviceId}: its signatures are by [${sigs.join(", ")}], not by her self-signing key ${sskId}`;
    }
    return "";
  };
  await until("bob queries alice's keys", async () => {
    const q = await raw("bob", users.bob.accessToken, "POST", "/keys/query", { device_keys: { [a.userId]: [] } });
    const problem = q.status === 200 ? verdict(q.json) : `POST /keys/query -> ${q.status}`;
    if (problem) {
      note(problem);
      return false;
    }
    return true;
  }, 500);
  // The same, as bob's client understands it (it tracks alice: they share an encrypted room).
  let sdkView = "";
  await until("bob's client learns alice's cross-signing identity", async () => {
    const keys = await bob.getUserCrossSigningKeys(a.userId);
    const status = await bob.getDeviceVerificationStatus(a.userId, a.deviceId);
    const master = Object.values(keys?.master_key?.keys ?? {})[0];
    sdkView = `bob's client: master ${master ?? "unknown"}, self-signing ${keys?.self_signing_key ? "known" : "unknown"}, alice's device signedByOwner=${status?.signedByOwner}`;
    note(`/keys/query is right, but ${sdkView}`);
    return master === state.aliceMaster && keys?.self_signing_key && status?.signedByOwner;
  }, 250);
  return `bob's /keys/query shows alice's master and self-signing keys and her device signed by the latter; ${sdkView}`;
}).evidence = () => crossSigningEvidence("bob");

plan("message-alice-to-bob", ["encrypted-room"], async () => {
  const body = `hello bob ${tag}`;
  note("alice sends");
  const { event_id } = await clients.alice.sendMessage(state.roomId, { msgtype: "m.text", body });
  state.aliceMessage = event_id;
  const ev = await waitForMessage("bob", "alice", state.roomId, body);
  if (!ev.isEncrypted()) throw new StepFailure("bob got the message, but it was not encrypted on the wire");
  return `bob decrypted ${event_id} (sent as ${ev.getWireType()}, ${ev.getWireContent().algorithm})`;
});

plan("message-bob-to-alice", ["encrypted-room"], async () => {
  const body = `hello alice ${tag}`;
  note("bob sends");
  const { event_id } = await clients.bob.sendMessage(state.roomId, { msgtype: "m.text", body });
  state.bobMessage = event_id;
  const ev = await waitForMessage("alice", "bob", state.roomId, body);
  if (!ev.isEncrypted()) throw new StepFailure("alice got the message, but it was not encrypted on the wire");
  return `alice decrypted ${event_id} (sent as ${ev.getWireType()}, ${ev.getWireContent().algorithm})`;
});

plan("to-device-plain", ["first-sync"], async () => {
  const nonce = randomBytes(6).toString("hex");
  const type = "org.mxconform.real_client.ping";
  note("alice sends a to-device event");
  await clients.alice.sendToDevice(type, new Map([[users.bob.userId, new Map([[users.bob.deviceId, { nonce }]])]]));
  const got = await until("bob waits for the to-device event", () =>
    toDevice.bob.find((m) => m.message.type === type && m.message.content?.nonce === nonce),
  );
  if (got.message.sender !== users.alice.userId) throw new StepFailure(`the sender is ${got.message.sender}`);
  if (got.encryptionInfo) throw new StepFailure("a plain to-device event arrived marked as encrypted");
  return `${type} from ${users.alice.userId} to ${users.bob.deviceId}, in clear`;
});

plan("to-device-encrypted", ["first-sync"], async () => {
  const nonce = randomBytes(6).toString("hex");
  const type = "org.mxconform.real_client.secret";
  note("alice encrypts a to-device event for bob's device with olm");
  const batch = await clients.alice
    .getCrypto()
    .encryptToDeviceMessages(type, [{ userId: users.bob.userId, deviceId: users.bob.deviceId }], { nonce });
  if (batch.eventType !== "m.room.encrypted" || batch.batch.length !== 1) {
    throw new StepFailure(`encryptToDeviceMessages gave ${batch.batch.length} message(s) of type ${batch.eventType}`);
  }
  note("alice sends it");
  await clients.alice.queueToDevice(batch);
  const got = await until("bob waits for the olm-encrypted to-device event", () =>
    toDevice.bob.find((m) => m.message.type === type && m.message.content?.nonce === nonce),
  );
  if (!got.encryptionInfo) throw new StepFailure("the event arrived, but not encrypted");
  if (got.encryptionInfo.sender !== users.alice.userId) throw new StepFailure(`olm sender is ${got.encryptionInfo.sender}`);
  return `m.room.encrypted (olm) carrying ${type}, decrypted by bob, from device ${got.encryptionInfo.senderDevice}`;
});

plan("edit", ["message-alice-to-bob"], async () => {
  const original = state.aliceMessage;
  const body = `hello bob, edited ${tag}`;
  note("alice sends the edit");
  const { event_id } = await clients.alice.sendEvent(state.roomId, "m.room.message", {
    msgtype: "m.text",
    body: `* ${body}`,
    "m.new_content": { msgtype: "m.text", body },
    "m.relates_to": { rel_type: "m.replace", event_id: original },
  });
  const edit = await until("bob waits for the m.replace edit", () => {
    const ev = seen.bob.get(event_id);
    if (!ev) return null;
    const rel = ev.getRelation();
    if (ev.isDecryptionFailure()) note(`bob cannot decrypt the edit: ${ev.decryptionFailureReason}`);
    return rel?.rel_type === "m.replace" && rel.event_id === original && ev.getContent()["m.new_content"]?.body === body ? ev : null;
  });
  // A client shows the edit in place of the original.
  const replaced = await until("bob's client applies the edit to the original message", () => {
    const orig = seen.bob.get(original);
    return orig?.replacingEventId() === event_id && orig.getContent().body === body ? orig : null;
  });
  void replaced;
  return `bob decrypted edit ${edit.getId()} of ${original}, and his client shows "${body}"`;
});

plan("reaction", ["message-alice-to-bob"], async () => {
  const target = state.aliceMessage;
  const key = "👍";
  note("bob reacts");
  const { event_id } = await clients.bob.sendEvent(state.roomId, "m.reaction", {
    "m.relates_to": { rel_type: "m.annotation", event_id: target, key },
  });
  const ev = await until("alice waits for the m.annotation reaction", () => {
    const e = seen.alice.get(event_id);
    const rel = e?.getRelation();
    return e && e.getType() === "m.reaction" && rel?.rel_type === "m.annotation" && rel.event_id === target && rel.key === key ? e : null;
  });
  return `alice sees bob's ${key} on ${target} (sent as ${ev.getWireType()})`;
});

plan("back-pagination", ["message-alice-to-bob"], async () => {
  const roomId = state.roomId;
  // bob's client stops; alice sends the history; a fresh client for bob's device (its crypto
  // store kept, its sync state new) starts with a one-event timeline and paginates backwards.
  note("bob's client stops");
  clients.bob.stopClient();
  const sent = [];
  for (let i = 1; i <= HISTORY; i++) {
    note(`alice sends history message ${i}/${HISTORY}`);
    const body = `history ${String(i).padStart(2, "0")}/${HISTORY} ${tag}`;
    const { event_id } = await clients.alice.sendMessage(roomId, { msgtype: "m.text", body });
    sent.push({ id: event_id, body });
  }
  const fresh = makeClient("bob");
  await fresh.initRustCrypto({ useIndexedDB: true, cryptoDatabasePrefix: `real-client-${users.bob.localpart}` });
  await startSyncing("bob", { initialSyncLimit: 1 });
  const room = await until("the fresh client waits for the room", () => fresh.getRoom(roomId));
  const timeline = room.getLiveTimeline();
  const ids = new Set(sent.map((s) => s.id));
  const have = () => timeline.getEvents().filter((e) => ids.has(e.getId()));
  let pages = 0;
  while (have().length < HISTORY) {
    note(`the fresh client paginates backwards (page ${pages + 1}, ${have().length}/${HISTORY} found)`);
    const more = await fresh.paginateEventTimeline(timeline, { backwards: true, limit: 10 });
    pages++;
    if (!more) break;
    if (pages > 20) break;
  }
  const found = have();
  if (found.length !== HISTORY) {
    throw new StepFailure(`after ${pages} page(s) backwards the fresh client has ${found.length} of the ${HISTORY} messages`);
  }
  const order = found.map((e) => e.getId());
  const expected = sent.map((s) => s.id);
  if (order.join() !== expected.join()) {
    const at = order.findIndex((id, i) => id !== expected[i]);
    throw new StepFailure(`the messages come in another order: position ${at + 1} is ${order[at]}, sent as ${expected[at]}`);
  }
  await until("the fresh client decrypts the paginated messages", async () => {
    await Promise.all(found.map((e) => fresh.decryptEventIfNeeded(e)));
    const wrong = found.filter((e, i) => e.getContent().body !== sent[i].body);
    if (wrong.length) {
      const failed = wrong.filter((e) => e.isDecryptionFailure());
      note(`${wrong.length} message(s) not decrypted to the sent body${failed.length ? ` (${failed[0].decryptionFailureReason})` : ""}`);
    }
    return wrong.length === 0;
  }, 200);
  return `${HISTORY} encrypted messages, all found in order after ${pages} page(s) of /messages, all decrypted`;
}, Math.max(STEP_TIMEOUT, 60000));

plan("cross-signing-reset", ["cross-signing-setup"], async () => {
  // Replacing existing cross-signing keys MUST go through user-interactive auth (spec 1.11+):
  // alice resets hers, answers the server's challenge with her password, and bob then finds
  // her new master key. Last of the steps: it changes alice's identity.
  const a = users.alice;
  let challenge = null;
  note("alice resets her cross-signing keys");
  await clients.alice.getCrypto().bootstrapCrossSigning({
    setupNewCrossSigning: true,
    authUploadDeviceSigningKeys: async (makeRequest) => {
      try {
        await makeRequest(null);
      } catch (err) {
        if (err?.httpStatus !== 401 || !Array.isArray(err.data?.flows)) throw err;
        challenge = err.data;
        const ok = err.data.flows.some((f) => f.stages?.length === 1 && f.stages[0] === "m.login.password");
        if (!ok) throw new StepFailure(`no m.login.password flow for replacing the keys: ${JSON.stringify(err.data.flows)}`);
        note("alice answers the challenge with her password");
        await makeRequest({
          type: "m.login.password",
          identifier: { type: "m.id.user", user: a.userId },
          password,
          session: err.data.session,
        });
      }
    },
  });
  const master = await clients.alice.getCrypto().getCrossSigningKeyId();
  if (!challenge) {
    throw new StepFailure(
      "the server replaced alice's existing cross-signing keys without user-interactive auth (POST /keys/device_signing/upload answered 200 with no auth; the spec says it MUST ask)",
    );
  }
  if (!master || master === state.aliceMaster) throw new StepFailure(`alice's client has master key ${master} after the reset`);
  await until("bob queries alice's new master key", async () => {
    const q = await raw("bob", users.bob.accessToken, "POST", "/keys/query", { device_keys: { [a.userId]: [] } });
    const now = Object.keys(q.json?.master_keys?.[a.userId]?.keys ?? {})[0];
    note(`bob's /keys/query gives alice's master key ${now ?? "none"}, her new one is ed25519:${master}`);
    return now === `ed25519:${master}`;
  }, 250);
  return `the server asked user-interactive auth (flows ${challenge.flows.map((f) => f.stages.join("+")).join(", ")}), took alice's password, and bob sees her new master key`;
});

// ---------------------------------------------------------------------------------------------

function shutdown() {
  for (const client of started) {
    try {
      client.stopClient();
    } catch {
      /* already stopped */
    }
  }
}

const overall = setTimeout(() => {
  for (const s of allSteps) {
    if (!results.has(s.id)) emit(s.id, "FAIL", 0, `not finished: the whole check ran out of its ${TOTAL_TIMEOUT / 1000} s`);
  }
  shutdown();
  process.exit(1);
}, TOTAL_TIMEOUT);

print(`# real-client ${CLIENT} ${VERSION} with @matrix-org/matrix-sdk-crypto-wasm ${pkgVersion("@matrix-org/matrix-sdk-crypto-wasm")}, node ${process.version}, against ${baseUrl}`);
for (const s of allSteps) await step(s);
clearTimeout(overall);
shutdown();
const failed = allSteps.filter((s) => results.get(s.id) !== "PASS").length;
// The SDK keeps timers and sockets open for a while after stopClient: leave now.
process.exit(failed ? 1 : 0);
