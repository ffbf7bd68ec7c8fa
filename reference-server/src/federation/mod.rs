//! Federation: the server-server API. `client` makes this server's requests to other servers
//! (HTTPS, X-Matrix signed, their keys fetched, checked and kept until they expire), `inbound`
//! answers theirs (every request's signature checked before anything else), and `sender`
//! delivers this server's events and EDUs to the servers in each room, one queue per
//! destination. What the rules say of a PDU is the core's (`mxconform-pdu`); where a received
//! PDU goes in a room is the state's (`state::remote`).

pub mod backfill;
pub mod client;
pub mod discovery;
pub mod hierarchy;
pub mod inbound;
pub mod joins;
pub mod media;
pub mod policy;
pub mod sender;

use std::collections::HashMap;
use std::sync::Mutex;

use mxconform_pdu::keys::ServerKeys;

/// How this server federates.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// Which certificates of the servers it calls it accepts.
    pub trust: Trust,
    /// The DNS server to ask where other servers are (SRV records, and host addresses);
    /// `None`: the system's.
    pub dns: Option<std::net::SocketAddr>,
    /// Notaries asked for a server's keys when the server itself does not give them.
    pub notaries: Vec<String>,
}

/// The certificates this server accepts from the servers it calls.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Certificates issued by one of these authorities (PEM), and only those.
    Authorities(Vec<String>),
    /// Any certificate, unverified (tests against servers with self-made certificates).
    Insecure,
}

/// A server's federation machinery, beside its state.
pub struct Federation {
    pub client: client::Client,
    /// Other servers' keys, by server name, as last fetched (until `valid_until_ts`), with
    /// the document as published (the notary passes it on).
    keys: Mutex<HashMap<String, (ServerKeys, serde_json::Value)>>,
    /// The answers to transactions received, by (origin, transaction id): a retried
    /// transaction gets the same answer and changes nothing (the latest 10,000 kept).
    transactions: Mutex<TransactionLog>,
    pub sender: sender::Sender,
    /// Notaries trusted for other servers' keys ([`FederationConfig::notaries`]).
    pub notaries: Vec<String>,
}

/// Answers to received transactions, oldest dropped first.
#[derive(Default)]
struct TransactionLog {
    answers: HashMap<(String, String), serde_json::Value>,
    order: std::collections::VecDeque<(String, String)>,
}

const TRANSACTIONS_KEPT: usize = 10_000;

impl Federation {
    pub fn new(config: &FederationConfig) -> Result<Federation, String> {
        Ok(Federation {
            client: client::Client::new(&config.trust, config.dns)?,
            keys: Mutex::new(HashMap::new()),
            transactions: Mutex::new(TransactionLog::default()),
            sender: sender::Sender::default(),
            notaries: config.notaries.clone(),
        })
    }

    /// A request to `dest`, signed (X-Matrix) as this server with its signing key.
    pub async fn request(
        &self,
        server: &crate::Server,
        dest: &str,
        method: &str,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<client::Answer, String> {
        let key = server
            .read(|s| s.signing_key.clone())
            .ok_or("this server has no signing key")?;
        self.client
            .request(
                &server.config.server_name,
                &key,
                dest,
                method,
                path_and_query,
                body,
            )
            .await
    }

    fn transaction_answer(&self, origin: &str, txn: &str) -> Option<serde_json::Value> {
        let log = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
        log.answers
            .get(&(origin.to_string(), txn.to_string()))
            .cloned()
    }

    fn remember_transaction(&self, origin: &str, txn: &str, answer: serde_json::Value) {
        let mut log = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (origin.to_string(), txn.to_string());
        if log.answers.insert(key.clone(), answer).is_none() {
            log.order.push_back(key);
        }
        while log.order.len() > TRANSACTIONS_KEPT {
            if let Some(old) = log.order.pop_front() {
                log.answers.remove(&old);
            }
        }
    }
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Federation")
    }
}
