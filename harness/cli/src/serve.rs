//! `mxconform serve`: the reference server as a homeserver of its own, its options (flags, or
//! a TOML file through `--config`), logs, federation listener and trust.

use super::*;

#[derive(clap::Args)]
#[command(args_override_self = true)]
pub(crate) struct ServeArgs {
    /// A TOML file of these options (`server_name = "example.org"`, `turn_uri = ["turn:..."]`,
    /// `in_memory = true`); flags given too override it (repeatable ones add to it). Secrets
    /// belong here or in the environment, not on the command line.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8008")]
    addr: std::net::SocketAddr,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// The database file (created if needed).
    #[arg(
        long,
        default_value = "mxconform-data/homeserver.db",
        conflicts_with = "in_memory"
    )]
    db: PathBuf,
    /// Keep everything in memory (gone when the server stops).
    #[arg(long)]
    in_memory: bool,
    /// `process`: commits survive the server being killed; `power`: also a power cut (fsync per commit).
    #[arg(long, value_enum, default_value = "process")]
    durability: DurabilityArg,
    /// A TURN server URI handed to clients (repeatable); without one, getTurnServer answers 404.
    #[arg(long = "turn-uri")]
    turn_uris: Vec<String>,
    /// The TURN server's static username.
    #[arg(long, default_value = "")]
    turn_username: String,
    /// The TURN server's static password (better in the config file or MXCONFORM_TURN_PASSWORD:
    /// a command line is visible to every user of the machine).
    #[arg(
        long,
        default_value = "",
        env = "MXCONFORM_TURN_PASSWORD",
        hide_env_values = true
    )]
    turn_password: String,
    /// Seconds the TURN credentials stay valid.
    #[arg(long, default_value_t = 86400)]
    turn_ttl: u64,
    /// An application-service registration file (YAML, as other homeservers read; repeatable).
    #[arg(long = "appservice")]
    appservices: Vec<PathBuf>,
    /// The URL clients reach this server at, for the well-known and links in mail (default:
    /// the address it listens on).
    #[arg(long)]
    public_baseurl: Option<String>,
    /// A server administrator's user id (repeatable): may look up, lock and suspend accounts.
    #[arg(long = "admin")]
    admins: Vec<String>,
    /// An SMTP relay (host:port) for e-mail validation; without one, e-mail requestToken
    /// answers M_THREEPID_MEDIUM_NOT_SUPPORTED.
    #[arg(long)]
    smtp_relay: Option<String>,
    /// How the relay is reached: STARTTLS when offered (`opportunistic`), STARTTLS or nothing
    /// (`required`), TLS from the start (`wrapper`, port 465), or plain text (`none`).
    #[arg(long, value_enum, default_value = "opportunistic")]
    smtp_tls: SmtpTlsArg,
    /// The relay's user name, when it wants one (with MXCONFORM_SMTP_PASSWORD or the config
    /// file's smtp_password).
    #[arg(long, requires = "smtp_password")]
    smtp_user: Option<String>,
    /// The relay's password (better in the config file or MXCONFORM_SMTP_PASSWORD).
    #[arg(long, env = "MXCONFORM_SMTP_PASSWORD", hide_env_values = true)]
    smtp_password: Option<String>,
    /// An authority (PEM) trusted beside the system's for this server's HTTPS and SMTP
    /// requests to other services: application services, CAS, SMS gateways, previewed pages,
    /// the mail relay (repeatable).
    #[arg(long = "outbound-ca", value_name = "PEM")]
    outbound_ca: Vec<PathBuf>,
    /// The sender address of the mail this server sends.
    #[arg(long, default_value = "noreply@localhost")]
    mail_from: String,
    /// Offer URL previews (of public addresses, and of those --outbound-allow names).
    #[arg(long)]
    url_preview: bool,
    /// An internal address (loopback, private, link-local...) that requests made on users'
    /// behalf may reach all the same: pages to preview, push gateways (repeatable; every
    /// other internal address is refused where the connection is made).
    #[arg(
        long = "outbound-allow",
        alias = "url-preview-allow",
        value_name = "IP"
    )]
    outbound_allow: Vec<std::net::IpAddr>,
    /// An SMS gateway for phone-number validation (identity-service API
    /// `/_matrix/identity/api/v1/validate/msisdn/...`, plain HTTP).
    #[arg(long)]
    msisdn_delegate: Option<String>,
    /// The server's signing key, a key file (`ed25519 <version> <base64 seed>`, as Synapse's
    /// signing.key). Without it the server makes one at its first start and keeps it in the
    /// database.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// How long a redacted event's original content stays in the database before it is
    /// purged: a number with s, m, h or d (`0s` purges at once).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    redaction_retention: std::time::Duration,
    /// A CAS server's URL (`<url>/login`, `<url>/proxyValidate`) for single sign-on, offered as
    /// identity provider `cas`.
    #[arg(long)]
    cas_url: Option<String>,
    /// Federate: serve the server-server API over TLS on this address (other servers reach
    /// this one at its server name, so make the name say where: `127.0.0.1:8448`, or a host
    /// whose port 8448 or well-known leads here).
    #[arg(long)]
    federation_addr: Option<std::net::SocketAddr>,
    /// The federation listener's certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The federation listener's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Instead of --tls-cert/--tls-key: issue the listener a certificate for the server name's
    /// host from the authority in DIR (made there if absent; `mxconform federation-ca`), for
    /// test federations whose servers all trust that authority.
    #[arg(long, conflicts_with = "tls_cert")]
    tls_authority: Option<PathBuf>,
    /// Instead of a certificate: make a self-signed one for the server name's host at start
    /// (tests; the other servers then need --federation-insecure)
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_authority"])]
    tls_self_signed: bool,
    /// Trust the certificates this authority issued (PEM) when calling other servers
    /// (repeatable); without one (nor --federation-insecure), only --tls-authority's.
    #[arg(long = "federation-ca")]
    federation_ca: Vec<PathBuf>,
    /// Accept any certificate from other servers (tests only).
    #[arg(long, conflicts_with = "federation_ca")]
    federation_insecure: bool,
    /// The DNS server (IP:port) to ask where other servers are (SRV records and host
    /// addresses); default the system's
    #[arg(long, value_name = "ADDR")]
    dns_server: Option<std::net::SocketAddr>,
    /// A notary (server name) to ask for another server's keys when that server does not
    /// give them itself (repeatable)
    #[arg(long = "key-notary", value_name = "SERVER")]
    key_notary: Vec<String>,
    /// What to log (a tracing filter: `info`, `warn`, `mxconform_server::request=off,info`);
    /// default RUST_LOG, else `info` (a line per request, warnings for failed deliveries)
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// How log lines look
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Threads that answer requests (default: half the machine's cores, at least one). Writes
    /// take the state's one lock in turn, so on a small machine a second thread adds cross-core
    /// wake-ups on every request sooner than parallel work (measured on 2 cores: one thread
    /// gives more concurrent sends and a quicker /sync wake-up); password hashing runs on
    /// threads of its own either way.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SmtpTlsArg {
    None,
    Opportunistic,
    Required,
    Wrapper,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Process,
    Power,
}

