//! A real `redis-server` for the tests: started on a free port of 127.0.0.1
//! with persistence off and its files in a temporary directory, waited for
//! within a bound, and killed when dropped. Plain TCP, AUTH and TLS. On a
//! machine without it, Debian's `redis-server` package is installed first.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// How long a server may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// How a server is reached.
#[derive(Clone)]
enum Listen {
    Plain,
    Tls {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

/// Installs Debian's `redis-server` once when it is not on the PATH, so that
/// `cargo test` works on a fresh machine (as root, or with sudo).
fn ensure_installed() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        if found {
            return;
        }
        eprintln!("redis-server is missing: installing Debian's package");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let (program, prefix): (&str, &[&str]) = if root {
            ("apt-get", &[])
        } else {
            ("sudo", &["apt-get"])
        };
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "redis-server"][..],
        ] {
            let status = Command::new(program)
                .args(prefix)
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "could not install redis-server with apt-get {args:?}"
            );
        }
    });
}

/// A running `redis-server`, killed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    listen: Listen,
    extra: Vec<String>,
    dir: TempDir,
    /// The certificate and key files of a TLS server.
    certs: Option<TempDir>,
}

impl RedisServer {
    /// A server without a password.
    pub(crate) fn start() -> Self {
        Self::launch(Listen::Plain, Vec::new())
    }

    /// A server whose default user needs `password`.
    pub(crate) fn with_password(password: &str) -> Self {
        Self::launch(Listen::Plain, vec!["--requirepass".into(), password.into()])
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
        server.certs = Some(dir);
        (server, ca.pem())
    }

    fn launch(listen: Listen, extra: Vec<String>) -> Self {
        let mut server = Self {
            child: None,
            port: 0,
            listen,
            extra,
            dir: tempfile::tempdir().expect("a temporary directory"),
            certs: None,
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
        ensure_installed();
        let port = self.port.to_string();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
        ];
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
        }
        args.extend(self.extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        self.child = Some(child);
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
            if let Some(child) = &mut self.child
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
                    Listen::Plain => {
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
            Listen::Plain => "redis",
            Listen::Tls { .. } => "rediss",
        };
        format!("{scheme}://{userinfo}127.0.0.1:{}/", self.port)
    }

    /// The URL of the server.
    pub(crate) fn url(&self) -> String {
        self.url_with("")
    }

    /// Kills the server and waits for it to be gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (its data is gone).
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

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}
