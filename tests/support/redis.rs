//! A real `redis-server` (or `redis-sentinel`) for the tests: started on a
//! free port of 127.0.0.1 with persistence off and its files in a temporary
//! directory, waited for within a bound, and killed when dropped, or when
//! the test process exits (for servers that a whole test binary shares).
//! Plain TCP, AUTH and TLS. On a machine without them, Debian's packages are
//! installed first.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// How long a server may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Runs `$1` with the other arguments in the background, prints its pid, and
/// kills it when its stdin closes: the test process holds the other end, so
/// the server dies with it however it ends (a panic, an abort, or a shared
/// server in a static, which is never dropped). The shell exits when the
/// server does. (The pipe goes through fd 3: a background job's stdin is
/// `/dev/null`.)
const WATCHDOG: &str = r#"program="$1"; shift
exec 3<&0
"$program" "$@" >/dev/null 2>&1 3<&- &
pid=$!
echo "$pid"
{ read -r _ <&3 || true; kill -9 "$pid" 2>/dev/null; } &
exec 3<&-
wait "$pid""#;

/// How a server is reached.
#[derive(Clone)]
enum Listen {
    Plain,
    Tls {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
    /// A Sentinel, with this configuration file.
    Sentinel(PathBuf),
}

/// Installs Debian's `package` once when `program` is not on the PATH, so
/// that `cargo test` works on a fresh machine (as root, or with sudo).
fn ensure_installed(program: &str, package: &str, once: &'static Once) {
    once.call_once(|| {
        let found = Command::new(program).arg("--version").output().is_ok();
        if found {
            return;
        }
        eprintln!("{program} is missing: installing Debian's package {package}");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let (apt, prefix): (&str, &[&str]) = if root {
            ("apt-get", &[])
        } else {
            ("sudo", &["apt-get"])
        };
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", package][..],
        ] {
            let status = Command::new(apt)
                .args(prefix)
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "could not install {package} with apt-get {args:?}"
            );
        }
    });
}

/// A running `redis-server` or `redis-sentinel`, killed on drop.
pub(crate) struct RedisServer {
    /// The watchdog shell, and the pipe whose closing kills the server.
    child: Option<(Child, ChildStdin)>,
    pid: u32,
    port: u16,
    listen: Listen,
    extra: Vec<String>,
    dir: TempDir,
    /// The files it reads: a TLS server's certificate and key, a Sentinel's
    /// configuration.
    files: Option<TempDir>,
}

impl RedisServer {
    /// A server without a password.
    pub(crate) fn start() -> Self {
        Self::launch(Listen::Plain, Vec::new())
    }

    /// A server without a password, with these options besides.
    pub(crate) fn with_args(args: &[&str]) -> Self {
        Self::launch(Listen::Plain, args.iter().map(|a| a.to_string()).collect())
    }

    /// A server whose default user needs `password`.
    pub(crate) fn with_password(password: &str) -> Self {
        Self::launch(Listen::Plain, vec!["--requirepass".into(), password.into()])
    }