/// `serve --config FILE`: the file's options as flags placed before those of the command
/// line (which then override them). Keys are the flags' names (`server_name` or
/// `server-name`); a string or number is the value, `true` the bare flag, an array one flag per
/// item.
pub(crate) fn with_config_file(argv: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    if argv.get(1).is_none_or(|a| a != "serve") {
        return Ok(argv);
    }
    let mut file = None;
    let mut rest = Vec::new();
    let mut it = argv.into_iter();
    let (program, serve) = (it.next(), it.next());
    while let Some(a) = it.next() {
        let text = a.to_string_lossy().to_string();
        if text == "--config" {
            file = Some(it.next().context("--config needs a file")?);
        } else if let Some(f) = text.strip_prefix("--config=") {
            file = Some(f.into());
        } else {
            rest.push(a);
        }
    }
    let mut out: Vec<std::ffi::OsString> = program.into_iter().chain(serve).collect();
    if let Some(file) = file {
        let path = PathBuf::from(&file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("the config file {} is not TOML", path.display()))?;
        for (key, value) in table {
            let flag = format!("--{}", key.replace('_', "-"));
            let items = match value {
                toml::Value::Array(items) => items,
                other => vec![other],
            };
            for item in items {
                match item {
                    toml::Value::Boolean(true) => out.push(flag.clone().into()),
                    toml::Value::Boolean(false) => {}
                    toml::Value::String(v) => out.extend([flag.clone().into(), v.into()]),
                    toml::Value::Integer(n) => {
                        out.extend([flag.clone().into(), n.to_string().into()])
                    }
                    toml::Value::Float(n) => {
                        out.extend([flag.clone().into(), n.to_string().into()])
                    }
                    other => anyhow::bail!(
                        "the config file {}: `{key}` is a {}, not a flag's value",
                        path.display(),
                        other.type_str()
                    ),
                }
            }
        }
    }
    out.extend(rest);
    Ok(out)
}

/// `90s`, `15m`, `12h`, `7d`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number followed by s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

