//! TLS and passwords by URL: a worker reaches RabbitMQ over `amqps://` and Redis over
//! `rediss://user:password@…`, through stunnel terminating TLS in front of the local
//! servers, trusting a CA made for the test (via `SSL_CERT_FILE`).
//!
//! Needs `openssl` and `stunnel` (Debian: openssl, stunnel4; `bash scripts/test.sh`
//! installs them).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (`bash scripts/test.sh` installs what this test needs)")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate for localhost/127.0.0.1 signed by it.
fn make_certificates(dir: &Path) {
    let d = |f: &str| dir.join(f);
    std::fs::write(d("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=wxpush test CA",
        ])
        .arg("-keyout")
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(d("server.key"))
        .arg("-out")
        .arg(d("server.csr")));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(d("server.csr"))
        .arg("-CA")
        .arg(d("ca.pem"))
        .arg("-CAkey")
        .arg(d("ca.key"))
        .arg("-extfile")
        .arg(d("san.ext"))
        .arg("-out")
        .arg(d("server.pem")));
}

struct Stunnel(Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stunnel(dir: &Path, amqps: u16, rediss: u16) -> Stunnel {
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\ncert = {cert}\nkey = {key}\n[amqps]\naccept = 127.0.0.1:{amqps}\nconnect = 127.0.0.1:5672\n[rediss]\naccept = 127.0.0.1:{rediss}\nconnect = 127.0.0.1:6379\n",
            cert = dir.join("server.pem").display(),
            key = dir.join("server.key").display()
        ),
    )
    .unwrap();
    let binary = if Command::new("stunnel4").arg("-version").output().is_ok() {
        "stunnel4"
    } else {
        "stunnel"
    };
    Stunnel(
        Command::new(binary)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {binary}: {e}; install stunnel (Debian: apt-get install \
                     stunnel4), or run `bash scripts/test.sh`, which installs it"
                )
            }),
    )
}

#[tokio::test]
async fn worker_connects_over_tls_with_passwords_in_urls() {
    let app = TestApp::start("tls").await;
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (amqps, rediss) = (free_port(), free_port());
    let _tunnel = stunnel(dir.path(), amqps, rediss);
    for port in [amqps, rediss] {
        eventually(
            "stunnel to listen",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }
    // A Redis user with a password, for this test only.
    let user = format!("wxpush-{}", app.prefix);
    let password = "redis-pass-for-tls-test";
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();

    let config = config_text(&app.prefix, &app.mock.base_url())
        .replace(
            AMQP_URL,
            &format!("amqps://guest:guest@localhost:{amqps}/%2f"),
        )
        .replace(
            REDIS_URL,
            &format!("rediss://{user}:{password}@localhost:{rediss}/0"),
        );
    let file = dir.path().join("wxpush.toml");
    std::fs::write(&file, &config).unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_wxpush"))
        .args(["run", "--config"])
        .arg(&file)
        .env(SECRET_ENV, SECRET)
        .env("SSL_CERT_FILE", dir.path().join("ca.pem"))
        .env("WXPUSH_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    app.publish(&order_paid("tls-1", 1)).await;
    let sends = app.sent(1).await;
    assert_eq!(sends[0].body["touser"], openid(1));

    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let status = worker.wait().unwrap();
        let mut log = String::new();
        std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut log).unwrap();
        (status, log)
    })
    .await
    .unwrap();
    assert!(out.0.success(), "{}", out.1);
    assert!(
        out.1.contains("amqps://guest:***@localhost"),
        "the URL is logged redacted: {}",
        out.1
    );
    assert!(
        !out.1.contains(password),
        "the Redis password leaked: {}",
        out.1
    );
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .unwrap();
    app.cleanup().await;
}
