//! The store's way to its Redis, whatever the deployment: one server through
//! redis-rs's connection manager, a Redis Cluster through its cluster
//! connection (which follows MOVED/ASK redirections and topology changes),
//! or the primary that Sentinel names, asked again after a failure so that a
//! failover is followed. Each gives a [`Conn`] for commands and a pub/sub
//! connection for waits.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture,
    ServerErrorKind, TlsCertificates, TlsMode, Value,
    aio::{
        ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub,
    },
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};
use tokio::sync::OnceCell;

use super::{
    STORE,
    target::{Parsed, Target},
};
use crate::store::StoreError;

/// How often a failed call is tried again inside one call's timeout, by the
/// single-server manager and the cluster connection.
const RETRIES: u32 = 2;
/// The first pause before such a retry.
const RETRY_WAIT: Duration = Duration::from_millis(10);

/// A connection to the deployment: what the store's scripts run on.
pub(super) enum Link {
    Single {
        client: Client,
        manager: OnceCell<ConnectionManager>,
    },
    Cluster {
        client: ClusterClient,
        connection: OnceCell<ClusterConnection>,
        /// A client per seed node, for subscriptions: a cluster forwards a
        /// `PUBLISH` to every node.
        seeds: Vec<Client>,
    },
    Sentinel(Watched),
}

/// The primary that Sentinel names, and the connection to it while it works.
pub(super) struct Watched {
    /// Asks the Sentinels; one lookup at a time.
    lookup: tokio::sync::Mutex<SentinelClient>,
    /// The primary found last; dropped on an error that may mean a failover.
    primary: Mutex<Option<Primary>>,
    /// Numbers the primaries found, so that a failure on an old connection
    /// does not drop a newer one.
    found: AtomicU64,
}

#[derive(Clone)]
struct Primary {
    client: Client,
    connection: MultiplexedConnection,
    id: u64,
}

/// A connection that one call uses.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Primary {
        connection: MultiplexedConnection,
        id: u64,
    },
}

impl Link {
    /// The link to what `parsed` names; it does not connect.
    pub(super) fn new(
        parsed: Parsed,
        root_certificates: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let certificates = root_certificates.map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
        if certificates.is_some() && !parsed.tls {
            return Err(StoreError::config(
                STORE,
                "root certificates need a rediss URL",
            ));
        }
        if parsed.tls {
            // `redis` builds its rustls configuration from the process
            // default; without one, a second provider in the build would panic.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let unusable = |_| StoreError::config(STORE, "the Redis URL is not usable");
        let bad_certificates = |_| StoreError::config(STORE, "the root certificates do not parse");
        Ok(match parsed.target {
            Target::Single(info) => Self::Single {
                client: match certificates {
                    Some(certificates) => {
                        Client::build_with_tls(info, certificates).map_err(bad_certificates)?
                    }
                    None => Client::open(info).map_err(unusable)?,
                },
                manager: OnceCell::new(),
            },
            Target::Cluster(nodes) => {
                let seeds = nodes
                    .iter()
                    .map(|node| match &certificates {
                        Some(c) => Client::build_with_tls(node.clone(), c.clone()),
                        None => Client::open(node.clone()),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad_certificates)?;
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(RETRIES)
                    .min_retry_wait(millis(RETRY_WAIT))
                    .max_retry_wait(millis(timeout));
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                Self::Cluster {
                    client: builder.build().map_err(unusable)?,
                    connection: OnceCell::new(),
                    seeds,
                }
            }
            Target::Sentinel {
                sentinels,
                master,
                redis,
            } => {
                let mut builder =
                    SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)
                        .map_err(unusable)?
                        .set_client_to_redis_db(redis.db());
                if let Some(username) = redis.username() {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = redis.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if parsed.tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                }
                if let Some(certificates) = certificates {
                    builder = builder
                        .set_client_to_redis_certificates(certificates.clone())
                        .set_client_to_sentinel_certificates(certificates);
                }
                Self::Sentinel(Watched {
                    lookup: tokio::sync::Mutex::new(builder.build().map_err(bad_certificates)?),
                    primary: Mutex::new(None),
                    found: AtomicU64::new(0),
                })
            }
        })
    }

    /// The kind of deployment, for `Debug`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Single { .. } => "single",
            Self::Cluster { .. } => "cluster",
            Self::Sentinel(_) => "sentinel",
        }
    }

    /// A connection for one call; made on the first call, and again after a
    /// failure (by the manager, the cluster connection, or here for the
    /// primary that Sentinel names).
    pub(super) async fn connection(&self, timeout: Duration) -> Result<Conn, RedisError> {
        match self {
            Self::Single { client, manager } => manager
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout))
                        .set_number_of_retries(RETRIES as usize)
                        .set_min_delay(RETRY_WAIT)
                        .set_max_delay(timeout);
                    client.get_connection_manager_lazy(config)
                })
                .await
                .cloned()
                .map(Conn::Single),
            Self::Cluster {
                client, connection, ..
            } => connection
                .get_or_try_init(|| client.get_async_connection())
                .await
                .cloned()
                .map(Conn::Cluster),
            Self::Sentinel(watched) => {
                let primary = watched.primary(timeout).await?;
                Ok(Conn::Primary {
                    connection: primary.connection,
                    id: primary.id,
                })
            }
        }
    }

    /// Tells the link that a call on `conn` failed with `error` (`None`: no
    /// answer in time): a primary that Sentinel named is asked for again
    /// when the failure may mean that it is gone or no longer the primary.
    pub(super) fn failed(&self, conn: &Conn, error: Option<&RedisError>) {
        if let (Self::Sentinel(watched), Conn::Primary { id, .. }) = (self, conn)
            && error.is_none_or(may_be_failover)
        {
            let mut primary = watched.primary.lock().unwrap_or_else(|p| p.into_inner());
            if primary.as_ref().is_some_and(|p| p.id == *id) {
                *primary = None;
            }
        }
    }

    /// A pub/sub connection to a node that sees the login's commits, or
    /// `None` when none answers.
    pub(super) async fn pubsub(&self, timeout: Duration) -> Option<PubSub> {
        match self {
            Self::Single { client, .. } => client.get_async_pubsub().await.ok(),
            Self::Cluster { seeds, .. } => {
                for seed in seeds {
                    if let Ok(pubsub) = seed.get_async_pubsub().await {
                        return Some(pubsub);
                    }
                }
                None
            }
            Self::Sentinel(watched) => {
                let primary = watched.primary(timeout).await.ok()?;
                primary.client.get_async_pubsub().await.ok()
            }
        }
    }
}

impl Watched {
    /// The primary found last, or the one the Sentinels name now.
    async fn primary(&self, timeout: Duration) -> Result<Primary, RedisError> {
        if let Some(primary) = self.current() {
            return Ok(primary);
        }
        let mut lookup = self.lookup.lock().await;
        // Another call may have found it while this one waited.
        if let Some(primary) = self.current() {
            return Ok(primary);
        }
        let client = lookup.async_get_client().await?;
        drop(lookup);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let primary = Primary {
            client,
            connection,
            id: self.found.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *self.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(primary.clone());
        Ok(primary)
    }

    fn current(&self) -> Option<Primary> {
        self.primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether an error may mean that the node is gone or was demoted: the
/// connection broke, or the node refuses writes or says it is not ready.
fn may_be_failover(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
            )
        )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Primary { connection, .. } => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Primary { connection, .. } => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Primary { connection, .. } => connection.get_db(),
        }
    }
}
