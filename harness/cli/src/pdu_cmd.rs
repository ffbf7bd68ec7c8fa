//! `mxconform pdu`: the room-version core on the command line, for people debugging
//! federation and for checks against other servers. JSON Lines on standard input, one output
//! line per input line (a line that cannot be handled gives `{"error": ...}` and a non-zero
//! exit at the end), except `verify`, `auth` and `resolve`, which say what they read.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mxconform_pdu::build::{self, Origin};
use mxconform_pdu::state_res::{self, StateMap};
use mxconform_pdu::version::EventIdFormat;
use mxconform_pdu::{auth, canonical, hash, pdu, redact, Pdu, RoomVersion, SigningKey, VerifyKey};
use serde_json::{json, Value};

const EXAMPLES: &str = "\
Examples:
  echo '{\"b\":1,\"a\":\"x\"}' | mxconform pdu canonical
      {\"a\":\"x\",\"b\":1}
  mxconform pdu id --room-version 12 < events.jsonl
      $dGhlIHJlZmVyZW5jZSBoYXNo...   (one id per event)
  mxconform pdu redact --room-version 11 < events.jsonl
  mxconform pdu verify --room-version 10 --key example.org ed25519:a_Abc 'pAbC...' < event.json
      ok: $id...: content hash matches; signed by example.org
  mxconform pdu keygen > signing.key
  mxconform pdu sign --room-version 10 --server-name example.org --signing-key signing.key < unsigned.jsonl
  mxconform pdu auth --room-version 10 --auth-events auth.json < event.json
      allow   |   reject: rule 4.3.3 (member.join.banned): @bob:example.org is banned
  mxconform pdu resolve --room-version 12 --events events.json --state-sets sets.json
      {\"m.room.member\":{\"@alice:example.org\":\"$...\"},...}
";

#[derive(Subcommand)]
#[command(after_help = EXAMPLES)]
pub enum PduCommand {
    /// The canonical JSON of each input value (with --room-version 6 or later, values that
    /// are not canonical JSON are refused, naming the JSON pointer).
    #[command(
        after_help = "Example:\n  echo '{\"b\":1,\"a\":\"日\"}' | mxconform pdu canonical\n  {\"a\":\"日\",\"b\":1}"
    )]
    Canonical {
        #[arg(long)]
        room_version: Option<String>,
    },
    /// The event id of each PDU (v1-2: its `event_id`; v3 on: from its reference hash).
    #[command(after_help = "Example:\n  mxconform pdu id --room-version 11 < events.jsonl")]
    Id {
        #[arg(long)]
        room_version: String,
    },
    /// Each PDU redacted by its room version's algorithm, as canonical JSON.
    #[command(after_help = "Example:\n  mxconform pdu redact --room-version 9 < events.jsonl")]
    Redact {
        #[arg(long)]
        room_version: String,
    },
    /// Checks one PDU: its format, the signatures its room version requires (with the given
    /// keys), and its content hash. Exit 0 when all pass; otherwise a line naming the check.
    #[command(
        after_help = "Example:\n  mxconform pdu verify --room-version 10 --key example.org ed25519:a_Abc pAbCdEf... < event.json"
    )]
    Verify {
        #[arg(long)]
        room_version: String,
        /// A server's public key: SERVER KEY_ID BASE64_PUBLIC_KEY (repeatable).
        #[arg(long, num_args = 3, value_names = ["SERVER", "KEY_ID", "BASE64_PUBLIC_KEY"], action = clap::ArgAction::Append)]
        key: Vec<String>,
    },
    /// Adds the content hash and the server's signature to each PDU (v1-2: and an event id
    /// if it has none), printed as canonical JSON.
    #[command(
        after_help = "Example:\n  mxconform pdu sign --room-version 12 --server-name example.org --signing-key signing.key < unsigned.jsonl"
    )]
    Sign {
        #[arg(long)]
        room_version: String,
        #[arg(long)]
        server_name: String,
        /// A key file: `ed25519 <version> <base64 seed>` (what `pdu keygen` writes, and
        /// Synapse's signing key file).
        #[arg(long)]
        signing_key: PathBuf,
    },
    /// Accepts or rejects each PDU against its auth events (the auth-events checks, then the
    /// rules with those events as the state): `allow`, or `reject: rule N (name): reason`.
    #[command(
        after_help = "Example:\n  mxconform pdu auth --room-version 10 --auth-events auth.json < event.json\n  reject: rule 4.3.7 (member.join.not_allowed): join rule \"invite\" does not let @bob:example.org in (membership none)"
    )]
    Auth {
        #[arg(long)]
        room_version: String,
        /// A JSON array of PDUs: the auth events (and, for v12, the create event).
        #[arg(long)]
        auth_events: PathBuf,
        /// Keys to check `join_authorised_via_users_server` signatures with: SERVER KEY_ID
        /// BASE64_PUBLIC_KEY (repeatable). Without any, such signatures are taken as valid.
        #[arg(long, num_args = 3, value_names = ["SERVER", "KEY_ID", "BASE64_PUBLIC_KEY"], action = clap::ArgAction::Append)]
        key: Vec<String>,
    },
    /// The resolved state of several state sets, as {type: {state_key: event_id}}.
    #[command(
        after_help = "Example:\n  mxconform pdu resolve --room-version 12 --events events.json --state-sets sets.json\n\n--events: a JSON array of every PDU needed (the state sets' events and their auth chains);\n--state-sets: a JSON array of {type: {state_key: event_id}} maps."
    )]
    Resolve {
        #[arg(long)]
        room_version: String,
        #[arg(long)]
        events: PathBuf,
        #[arg(long)]
        state_sets: PathBuf,
    },
    /// Prints a new ed25519 signing key in the key file format.
    Keygen {
        /// The key version (default `a_` and four random characters).
        #[arg(long)]
        version: Option<String>,
    },
}

