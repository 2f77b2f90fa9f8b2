//! What a Redis store URL names: one server, the seed nodes of a Redis
//! Cluster, or the Sentinels that watch a primary. The URL is parsed here and
//! nowhere else; no error repeats it, and the address kept for `Debug` has no
//! user or password.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::STORE;
use crate::store::StoreError;

/// The port of a Sentinel named without one.
const SENTINEL_PORT: u16 = 26379;

/// The deployment a URL names.
pub(super) enum Target {
    /// `redis://` or `rediss://`: one server.
    Single(ConnectionInfo),
    /// `redis+cluster://HOST:PORT,HOST:PORT/`: seed nodes of a cluster, each
    /// with the URL's user and password.
    Cluster(Vec<ConnectionInfo>),
    /// `redis+sentinel://HOST:PORT,HOST:PORT/MASTER[/DB]`.
    Sentinel {
        sentinels: Vec<ConnectionAddr>,
        master: String,
        /// The user, password and database of the primary and its replicas.
        redis: RedisConnectionInfo,
    },
}

/// A parsed URL: the deployment, whether it speaks TLS, and its addresses.
pub(super) struct Parsed {
    pub(super) target: Target,
    pub(super) tls: bool,
    /// `host:port` of each node named, comma-separated, for `Debug`.
    pub(super) address: String,
}

/// The forms a Redis store URL takes, for errors.
const FORMS: &str = "the URL must start with redis://, rediss://, redis+cluster://, \
                     rediss+cluster://, redis+sentinel:// or rediss+sentinel://";

/// Parses `url`. Errors say what is wrong, never what the URL holds: the
/// parser's own errors may quote it, password included.
pub(super) fn parse(url: &str) -> Result<Parsed, StoreError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| StoreError::config(STORE, FORMS))?;
    let (tls, topology) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, ""),
        "rediss" => (true, ""),
        "redis+cluster" => (false, "cluster"),
        "rediss+cluster" => (true, "cluster"),
        "redis+sentinel" => (false, "sentinel"),
        "rediss+sentinel" => (true, "sentinel"),
        _ => return Err(StoreError::config(STORE, FORMS)),
    };
    if topology.is_empty() {
        let info = node(url)?;
        let address = address(info.addr())?;
        return Ok(Parsed {
            target: Target::Single(info),
            tls,
            address,
        });
    }
    let base = if tls { "rediss" } else { "redis" };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(StoreError::config(
            STORE,
            "the URL must name its hosts as HOST:PORT,HOST:PORT",
        ));
    }
    if topology == "cluster" {
        let seeds = hosts
            .iter()
            .map(|host| node(&format!("{base}://{userinfo}{host}/{path}")))
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.iter().any(|s| s.redis_settings().db() != 0) {
            return Err(StoreError::config(
                STORE,
                "a Redis Cluster has database 0 only",
            ));
        }
        let address = joined(seeds.iter().map(ConnectionInfo::addr))?;
        return Ok(Parsed {
            target: Target::Cluster(seeds),
            tls,
            address,
        });
    }
    let (master, db) = path.split_once('/').unwrap_or((path, ""));
    let db = db.trim_end_matches('/');
    if master.is_empty() || db.contains('/') || (!db.is_empty() && db.parse::<u32>().is_err()) {
        return Err(StoreError::config(
            STORE,
            "a Sentinel URL ends in /MASTER-NAME or /MASTER-NAME/DB",
        ));
    }
    let sentinels = hosts
        .iter()
        .map(|host| {
            let port = if has_port(host) {
                String::new()
            } else {
                format!(":{SENTINEL_PORT}")
            };
            node(&format!("{base}://{host}{port}/")).map(|info| info.addr().clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The user and password are the primary's: parsed as redis-rs parses them
    // (percent-decoding included), against the first Sentinel's address.
    let redis = node(&format!("{base}://{userinfo}{}/{db}", hosts[0]))?
        .redis_settings()
        .clone();
    let address = joined(sentinels.iter())?;
    Ok(Parsed {
        target: Target::Sentinel {
            sentinels,
            master: master.to_owned(),
            redis,
        },
        tls,
        address,
    })
}

/// One node's URL, in a form redis-rs reads.
fn node(url: &str) -> Result<ConnectionInfo, StoreError> {
    url.into_connection_info()
        .map_err(|_| StoreError::config(STORE, "the Redis URL does not parse"))
}

/// `host:port` of a TCP address.
fn address(addr: &ConnectionAddr) -> Result<String, StoreError> {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Ok(format!("{host}:{port}"))
        }
        _ => Err(StoreError::config(STORE, "the URL must name a TCP host")),
    }
}