    /// A Sentinel whose configuration file is `config` with the `port` and
    /// `dir` lines added (Sentinel rewrites the file as it learns).
    pub(crate) fn sentinel(config: &str) -> Self {
        static INSTALL: Once = Once::new();
        ensure_installed("redis-sentinel", "redis-sentinel", &INSTALL);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, config).expect("a Sentinel configuration");
        let mut server = Self::launch(Listen::Sentinel(path), Vec::new());
        server.files = Some(dir);
        server
    }

    /// A server on TLS only, with a certificate for 127.0.0.1 that a fresh
    /// private authority signed; also returns that authority's PEM.
    pub(crate) fn with_tls() -> (Self, String) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "daxium-auth test authority");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let listen = Listen::Tls {
            cert: write("server.pem", &leaf.pem()),
            key: write("server.key", &leaf_key.serialize_pem()),
            ca: write("ca.pem", &ca.pem()),
        };
        let mut server = Self::launch(listen, Vec::new());
        server.files = Some(dir);
        (server, ca.pem())
    }

    fn launch(listen: Listen, extra: Vec<String>) -> Self {
        let mut server = Self {
            child: None,
            pid: 0,
            port: 0,
            listen,
            extra,
            dir: tempdir(),
            files: None,
        };
        // Another process may take the free port between the probe and the
        // server's bind: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on 127.0.0.1 (is it installed?)");
    }

    /// Starts the server on `self.port`; whether it answers in time.
    fn spawn(&mut self) -> bool {
        static INSTALL: Once = Once::new();
        ensure_installed("redis-server", "redis-server", &INSTALL);
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let (program, mut args): (&str, Vec<String>) = match &self.listen {
            Listen::Sentinel(config) => {
                let mut text = std::fs::read_to_string(config).expect("the configuration");
                // Each start adds its own lines: Sentinel keeps the last.
                text.push_str(&format!("\nport {port}\nbind 127.0.0.1\ndir {dir}\n"));
                std::fs::write(config, text).expect("the configuration");
                ("redis-sentinel", vec![config.display().to_string()])
            }
            _ => (
                "redis-server",
                vec![
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--save".into(),
                    String::new(),
                    "--appendonly".into(),
                    "no".into(),
                    // A replica's first sync starts at once, not in 5 s.
                    "--repl-diskless-sync-delay".into(),
                    "0".into(),
                    "--dir".into(),
                    dir,
                ],
            ),
        };
        match &self.listen {
            Listen::Plain => args.extend(["--port".into(), port]),
            Listen::Tls { cert, key, ca } => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            Listen::Sentinel(_) => {}
        }
        args.extend(self.extra.iter().cloned());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh on the PATH");
        let stdin = child.stdin.take().expect("a piped stdin");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("a piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        self.pid = line.trim().parse().expect("the server's pid");
        self.child = Some((child, stdin));
        if self.wait_ready() {
            true
        } else {
            self.stop();
            false
        }
    }

    /// Polls the port until the server answers, it exits, or time is up.
    fn wait_ready(&mut self) -> bool {
        let started = Instant::now();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while started.elapsed() < READY_WITHIN {
            if let Some((child, _)) = &mut self.child
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200))
            {
                match self.listen {
                    // A TLS server that accepts a connection is listening.
                    Listen::Tls { .. } => return true,
                    // "+PONG", or "-NOAUTH" from a server with a password.
                    Listen::Plain | Listen::Sentinel(_) => {
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut reply = [0u8; 1];
                        if stream.write_all(b"PING\r\n").is_ok()
                            && stream.read_exact(&mut reply).is_ok()
                            && matches!(reply[0], b'+' | b'-')
                        {
                            return true;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The URL of the server, with `userinfo` (`user:password@`) if given.
    pub(crate) fn url_with(&self, userinfo: &str) -> String {
        let scheme = match self.listen {
            Listen::Plain | Listen::Sentinel(_) => "redis",
            Listen::Tls { .. } => "rediss",
        };
        format!("{scheme}://{userinfo}127.0.0.1:{}/", self.port)
    }

    /// The URL of the server.
    pub(crate) fn url(&self) -> String {
        self.url_with("")
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (`--dir`).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub(crate) fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &self.pid.to_string()])
                .status();
            let _ = child.wait();
            drop(stdin);
        }
    }

    /// Starts the server again on the same port, in the same directory (a
    /// plain server's data is gone; a cluster node keeps its configuration).
    pub(crate) fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server did not start again on its port");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A directory of its own for a server: under the target directory, since a
/// server that a test binary shares is never dropped (`cargo clean` removes
/// what it leaves).
fn tempdir() -> TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("redis");
    std::fs::create_dir_all(&base).expect("the target's temporary directory");
    tempfile::tempdir_in(base).expect("a temporary directory")
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}

impl RedisServer {
    /// Whether it runs (it was not stopped, or was started again).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server with SIGSTOP until the guard is dropped: it keeps
    /// its connections and answers nothing, as a server cut off would.
    pub(crate) fn freeze(&self) -> Frozen {
        signal(self.pid, "-STOP");
        Frozen(self.pid)
    }
}

/// A server stopped with SIGSTOP, continued when this is dropped.
pub(crate) struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
}