fn version(id: &str) -> Result<&'static RoomVersion> {
    RoomVersion::get(id)
        .with_context(|| format!("room version {id:?} is not one of the spec's versions 1-12"))
}

/// Runs `f` on each line of standard input, printing its output line; a failure prints
/// `{"error": ...}` and makes the exit status 1.
fn each_line(mut f: impl FnMut(Value) -> Result<String>) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = false;
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let result = serde_json::from_str::<Value>(&line)
            .with_context(|| format!("line {}: not JSON", n + 1))
            .and_then(&mut f);
        match result {
            Ok(text) => writeln!(out, "{text}")?,
            Err(e) => {
                failed = true;
                writeln!(
                    out,
                    "{}",
                    json!({"error": format!("line {}: {e:#}", n + 1)})
                )?;
            }
        }
    }
    out.flush()?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn one_pdu_from_stdin() -> Result<Value> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("reading standard input")?;
    serde_json::from_str(text.trim()).context("standard input is not one JSON PDU")
}

/// `--key SERVER KEY_ID BASE64` triples as a lookup.
fn key_ring(triples: &[String]) -> Result<HashMap<(String, String), VerifyKey>> {
    let mut ring = HashMap::new();
    for t in triples.chunks(3) {
        let [server, key_id, public] = t else {
            bail!("--key takes SERVER KEY_ID BASE64_PUBLIC_KEY");
        };
        let key = VerifyKey::from_base64(key_id, public)
            .with_context(|| format!("--key {server} {key_id}: not an ed25519 public key"))?;
        ring.insert((server.clone(), key_id.clone()), key);
    }
    Ok(ring)
}

fn pdus_of(v: &RoomVersion, value: Value, what: &str) -> Result<Vec<Pdu>> {
    let Value::Array(items) = value else {
        bail!("{what} must be a JSON array of PDUs");
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, e)| Pdu::from_json(v, e).with_context(|| format!("{what}[{i}]")))
        .collect()
}

