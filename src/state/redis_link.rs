//! The link to Redis for shared state: one server or a Redis Cluster,
//! connected on demand, and the one way a sync talks to either: each
//! client's commands sent in pipelines (one for a server, one per hash
//! slot for a cluster, all at once) and their replies given back in
//! client order.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use redis::cluster_routing::Slot;
use redis::{Pipeline, RedisResult, Value};

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Servers {
    /// One server (or a primary behind a virtual address).
    One(String),
    /// A Redis Cluster, by some of its nodes.
    Cluster(Vec<String>),
}

/// Pipelines of a cluster in flight at once.
const CLUSTER_PIPELINES_AT_ONCE: usize = 64;

/// A Redis server or cluster, and the connection to it while there is one.
pub struct Link {
    target: Target,
    connection: Option<Connection>,
    timeout: Duration,
}

// One per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    One(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

enum Connection {
    One(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Link {
    /// A link to `servers`, trusting the CA in `tls_ca` (PEM) for
    /// `rediss://` when given, the system's roots otherwise; nothing
    /// connects yet. Connecting and every answer time out after `timeout`.
    pub fn new(servers: &Servers, tls_ca: Option<&[u8]>, timeout: Duration) -> RedisResult<Link> {
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            root_cert: tls_ca.map(<[u8]>::to_vec),
        };
        let target = match servers {
            Servers::One(url) if tls_ca.is_some() => {
                Target::One(redis::Client::build_with_tls(url.as_str(), certificates())?)
            }
            Servers::One(url) => Target::One(redis::Client::open(url.as_str())?),
            Servers::Cluster(urls) => {
                let mut builder =
                    redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        // A pipeline retried after a redirect could apply
                        // its increments twice; the next sync goes to
                        // the slot's new node instead.
                        .retries(0);
                if tls_ca.is_some() {
                    builder = builder.certs(certificates());
                }
                Target::Cluster(builder.build()?)
            }
        };
        Ok(Link {
            target,
            connection: None,
            timeout,
        })
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Forget the connection (after an error): the next use connects anew.
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    /// Connect unless connected.
    pub async fn connect(&mut self) -> RedisResult<()> {
        if self.connection.is_some() {
            return Ok(());
        }
        self.connection = Some(match &self.target {
            Target::One(client) => {
                let options = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                Connection::One(
                    client
                        .get_multiplexed_async_connection_with_config(&options)
                        .await?,
                )
            }
            Target::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
        });
        Ok(())
    }

    /// Ask whether Redis is still there.
    pub async fn ping(&mut self) -> RedisResult<()> {
        self.connect().await?;
        let ping = redis::cmd("PING");
        match self.connection.as_mut() {
            Some(Connection::One(c)) => ping.query_async(c).await,
            Some(Connection::Cluster(c)) => ping.query_async(c).await,
            None => Ok(()),
        }
    }

    /// Send the commands of every client (`add` puts client `i`'s, all on
    /// its key `keys[i]`, in a pipeline and tells how many replies they
    /// give), and give back the replies in client order. One client's
    /// failing command gives an error reply in its place; a cluster slot
    /// whose pipeline failed gives `Nil` in place of its clients' replies
    /// (and its error in the answer); a failure of the link fails the
    /// whole exchange.
    pub async fn exchange(
        &mut self,
        keys: &[String],
        add: impl Fn(&mut Pipeline, usize) -> usize,
    ) -> RedisResult<Answer> {
        self.connect().await?;
        match self.connection.as_mut() {
            Some(Connection::One(c)) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for i in 0..keys.len() {
                    add(&mut pipe, i);
                }
                let replies = if pipe.is_empty() {
                    Vec::new()
                } else {
                    pipe.query_async(c).await?
                };
                Ok(Answer {
                    replies,
                    failed: None,
                })
            }
            Some(Connection::Cluster(c)) => Ok(exchange_by_slot(c, keys, add).await),
            None => Ok(Answer {
                replies: Vec::new(),
                failed: None,
            }),
        }
    }
}

/// What an exchange brought back.
pub struct Answer {
    /// Every client's replies, in client order.
    pub replies: Vec<Value>,
    /// The first error of a cluster slot whose pipeline failed: its
    /// clients' commands were sent and perhaps applied, but their replies
    /// are `Nil`.
    pub failed: Option<redis::RedisError>,
}

/// A cluster's exchange: a pipeline per hash slot (a pipeline must stay
/// in one), several in flight at once, the replies put back in client
/// order.
async fn exchange_by_slot(
    connection: &redis::cluster_async::ClusterConnection,
    keys: &[String],
    add: impl Fn(&mut Pipeline, usize) -> usize,
) -> Answer {
    let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        by_slot.entry(Slot::for_key(key)).or_default().push(i);
    }
    // Where each client's replies go in the answer.
    let mut counts = vec![0; keys.len()];
    let mut pipes = Vec::with_capacity(by_slot.len());
    for clients in by_slot.into_values() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &i in &clients {
            counts[i] = add(&mut pipe, i);
        }
        pipes.push((clients, pipe));
    }
    let mut at = Vec::with_capacity(keys.len());
    let mut total = 0;
    for n in &counts {
        at.push(total);
        total += n;
    }
    let mut replies = vec![Value::Nil; total];
    let mut sent = futures_util::stream::iter(pipes.into_iter().map(|(clients, pipe)| {
        let mut connection = connection.clone();
        async move {
            let replies: RedisResult<Vec<Value>> = if pipe.is_empty() {
                Ok(Vec::new())
            } else {
                pipe.query_async(&mut connection).await
            };
            (clients, replies)
        }
    }))
    .buffer_unordered(CLUSTER_PIPELINES_AT_ONCE);
    let mut failed = None;
    while let Some((clients, answer)) = sent.next().await {
        // Each slot stands alone: one that failed spoils only its clients.
        let mut answer = match answer {
            Ok(answer) => answer.into_iter(),
            Err(e) => {
                failed.get_or_insert(e);
                continue;
            }
        };
        for i in clients {
            for slot in &mut replies[at[i]..at[i] + counts[i]] {
                *slot = answer.next().unwrap_or(Value::Nil);
            }
        }
    }
    Answer { replies, failed }
}