// === what a store keeps in a server ===

/// A plain connection to the server at `url`, to look at what a store wrote
/// or to leave something else in its place.
pub(crate) async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis-server answers")
}

/// The key of `login`'s record, with the default prefix.
pub(crate) fn record_key(login: &daxium_auth::store::LoginKey) -> String {
    format!("daxium-auth:{{{}}}", login.id())
}

/// The key of `login`'s lease, with the default prefix.
pub(crate) fn lease_key(login: &daxium_auth::store::LoginKey) -> String {
    format!("daxium-auth:{{{}}}:lease", login.id())
}

/// A store on `server` whose calls time out after 500 ms.
pub(crate) fn redis_store(server: &RedisServer) -> daxium_auth::store::RedisStore {
    daxium_auth::store::RedisStore::builder(&server.url())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

// === commands to a node ===

/// How long a command to a node of the harness may take.
const COMMAND_WITHIN: Duration = Duration::from_secs(2);

/// How long a cluster or a Sentinel may take to settle after a change.
const SETTLED_WITHIN: Duration = Duration::from_secs(30);

/// Sends one command to the server on `port` of 127.0.0.1.
pub(crate) fn command<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut connection = client.get_connection_with_timeout(COMMAND_WITHIN)?;
    connection.set_read_timeout(Some(COMMAND_WITHIN))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection)
}

/// A field of `INFO` from the server on `port`, if it answers.
pub(crate) fn info(port: u16, field: &str) -> Option<String> {
    let text: String = command(port, &["INFO"]).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_owned())
}