fn joined<'a>(addrs: impl Iterator<Item = &'a ConnectionAddr>) -> Result<String, StoreError> {
    Ok(addrs.map(address).collect::<Result<Vec<_>, _>>()?.join(","))
}

/// Whether `HOST[:PORT]` (an IPv6 host in brackets) names a port.
fn has_port(host: &str) -> bool {
    match host.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => host.contains(':'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> Parsed {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn one_server_keeps_its_address_and_credentials() {
        let p = parsed("rediss://me:s3cret@cache.internal:6380/2");
        assert!(p.tls);
        assert_eq!(p.address, "cache.internal:6380");
        let Target::Single(info) = p.target else {
            panic!("one server");
        };
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert_eq!(info.redis_settings().db(), 2);
    }

    #[test]
    fn a_cluster_url_gives_every_seed_the_credentials() {
        let p = parsed("redis+cluster://:pa%40ss@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/");
        assert!(!p.tls);
        assert_eq!(p.address, "10.0.0.1:7000,10.0.0.2:7001,::1:7002");
        let Target::Cluster(seeds) = p.target else {
            panic!("a cluster");
        };
        assert_eq!(seeds.len(), 3);
        assert!(
            seeds
                .iter()
                .all(|s| s.redis_settings().password() == Some("pa@ss"))
        );
        let tls = parsed("rediss+cluster://h1:7000,h2:7000");
        assert!(tls.tls);
        let Target::Cluster(seeds) = tls.target else {
            panic!("a cluster");
        };
        assert!(
            seeds
                .iter()
                .all(|s| matches!(s.addr(), ConnectionAddr::TcpTls { .. }))
        );
    }

    #[test]
    fn a_sentinel_url_names_the_master_and_the_primarys_database() {
        let p = parsed("redis+sentinel://user:pw@s1,s2:26380/mymaster/3");
        assert_eq!(p.address, "s1:26379,s2:26380");
        let Target::Sentinel {
            sentinels,
            master,
            redis,
        } = p.target
        else {
            panic!("sentinels");
        };
        assert_eq!(sentinels.len(), 2);
        assert_eq!(master, "mymaster");
        assert_eq!(redis.username(), Some("user"));
        assert_eq!(redis.password(), Some("pw"));
        assert_eq!(redis.db(), 3);
        let tls = parsed("rediss+sentinel://s1:26379/mymaster");
        assert!(tls.tls);
        let Target::Sentinel { sentinels, .. } = tls.target else {
            panic!("sentinels");
        };
        assert!(matches!(sentinels[0], ConnectionAddr::TcpTls { .. }));
    }

    #[test]
    fn malformed_urls_are_refused_without_repeating_them() {
        for url in [
            "http://:hunter2@h:1/",
            "hunter2",
            "redis+cluster://:hunter2@h1:7000,,h2:7000/",
            "redis+cluster://:hunter2@h1:7000/1",
            "redis+sentinel://:hunter2@s1:26379/",
            "redis+sentinel://:hunter2@s1:26379/master/x",
            "redis+sentinel://:hunter2@s1:26379/master/1/2",
            "redis+cluster://:hunter2@h1:notaport/",
        ] {
            let Err(e) = parse(url) else {
                panic!("{url} was taken");
            };
            assert!(e.is_config(), "{url}");
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{url}");
        }
    }

    #[test]
    fn ports_are_found_in_names_and_ipv6_brackets() {
        assert!(has_port("h:1") && has_port("[::1]:2"));
        assert!(!has_port("h") && !has_port("[::1]"));
    }
}