pub fn run(cmd: PduCommand) -> Result<ExitCode> {
    match cmd {
        PduCommand::Canonical { room_version } => {
            let v = room_version.as_deref().map(version).transpose()?;
            each_line(|value| {
                if v.is_some_and(|v| v.strict_canonical_json) {
                    canonical::validate(&value)?;
                }
                Ok(canonical::encode(&value))
            })
        }
        PduCommand::Id { room_version } => {
            let v = version(&room_version)?;
            each_line(|value| {
                hash::event_id(v, &value)
                    .context("a room version 1-2 PDU carries its event_id; this one has none")
            })
        }
        PduCommand::Redact { room_version } => {
            let v = version(&room_version)?;
            each_line(|value| Ok(canonical::encode(&redact::redact(v, &value))))
        }
        PduCommand::Verify { room_version, key } => {
            let v = version(&room_version)?;
            let ring = key_ring(&key)?;
            let value = one_pdu_from_stdin()?;
            let p = match Pdu::from_json(v, value) {
                Ok(p) => p,
                Err(e) => {
                    println!("format check failed at {:?}: {}", e.path, e.reason);
                    return Ok(ExitCode::from(1));
                }
            };
            let lookup = |server: &str, key_id: &str| {
                ring.get(&(server.to_string(), key_id.to_string()))
                    .map(|k| (k.clone(), i64::MAX))
            };
            match pdu::verify(v, &p, &lookup) {
                Ok(()) => {
                    println!(
                        "ok: {}: content hash matches; signed by {}",
                        p.event_id,
                        p.required_signers(v).join(", ")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        PduCommand::Sign {
            room_version,
            server_name,
            signing_key,
        } => {
            let v = version(&room_version)?;
            let text = std::fs::read_to_string(&signing_key)
                .with_context(|| format!("reading {}", signing_key.display()))?;
            let key = SigningKey::parse_file(&text)
                .with_context(|| format!("{} is not a signing key file", signing_key.display()))?;
            let origin = Origin {
                server_name: &server_name,
                key: &key,
            };
            each_line(|mut value| {
                if !value.is_object() {
                    bail!("a PDU is a JSON object");
                }
                if v.event_ids == EventIdFormat::Opaque && value.get("event_id").is_none() {
                    let mut bytes = [0u8; 12];
                    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
                    value["event_id"] = json!(format!(
                        "${}:{server_name}",
                        mxconform_pdu::base64::encode_url_safe(&bytes)
                    ));
                }
                if v.strict_canonical_json {
                    canonical::validate(&value)?;
                }
                build::hash_and_sign(v, &mut value, origin);
                Ok(canonical::encode(&value))
            })
        }
        PduCommand::Auth {
            room_version,
            auth_events,
            key,
        } => {
            let v = version(&room_version)?;
            let ring = key_ring(&key)?;
            let known = pdus_of(v, read_json(&auth_events)?, "--auth-events")?;
            let by_id: HashMap<&str, &Pdu> =
                known.iter().map(|p| (p.event_id.as_str(), p)).collect();
            let rejected = std::cell::Cell::new(false);
            let code = each_line(|value| {
                let p = Pdu::from_json(v, value)?;
                let auth: Vec<Option<&Pdu>> = p
                    .auth_events
                    .iter()
                    .map(|a| by_id.get(a.as_str()).copied())
                    .collect();
                let create = by_id
                    .get(hash::create_id_of_room(&p.room_id).as_str())
                    .copied();
                let signed_by = |server: &str| {
                    if ring.is_empty() {
                        return true;
                    }
                    let redacted = p.redacted(v);
                    let lookup =
                        |id: &str| ring.get(&(server.to_string(), id.to_string())).cloned();
                    mxconform_pdu::sign::verify_signed_by(&redacted, server, &lookup).is_ok()
                };
                match auth::authorize_by_auth_events(v, &p, &auth, &|_| false, create, &signed_by) {
                    Ok(()) => Ok("allow".to_string()),
                    Err(r) => {
                        rejected.set(true);
                        Ok(format!(
                            "reject: rule {} ({}): {}",
                            r.number,
                            r.rule.name(),
                            r.reason
                        ))
                    }
                }
            })?;
            Ok(if rejected.get() {
                ExitCode::from(1)
            } else {
                code
            })
        }
        PduCommand::Resolve {
            room_version,
            events,
            state_sets,
        } => {
            let v = version(&room_version)?;
            let known = pdus_of(v, read_json(&events)?, "--events")?;
            let map: HashMap<String, Pdu> =
                known.into_iter().map(|p| (p.event_id.clone(), p)).collect();
            let Value::Array(sets) = read_json(&state_sets)? else {
                bail!(
                    "--state-sets must be a JSON array of {{type: {{state_key: event_id}}}} maps"
                );
            };
            let mut parsed: Vec<StateMap> = Vec::new();
            for (i, set) in sets.iter().enumerate() {
                let mut s = StateMap::new();
                for (kind, keys) in set
                    .as_object()
                    .with_context(|| format!("--state-sets[{i}] is not an object"))?
                {
                    for (key, id) in keys
                        .as_object()
                        .with_context(|| format!("--state-sets[{i}].{kind} is not an object"))?
                    {
                        let id = id.as_str().with_context(|| {
                            format!("--state-sets[{i}].{kind}.{key} is not an event id")
                        })?;
                        s.insert((kind.clone(), key.clone()), id.to_string());
                    }
                }
                parsed.push(s);
            }
            let resolved = state_res::resolve(v, &parsed, &map)?;
            let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for ((kind, key), id) in resolved {
                out.entry(kind).or_default().insert(key, id);
            }
            println!("{}", canonical::encode(&serde_json::to_value(out)?));
            Ok(ExitCode::SUCCESS)
        }
        PduCommand::Keygen { version } => {
            let key = SigningKey::generate(version.as_deref())?;
            print!("{}", key.to_file_line());
            eprintln!("public key {}: {}", key.key_id(), key.public_base64());
            Ok(ExitCode::SUCCESS)
        }
    }
}