/// Polls `done` every 50 ms for at most `within`; whether it held.
pub(crate) fn settles(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

// === a Redis Cluster ===

/// A Redis Cluster of nodes on 127.0.0.1, each a `redis-server` of this
/// harness with cluster mode on, made with `redis-cli --cluster create`.
///
/// Failures are detected within a second (`cluster-node-timeout 1000`), a
/// replica may always be promoted, and the slots that have a primary are
/// served while another shard fails over (`cluster-require-full-coverage
/// no`), so that tests sharing the cluster stay apart.
pub(crate) struct RedisCluster {
    nodes: std::sync::Mutex<Vec<RedisServer>>,
    replicas: usize,
    /// Tests that fail a node over hold it alone; the others share it.
    faults: tokio::sync::RwLock<()>,
}

/// One line of `CLUSTER NODES`.
struct ClusterNode {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    primary_id: String,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, every slot
    /// served, every replica in sync.
    pub(crate) fn start(primaries: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                // The bus port is the data port + 10,000 unless given: over
                // 65,535 for a free port above 55,535.
                let bus = free_port().to_string();
                RedisServer::with_args(&[
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-allow-replica-migration",
                    "no",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            created.is_ok_and(|s| s.success()),
            "redis-cli --cluster create failed"
        );
        let cluster = Self {
            nodes: std::sync::Mutex::new(nodes),
            replicas,
            faults: tokio::sync::RwLock::new(()),
        };
        cluster.settle();
        cluster
    }

    /// The cluster of 3 primaries and 3 replicas that the tests of this
    /// binary share, started by the first that asks; its nodes stop with the
    /// test process.
    pub(crate) fn shared() -> &'static Self {
        static SHARED: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::start(3, 1))
    }

    /// A `redis+cluster://` URL with every node as a seed.
    pub(crate) fn url(&self) -> String {
        format!(
            "redis+cluster://{}/",
            self.ports()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    /// The first seed of [`url`](Self::url): where a wait subscribes.
    pub(crate) fn seed(&self) -> u16 {
        self.ports().next().expect("a running node")
    }

    /// Leaves the cluster as it is while the caller runs: no test fails a
    /// node over meanwhile.
    pub(crate) async fn quiet(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.faults.read().await
    }

    /// The cluster to the caller alone, to fail nodes over.
    pub(crate) async fn alone(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.faults.write().await
    }

    /// The slot of `key`, as the cluster computes it.
    pub(crate) fn slot(&self, key: &str) -> u16 {
        let port = self.ports().next().expect("a running node");
        command(port, &["CLUSTER", "KEYSLOT", key]).expect("CLUSTER KEYSLOT")
    }

    /// The port of the primary that serves `slot`, as the running nodes see it.
    pub(crate) fn primary_of(&self, slot: u16) -> u16 {
        let view = self.view().expect("a running node answers");
        view.iter()
            .find(|n| n.primary && !n.failed && n.serves(slot))
            .map(|n| n.port)
            .expect("a primary for the slot")
    }

    /// Fails the primary of `slot` over to its replica with `CLUSTER
    /// FAILOVER` (the replica catches up first: nothing is lost); returns
    /// the new primary's port once the cluster has settled on it.
    pub(crate) fn fail_over(&self, slot: u16) -> u16 {
        let old = self.primary_of(slot);
        let replica = self.replica_of(old);
        let answer: String = command(replica, &["CLUSTER", "FAILOVER"]).expect("CLUSTER FAILOVER");
        assert_eq!(answer, "OK");
        let promoted = settles(SETTLED_WITHIN, || self.primary_of(slot) == replica);
        assert!(promoted, "the replica of port {old} never took its slots");
        self.settle();
        replica
    }

    /// Kills the primary of `slot` with SIGKILL and waits until its replica
    /// is promoted; returns the killed node's port.
    pub(crate) fn kill_primary(&self, slot: u16) -> u16 {
        let old = self.primary_of(slot);
        let replica = self.replica_of(old);
        self.with_node(old, RedisServer::stop);
        let promoted = settles(SETTLED_WITHIN, || {
            self.view().is_some_and(|view| {
                view.iter()
                    .any(|n| n.port == replica && n.primary && n.serves(slot))
            })
        });
        assert!(
            promoted,
            "the replica of the killed port {old} was never promoted"
        );
        old
    }

    /// Starts the node on `port` again; it rejoins (as a replica, if another
    /// node took its slots), and the cluster settles.
    pub(crate) fn restart(&self, port: u16) {
        self.with_node(port, RedisServer::restart);
        self.settle();
    }

    /// The replica of the primary on `port`.
    fn replica_of(&self, port: u16) -> u16 {
        let view = self.view().expect("a running node answers");
        let primary = view.iter().find(|n| n.port == port).expect("the primary");
        view.iter()
            .find(|n| n.primary_id == primary.id && !n.failed)
            .map(|n| n.port)
            .expect("a replica")
    }

    fn with_node(&self, port: u16, f: impl FnOnce(&mut RedisServer)) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let node = nodes.iter_mut().find(|n| n.port() == port).expect("a node");
        f(node);
    }

    fn ports(&self) -> impl Iterator<Item = u16> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let ports: Vec<u16> = nodes
            .iter()
            .filter(|n| n.is_running())
            .map(RedisServer::port)
            .collect();
        ports.into_iter()
    }

    /// `CLUSTER NODES` as the first running node that answers sees it.
    fn view(&self) -> Option<Vec<ClusterNode>> {
        self.ports().find_map(|port| {
            let text: String = command(port, &["CLUSTER", "NODES"]).ok()?;
            Some(text.lines().filter_map(ClusterNode::parse).collect())
        })
    }

    /// Waits until every running node says the cluster is ok, sees the same
    /// primaries, and every primary has its replicas in sync.
    fn settle(&self) {
        let settled = settles(SETTLED_WITHIN, || {
            let ports: Vec<u16> = self.ports().collect();
            let mut views = Vec::new();
            for &port in &ports {
                let ok = info_cluster(port).is_some_and(|i| i.contains("cluster_state:ok"));
                let text: Option<String> = command(port, &["CLUSTER", "NODES"]).ok();
                let Some(text) = text.filter(|_| ok) else {
                    return false;
                };
                let mut primaries: Vec<(u16, Vec<(u16, u16)>)> = text
                    .lines()
                    .filter_map(ClusterNode::parse)
                    .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
                    .map(|n| (n.port, n.slots))
                    .collect();
                primaries.sort();
                views.push(primaries);
            }
            let agreed = views.windows(2).all(|w| w[0] == w[1]);
            let Some(primaries) = views.first() else {
                return false;
            };
            let synced = ports
                .iter()
                .filter(|p| !primaries.iter().any(|(q, _)| q == *p))
                .all(|&p| info(p, "master_link_status").as_deref() == Some("up"));
            let replicas = ports.len() - primaries.len();
            agreed && synced && replicas >= primaries.len() * self.replicas
        });
        assert!(settled, "the cluster did not settle");
    }
}

