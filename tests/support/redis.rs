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