pub(crate) fn serve(args: ServeArgs) -> Result<ExitCode> {
    init_logs(args.log_level.as_deref(), Some("info"), args.log_format)?;
    let mut config = mxconform_server::Config::in_memory(&args.server_name);
    config.password_cost = mxconform_server::PasswordCost::Standard;
    config.durability = match args.durability {
        DurabilityArg::Process => mxconform_server::store::Durability::Process,
        DurabilityArg::Power => mxconform_server::store::Durability::Power,
    };
    if !args.in_memory {
        config.db = Some(args.db.clone());
    }
    if !args.turn_uris.is_empty() {
        config.turn = Some(mxconform_server::Turn {
            uris: args.turn_uris.clone(),
            username: args.turn_username.clone(),
            password: args.turn_password.clone(),
            ttl: args.turn_ttl,
        });
    }
    let files: Vec<(PathBuf, Option<String>)> =
        args.appservices.iter().map(|p| (p.clone(), None)).collect();
    config.appservices = load_appservices(&files, &args.server_name)?;
    config.admins = args.admins.clone();
    config.public_base_url = args.public_baseurl.clone();
    config.redaction_retention = args.redaction_retention;
    if let Some(path) = &args.signing_key {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the signing key {}", path.display()))?;
        config.signing_key =
            Some(mxconform_pdu::SigningKey::parse_file(&text).map_err(|e| {
                anyhow::anyhow!("{} is not a signing key file: {e}", path.display())
            })?);
    }
    config.url_preview = args.url_preview;
    config.outbound_allow = args.outbound_allow.clone();
    config.cas = args
        .cas_url
        .clone()
        .map(|server_url| mxconform_server::Cas {
            server_url,
            display_name: "CAS".into(),
        });
    config.mail = args.smtp_relay.clone().map(|relay| mxconform_server::Mail {
        relay,
        from: args.mail_from.clone(),
        tls: match args.smtp_tls {
            SmtpTlsArg::None => mxconform_server::outbound::SmtpTls::None,
            SmtpTlsArg::Opportunistic => mxconform_server::outbound::SmtpTls::Opportunistic,
            SmtpTlsArg::Required => mxconform_server::outbound::SmtpTls::Required,
            SmtpTlsArg::Wrapper => mxconform_server::outbound::SmtpTls::Wrapper,
        },
        credentials: args.smtp_user.clone().zip(args.smtp_password.clone()),
    });
    for ca in &args.outbound_ca {
        config.outbound_ca.push(
            std::fs::read_to_string(ca)
                .with_context(|| format!("reading the authority {}", ca.display()))?,
        );
    }
    if !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}, which is not a loopback address",
            args.addr
        );
    }
    // Federation: the listener's certificate, and whom this server trusts when it calls.
    let mut federation_tls = None;
    if let Some(addr) = args.federation_addr {
        let host = args
            .server_name
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(args.server_name.as_str(), |(h, _)| h)
            .to_string();
        let mut trusted: Vec<String> = Vec::new();
        for ca in &args.federation_ca {
            trusted.push(
                std::fs::read_to_string(ca)
                    .with_context(|| format!("reading the authority {}", ca.display()))?,
            );
        }
        let tls = match (&args.tls_cert, &args.tls_key, &args.tls_authority) {
            (Some(c), Some(k), _) => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                };
                mxconform_server::tls_config(&read(c)?, &read(k)?).map_err(anyhow::Error::msg)?
            }
            (_, _, Some(dir)) => {
                let ca = mxconform_harness::federation::tls::Authority::load_or_create(dir)
                    .map_err(anyhow::Error::msg)?;
                if trusted.is_empty() {
                    trusted.push(ca.cert_pem.clone());
                }
                let (cert, key) = ca.issue_pem(&[&host]).map_err(anyhow::Error::msg)?;
                mxconform_server::tls_config(&cert, &key).map_err(anyhow::Error::msg)?
            }
            _ if args.tls_self_signed => {
                let (cert, key) = mxconform_harness::federation::tls::self_signed_pem(&host)
                    .map_err(anyhow::Error::msg)?;
                mxconform_server::tls_config(&cert, &key).map_err(anyhow::Error::msg)?
            }
            _ => anyhow::bail!(
                "--federation-addr needs the listener's certificate: --tls-cert and --tls-key, --tls-authority DIR, or --tls-self-signed"
            ),
        };
        let trust = if args.federation_insecure {
            mxconform_server::federation::Trust::Insecure
        } else if trusted.is_empty() {
            anyhow::bail!("federating needs --federation-ca PEM (or --tls-authority, or --federation-insecure)")
        } else {
            mxconform_server::federation::Trust::Authorities(trusted)
        };
        config.federation = Some(mxconform_server::federation::FederationConfig {
            trust,
            dns: args.dns_server,
            notaries: args.key_notary.clone(),
        });
        if !addr.ip().is_loopback() {
            eprintln!("warning: federation listens on {addr}, which is not a loopback address");
        }
        federation_tls = Some((addr, tls));
    }
    let server = mxconform_server::Server::open(config).map_err(anyhow::Error::msg)?;
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        usize::from,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let fed_server = server.clone();
        let running = mxconform_server::serve(server, args.addr)
            .await
            .map_err(anyhow::Error::msg)?;
        let federation = match federation_tls {
            Some((addr, tls)) => {
                let (bound, task) = mxconform_server::serve_federation(fed_server, addr, tls)
                    .await
                    .map_err(anyhow::Error::msg)?;
                Some((bound, task))
            }
            None => None,
        };
        eprintln!(
            "mxconform reference server for {} on {} ({})",
            args.server_name,
            running.url(),
            if args.in_memory {
                "in memory".to_string()
            } else {
                format!("database {}", args.db.display())
            }
        );
        if let Some((bound, _)) = &federation {
            eprintln!("federation on https://{bound}");
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        if let Some((_, t)) = federation {
            t.abort();
        }
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