fn info_cluster(port: u16) -> Option<String> {
    command(port, &["CLUSTER", "INFO"]).ok()
}

impl ClusterNode {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields.get(1)?.split(['@', ',']).next()?.rsplit_once(':')?.1;
        let flags = fields.get(2)?;
        Some(Self {
            id: fields[0].to_owned(),
            port: port.parse().ok()?,
            primary: flags.contains("master"),
            failed: flags.contains("fail"),
            primary_id: fields.get(3)?.to_string(),
            slots: fields
                .iter()
                .skip(8)
                .filter_map(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    Some((from.parse().ok()?, to.parse().ok()?))
                })
                .collect(),
        })
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(from, to)| (from..=to).contains(&slot))
    }
}

// === a Sentinel-watched primary ===

/// A primary, a replica of it and three Sentinels that watch it as
/// `daxium`, on 127.0.0.1; a primary that stops answering for a second is
/// failed over.
pub(crate) struct Sentinels {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

impl Sentinels {
    /// The name the Sentinels know the primary by.
    pub(crate) const MASTER: &str = "daxium";

    /// Starts them all and waits until the Sentinels know the replica and
    /// each other (they vote on a failover).
    pub(crate) fn start() -> Self {
        let primary = RedisServer::start();
        let replica =
            RedisServer::with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        let config = format!(
            "sentinel monitor {master} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 10000\n\
             sentinel parallel-syncs {master} 1\n",
            master = Self::MASTER,
            port = primary.port(),
        );
        let sentinels = (0..3).map(|_| RedisServer::sentinel(&config)).collect();
        let started = Self {
            primary,
            replica,
            sentinels,
        };
        let acquainted = settles(SETTLED_WITHIN, || {
            started.sentinels.iter().all(|s| {
                let master: Option<Vec<String>> =
                    command(s.port(), &["SENTINEL", "MASTER", Self::MASTER]).ok();
                let field = |name: &str| {
                    let master = master.as_ref()?;
                    let at = master.iter().position(|f| f == name)?;
                    master.get(at + 1).cloned()
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            })
        });
        assert!(
            acquainted,
            "the Sentinels never knew the replica and each other"
        );
        started
    }

    /// A `redis+sentinel://` URL naming the three Sentinels.
    pub(crate) fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{}", sentinels.join(","), Self::MASTER)
    }

    /// The port of the primary the Sentinels name (all of them, the same).
    pub(crate) fn named_primary(&self) -> Option<u16> {
        let named: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|s| {
                let address: Vec<String> = command(
                    s.port(),
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER],
                )
                .ok()?;
                address.get(1)?.parse().ok()
            })
            .collect();
        named
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| named[0])
            .flatten()
    }

    /// The primary's URL.
    pub(crate) fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// Kills the primary with SIGKILL and waits until the Sentinels name the
    /// replica and it answers as a primary.
    pub(crate) fn kill_primary(&mut self) {
        self.primary.stop();
        self.wait_promoted();
    }

    /// Stops the primary with SIGSTOP (it holds its connections and answers
    /// nothing, as a primary cut off without a reset would) and waits until
    /// the Sentinels name the replica and it answers as a primary. SIGKILL
    /// ends it when it is dropped.
    pub(crate) fn freeze_primary(&mut self) {
        signal(self.primary.pid, "-STOP");
        self.wait_promoted();
    }

    fn wait_promoted(&self) {
        let replica = self.replica.port();
        let promoted = settles(SETTLED_WITHIN, || {
            self.named_primary() == Some(replica)
                && info(replica, "role").as_deref() == Some("master")
        });
        assert!(promoted, "the Sentinels never promoted the replica");
    }
}
