//! Access control (issue 9) on a real server with real tokens: HS256, RS256 and ES256 keys the
//! tests make (openssl), every kind of bad token on every route, tickets, expiry of streams,
//! start-up refusals and the open mode's `Host` check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use server_sent_events::auth::Mode;
use server_sent_events::config::Secret;

use crate::support::{Sse, TestServer, client, json_of};

const SECRET: &str = "test-secret-of-at-least-32-bytes-long";
const ALICE: &str = "2b7c4d1e-9f3a-4c5b-8d6e-1a2b3c4d5e6f";
const BOB: &str = "7e6d5c4b-3a29-4817-9605-f4e3d2c1b0a9";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with `claims` signed by `key` with `alg`.
fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn hs256(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// A valid HS256 token for `sub` with `scope`, expiring in `ttl` seconds.
fn token(sub: &str, scope: &str, ttl: u64) -> String {
    hs256(json!({ "sub": sub, "scope": scope, "exp": now() + ttl }))
}

async fn jwt_server() -> TestServer {
    TestServer::start_with(|c| {
        c.auth = Mode::Jwt;
        c.jwt_secret = Some(Secret(SECRET.to_owned()));
    })
    .await
}

/// `method path` with an optional bearer token and body: (status, WWW-Authenticate, JSON).
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String, Value) {
    let mut request = server.request(method, path);
    if let Some(token) = bearer {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, challenge, json)
}

/// Issue 9: every protected route refuses a missing or bad token with 401 and the RFC 6750
/// challenge, another identity or a missing scope with 403, and changes nothing; the right
/// token works.
#[tokio::test]
async fn every_route_refuses_bad_tokens_and_changes_nothing() {
    let server = jwt_server().await;
    let report = "0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
    let put = json!({ "id": report, "status": "queued" }).to_string();
    // (route, method, path, body, the owner's token, a token of someone else or lacking scope)
    let alice = token(ALICE, "", 600);
    let bob = token(BOB, "", 600);
    let publisher = token("svc", "publish", 600);
    let routes: Vec<(Method, String, Option<&str>, String, String)> = vec![
        (
            Method::GET,
            "/v2/sse?username=alice".into(),
            None,
            token("alice", "", 600),
            token("bob", "", 600),
        ),
        (
            Method::GET,
            "/v3/sse?username=alice".into(),
            None,
            token("alice", "", 600),
            token("bob", "", 600),
        ),
        (
            Method::GET,
            "/v1/sse?username=alice".into(),
            None,
            token("alice", "", 600),
            token("bob", "", 600),
        ),
        (
            Method::GET,
            format!("/v4/sse?user_id={ALICE}"),
            None,
            alice.clone(),
            bob.clone(),
        ),
        (
            Method::POST,
            "/v2/message?username=alice".into(),
            Some("hi"),
            publisher.clone(),
            token("alice", "", 600),
        ),
        (
            Method::POST,
            "/v3/message?username=alice".into(),
            Some("hi"),
            publisher.clone(),
            token("alice", "", 600),
        ),
        (
            Method::POST,
            "/v2/broadcast".into(),
            Some("hi"),
            publisher.clone(),
            token("alice", "", 600),
        ),
        (
            Method::POST,
            format!("/v4/new/report?user_id={ALICE}"),
            None,
            alice.clone(),
            bob.clone(),
        ),
        (
            Method::GET,
            format!("/v4/reports?user_id={ALICE}"),
            None,
            alice.clone(),
            bob.clone(),
        ),
        (
            Method::GET,
            format!("/v4/report/{report}?user_id={ALICE}"),
            None,
            alice.clone(),
            bob.clone(),
        ),
        (
            Method::PUT,
            format!("/v4/report?user_id={ALICE}"),
            Some(put.as_str()),
            alice.clone(),
            bob.clone(),
        ),
        (
            Method::GET,
            "/metrics".into(),
            None,
            token("ops", "admin", 600),
            publisher.clone(),
        ),
        (
            Method::POST,
            "/auth/ticket".into(),
            None,
            alice.clone(),
            String::new(),
        ),
    ];
    let other_key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!");
    let bad_tokens: Vec<(&str, String, &str)> = vec![
        ("malformed", "not.a.token".to_owned(), "malformed"),
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                &other_key,
                json!({ "sub": ALICE, "exp": now() + 600 }),
            ),
            "bad token signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&json!({ "sub": ALICE, "exp": now() + 600 }).to_string())
            ),
            "malformed",
        ),
        (
            "expired",
            hs256(json!({ "sub": ALICE, "exp": now() - 120 })),
            "token expired",
        ),
        (
            "not yet valid",
            hs256(json!({ "sub": ALICE, "exp": now() + 600, "nbf": now() + 300 })),
            "not yet valid",
        ),
        ("no exp", hs256(json!({ "sub": ALICE })), "exp"),
    ];
    for (method, path, body, _, stranger) in &routes {
        let what = format!("{method} {path}");
        let (status, challenge, json) = call(&server, method.clone(), path, None, *body).await;
        assert_eq!(
            (status, challenge.as_str()),
            (401, "Bearer"),
            "{what}: {json}"
        );
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .contains("authentication required"),
            "{what}: {json}"
        );
        for (kind, bad, says) in &bad_tokens {
            let (status, challenge, json) =
                call(&server, method.clone(), path, Some(bad), *body).await;
            assert_eq!(status, 401, "{what} with a {kind} token: {json}");
            assert!(
                challenge.starts_with(r#"Bearer error="invalid_token""#),
                "{what} {kind}: {challenge}"
            );
            let error = json["error"].as_str().unwrap();
            assert!(error.contains(says), "{what} {kind}: {error}");
            assert!(
                !error.contains(SECRET) && !error.contains(bad.as_str()),
                "{what} {kind}: {error}"
            );
        }
        if !stranger.is_empty() {
            let (status, _, json) =
                call(&server, method.clone(), path, Some(stranger), *body).await;
            assert_eq!(
                status, 403,
                "{what} with another identity or no scope: {json}"
            );
            assert!(json["error"].is_string(), "{json}");
        }
    }
    // Nothing was registered, written or delivered by any of that.
    let admin = token("ops", "admin", 600);
    let (_, _, metrics) = call(&server, Method::GET, "/metrics", Some(&admin), None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    for channel in ["v1", "v2", "v3", "v4"] {
        let sample = format!(r#"sse_connections_total{{channel="{channel}"}}"#);
        assert_eq!(
            crate::support::metric_in(&metrics, &sample).unwrap_or(0.0),
            0.0,
            "{sample}"
        );
    }
    for channel in ["v2", "v3"] {
        let sample = format!(r#"sse_messages_published_total{{channel="{channel}"}}"#);
        assert_eq!(
            crate::support::metric_in(&metrics, &sample).unwrap_or(0.0),
            0.0,
            "{sample}"
        );
    }
    let (status, _, list) = call(
        &server,
        Method::GET,
        &format!("/v4/reports?user_id={ALICE}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((status, list), (200, json!([])));

    // The right tokens work: streams, publishing, reports, metrics, an admin acting for Alice.
    let mut tab =
        open_with_bearer(&server, "/v2/sse?username=alice", &token("alice", "", 600)).await;
    let (status, _, sent) = call(
        &server,
        Method::POST,
        "/v2/message?username=alice",
        Some(&publisher),
        Some("hello"),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(tab.next().await.data, "hello");
    let (status, _, created) = call(
        &server,
        Method::POST,
        &format!("/v4/new/report?user_id={}", ALICE.to_uppercase()),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, _, list) = call(
        &server,
        Method::GET,
        &format!("/v4/reports?user_id={ALICE}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));
    // Every other route with its right token: not refused.
    for (method, path, body, owner, _) in &routes {
        if path.contains("/sse") {
            continue;
        }
        let (status, _, json) = call(&server, method.clone(), path, Some(owner), *body).await;
        assert!(
            status != 401 && status != 403,
            "{method} {path}: {status} {json}"
        );
    }
    server.stop().await;
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

async fn open_with_bearer(server: &TestServer, path: &str, token: &str) -> Sse {
    Sse::open_with(
        &server.url(path),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Makes a key pair with openssl in `dir`: (private PEM, public PEM path).
fn key_pair(dir: &std::path::Path, kind: &str) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{kind}.key"));
    let public = dir.join(format!("{kind}.pub"));
    let args: Vec<&str> = match kind {
        "rsa" => vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        "ec" => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        "ed" => vec!["genpkey", "-algorithm", "ED25519"],
        _ => unreachable!(),
    };
    let ok = std::process::Command::new("openssl")
        .args(&args)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey {kind}");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl pkey -pubout {kind}");
    (std::fs::read(&private).unwrap(), public)
}

fn private_key(kind: &str, pem: &[u8]) -> EncodingKey {
    match kind {
        "rsa" => EncodingKey::from_rsa_pem(pem).unwrap(),
        "ec" => EncodingKey::from_ec_pem(pem).unwrap(),
        _ => EncodingKey::from_ed_pem(pem).unwrap(),
    }
}

/// Issue 9: a public key fixes the algorithm: RS256 (or ES256) tokens of that key pass; an
/// HS256 token "signed" with the public key's text, another key's token and `alg: none` fail.
#[tokio::test]
async fn public_keys_fix_the_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, alg) in [
        ("rsa", Algorithm::RS256),
        ("ec", Algorithm::ES256),
        ("ed", Algorithm::EdDSA),
    ] {
        let (private, public) = key_pair(dir.path(), kind);
        let public_text = std::fs::read(&public).unwrap();
        let server = TestServer::start_with(|c| {
            c.auth = Mode::Jwt;
            c.jwt_public_key = Some(public.clone());
        })
        .await;
        let key = private_key(kind, &private);
        let claims = json!({ "sub": "alice", "exp": now() + 600 });
        let good = sign(alg, &key, claims.clone());
        let path = "/v2/sse?username=alice";
        let tab = open_with_bearer(&server, path, &good).await;
        assert_eq!(tab.headers["content-type"], "text/event-stream", "{kind}");
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_text),
            claims.clone(),
        );
        let (status, _, json) = call(&server, Method::GET, path, Some(&confused), None).await;
        assert_eq!(status, 401, "{kind}: HS256 with the public key: {json}");
        assert!(
            json["error"].as_str().unwrap().contains("not accepted"),
            "{json}"
        );
        let (other, _) = key_pair(dir.path(), kind);
        let other = private_key(kind, &other);
        let foreign = sign(alg, &other, claims);
        let (status, _, json) = call(&server, Method::GET, path, Some(&foreign), None).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (401, Some("bad token signature")),
            "{kind}"
        );
        server.stop().await;
    }
}

/// Issue 9: `--jwt-issuer` and `--jwt-audience` must match, and a token without them fails.
#[tokio::test]
async fn issuer_and_audience_must_match() {
    let server = TestServer::start_with(|c| {
        c.auth = Mode::Jwt;
        c.jwt_secret = Some(Secret(SECRET.to_owned()));
        c.jwt_issuer = Some("https://issuer.test".to_owned());
        c.jwt_audience = Some("sse".to_owned());
    })
    .await;
    let path = "/v2/sse?username=alice";
    let exp = now() + 600;
    for (claims, says) in [
        (json!({ "sub": "alice", "exp": exp, "aud": "sse" }), "iss"),
        (
            json!({ "sub": "alice", "exp": exp, "iss": "https://issuer.test" }),
            "aud",
        ),
        (
            json!({ "sub": "alice", "exp": exp, "iss": "https://other.test", "aud": "sse" }),
            "issuer",
        ),
        (
            json!({ "sub": "alice", "exp": exp, "iss": "https://issuer.test", "aud": "other" }),
            "audience",
        ),
    ] {
        let (status, _, json) = call(
            &server,
            Method::GET,
            path,
            Some(&hs256(claims.clone())),
            None,
        )
        .await;
        assert_eq!(status, 401, "{claims}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains(says),
            "{claims}: {json}"
        );
    }
    let good =
        hs256(json!({ "sub": "alice", "exp": exp, "iss": "https://issuer.test", "aud": "sse" }));
    open_with_bearer(&server, path, &good).await;
    server.stop().await;
}

async fn ticket_for(server: &TestServer, token: &str) -> String {
    let (status, _, json) = call(server, Method::POST, "/auth/ticket", Some(token), None).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["expiresIn"], 30);
    json["ticket"].as_str().unwrap().to_owned()
}

/// Issue 9: a ticket opens a stream once, only a stream, only its identity's; a forged one
/// fails; the stream ends with `auth_expired` when the token it came from expires, and a new
/// ticket resumes it with Last-Event-ID without losing a message. No token in a URL.
#[tokio::test]
async fn tickets_open_streams_once_and_streams_end_with_their_token() {
    let server = jwt_server().await;
    let publisher = token("svc", "publish", 600);
    let short = token("alice", "", 3);
    let ticket = ticket_for(&server, &short).await;
    let path = |t: &str| format!("/v2/sse?username=alice&ticket={t}");
    let mut tab = Sse::open(&server.url(&path(&ticket)), None).await;
    let (status, _, json) = call(&server, Method::GET, &path(&ticket), None, None).await;
    assert_eq!(status, 401, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("already used"),
        "{json}"
    );
    let mut forged = ticket_for(&server, &short).await;
    forged.pop();
    forged.push('x');
    let (status, _, json) = call(&server, Method::GET, &path(&forged), None, None).await;
    assert_eq!(status, 401, "forged: {json}");
    let other = ticket_for(&server, &short).await;
    let (status, _, _) = call(
        &server,
        Method::GET,
        &format!("/v2/sse?username=bob&ticket={other}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 403, "a ticket is its identity's");
    let spare = ticket_for(&server, &short).await;
    let (status, _, _) = call(
        &server,
        Method::POST,
        &format!("/v4/new/report?user_id={ALICE}&ticket={spare}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "tickets open streams only");
    let (status, _, json) = call(
        &server,
        Method::GET,
        &format!("/v2/sse?username=alice&access_token={short}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("never accepted in a URL"),
        "{json}"
    );

    let (_, _, first) = call(
        &server,
        Method::POST,
        "/v2/message?username=alice",
        Some(&publisher),
        Some("one"),
    )
    .await;
    assert_eq!(tab.next().await.data, "one");
    let ended = tab.next_within(Duration::from_secs(6)).await;
    assert_eq!(ended.event, "auth_expired");
    assert_eq!(
        serde_json::from_str::<Value>(&ended.data).unwrap(),
        json!({ "reason": "token expired" })
    );
    assert!(
        tab.ends_within(Duration::from_secs(2)).await,
        "the stream ends after auth_expired"
    );
    let (_, _, _) = call(
        &server,
        Method::POST,
        "/v2/message?username=alice",
        Some(&publisher),
        Some("two"),
    )
    .await;
    let fresh = ticket_for(&server, &token("alice", "", 600)).await;
    let mut resumed = Sse::open(&server.url(&path(&fresh)), first["id"].as_str()).await;
    assert_eq!(resumed.next().await.data, "two", "nothing lost");
    // A ticket whose token has expired since cannot be used either.
    let late = ticket_for(&server, &token("alice", "", 2)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, json) = call(&server, Method::GET, &path(&late), None, None).await;
    assert_eq!(status, 401, "{json}");
    server.stop().await;
}

/// `server_sent_events ARGS` run to its end: (exit code, stdout, stderr).
async fn run_binary(args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_server_sent_events"));
    command
        .args(args)
        .env_remove("SSE_JWT_SECRET")
        .env_remove("SSE_AUTH");
    crate::support::output_of(command, Duration::from_secs(30)).await
}

/// Issue 9: the server refuses to start exposed without access control, in jwt mode without
/// a key, or with a short secret, each with a message naming the flags; `token` mints a token
/// the server accepts and refuses without a secret.
#[tokio::test]
async fn start_up_refusals_and_the_token_command() {
    for (args, says) in [
        (vec!["--bind", "0.0.0.0:0"], "--auth jwt"),
        (vec!["--auth", "jwt"], "--jwt-secret"),
        (
            vec!["--auth", "jwt", "--jwt-secret", "short"],
            "at least 32 bytes",
        ),
        (
            vec!["--auth", "jwt", "--jwt-public-key", "/nonexistent.pem"],
            "cannot read --jwt-public-key",
        ),
    ] {
        let (code, _, err) = run_binary(&args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, _, err) = run_binary(&["token", "--sub", "alice"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--jwt-secret"), "{err}");
    let (code, out, err) = run_binary(&[
        "token",
        "--sub",
        "alice",
        "--scope",
        "publish",
        "--jwt-secret",
        SECRET,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let server = jwt_server().await;
    let minted = out.trim();
    let (status, _, json) = call(
        &server,
        Method::POST,
        "/v2/message?username=bob",
        Some(minted),
        Some("hi"),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    server.stop().await;
}

/// Issue 9: in the open mode on loopback, a request addressed to another host (a DNS
/// rebinding page) is refused; loopback names pass.
#[tokio::test]
async fn the_open_mode_answers_loopback_hosts_only() {
    let server = TestServer::start().await;
    for host in ["evil.example", "evil.example:3000", "10.1.2.3"] {
        let response = client()
            .get(server.url("/v4/reports?user_id=2b7c4d1e-9f3a-4c5b-8d6e-1a2b3c4d5e6f"))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        let (status, json) = json_of(response).await;
        assert_eq!(status, 403, "{host}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains("loopback host"),
            "{json}"
        );
    }
    for host in ["localhost:3000", "127.0.0.1", "[::1]:8080"] {
        let response = client()
            .get(server.url("/healthz"))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
    let (status, json) = server.get_json("/auth/config").await;
    assert_eq!((status, json), (200, json!({ "mode": "none" })));
    server.stop().await;
}

/// Issue 9: `update_report_status.sh` sends `$SSE_TOKEN` as the bearer token.
#[tokio::test]
async fn the_script_sends_its_token() {
    let server = jwt_server().await;
    let alice = token(ALICE, "", 600);
    let (status, _, created) = call(
        &server,
        Method::POST,
        &format!("/v4/new/report?user_id={ALICE}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["reportId"].as_str().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("update_report_status.sh");
    let run = |token: Option<String>| {
        let mut command = tokio::process::Command::new(&script);
        command
            .args([ALICE, id, "queued"])
            .env("SSE_BASE_URL", server.url(""))
            .env_remove("SSE_TOKEN");
        if let Some(token) = token {
            command.env("SSE_TOKEN", token);
        }
        async move {
            let output = tokio::time::timeout(Duration::from_secs(60), command.output())
                .await
                .unwrap()
                .unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        }
    };
    let (code, out) = run(None).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.trim_end().ends_with("HTTP 401"), "{out}");
    let (code, out) = run(Some(alice.clone())).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(&alice), "the token is never printed");
    server.stop().await;
}

/// Issue 9: a `/v1` stream ends with its token too.
#[tokio::test]
async fn a_v1_stream_ends_with_its_token() {
    let server = jwt_server().await;
    let mut tab = open_with_bearer(&server, "/v1/sse?username=alice", &token("alice", "", 2)).await;
    assert_eq!(tab.next().await.data, "hi!");
    let ended = tab.next_within(Duration::from_secs(5)).await;
    assert_eq!(ended.event, "auth_expired");
    assert!(tab.ends_within(Duration::from_secs(2)).await);
    server.stop().await;
}

/// Issue 9: a CORS preflight from an allowed origin may send `Authorization` (the dashboard's
/// dev server); the preflight itself needs no token.
#[tokio::test]
async fn cors_preflights_allow_the_authorization_header() {
    let server = jwt_server().await;
    let response = server
        .request(Method::OPTIONS, "/v4/reports")
        .header("Origin", "http://localhost:5173")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let allowed = response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    server.stop().await;
}

/// The raw 32-byte public key of an Ed25519 private key PEM, as a JWK's base64url `x`.
fn ed25519_x(dir: &std::path::Path, private: &[u8]) -> String {
    let path = dir.join("jwk-src.key");
    std::fs::write(&path, private).unwrap();
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&path)
        .output()
        .unwrap()
        .stdout;
    assert_eq!(der.len(), 44, "Ed25519 SubjectPublicKeyInfo");
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[12..])
}

/// Issue 9: keys from a JWKS document served on 127.0.0.1, chosen by `kid`: a known kid
/// passes, an unknown one is refused, a rotation is picked up on the next fetch, and a flood of
/// made-up kids costs the key server at most one fetch per period.
#[tokio::test]
async fn jwks_keys_by_kid_with_rotation() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let (a_private, _) = key_pair(dir.path(), "ed");
    let (b_private, _) = key_pair(dir.path(), "ed");
    let jwk = |kid: &str, private: &[u8]| json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": ed25519_x(dir.path(), private) });
    let document = Arc::new(Mutex::new(json!({ "keys": [jwk("a", &a_private)] })));
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = {
        let (document, fetches) = (document.clone(), fetches.clone());
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (document, fetches) = (document.clone(), fetches.clone());
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(document.lock().unwrap().clone())
                }
            }),
        )
    };
    let key_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let server = TestServer::start_with(move |c| {
        c.auth = Mode::Jwt;
        c.jwks_url = Some(jwks_url);
    })
    .await;
    let signed = |kid: Option<&str>, private: &[u8]| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        let claims = json!({ "sub": "alice", "exp": now() + 600 });
        jsonwebtoken::encode(&header, &claims, &private_key("ed", private)).unwrap()
    };
    let path = "/v2/broadcast";
    let publish = |token: String| {
        let server = &server;
        async move {
            let token = token;
            call(server, Method::POST, path, Some(&token), Some("x")).await
        }
    };
    // The broadcast needs the publish scope: a 403 proves the token itself was accepted.
    assert_eq!(publish(signed(Some("a"), &a_private)).await.0, 403);
    let (status, _, json) = publish(signed(Some("b"), &b_private)).await;
    assert_eq!(status, 401, "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("unknown token key id"),
        "{json}"
    );
    let (status, _, json) = publish(signed(Some("a"), &b_private)).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("bad token signature"))
    );
    let (status, _, json) = publish(signed(None, &a_private)).await;
    assert_eq!(status, 401, "{json}");
    assert!(json["error"].as_str().unwrap().contains("no kid"), "{json}");

    // A flood of made-up kids: at most one more fetch within the refetch period.
    let before = fetches.load(Ordering::SeqCst);
    for i in 0..20 {
        let (status, _, _) = publish(signed(Some(&format!("made-up-{i}")), &a_private)).await;
        assert_eq!(status, 401);
    }
    let during = fetches.load(Ordering::SeqCst) - before;
    assert!(during <= 1, "{during} fetches for 20 unknown kids");

    // Rotation: key b is published; the next fetch (after the refetch period) finds it.
    document.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(jwk("b", &b_private));
    let started = std::time::Instant::now();
    loop {
        let (status, _, json) = publish(signed(Some("b"), &b_private)).await;
        if status == 403 {
            break;
        }
        assert_eq!(status, 401, "{json}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "rotation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        publish(signed(Some("a"), &a_private)).await.0,
        403,
        "a still works"
    );
    server.stop().await;
    key_server.abort();
}

/// Issue 9, as the README documents it: with one `--ticket-secret` on two instances, a ticket
/// from one opens a stream on the other (once); without it, a ticket works only where it was
/// issued.
#[tokio::test]
async fn tickets_across_instances() {
    const TICKETS: &str = "ticket-secret-shared-by-instances-0001";
    let shared = |c: &mut server_sent_events::config::Config| {
        c.auth = Mode::Jwt;
        c.jwt_secret = Some(Secret(SECRET.to_owned()));
        c.ticket_secret = Some(Secret(TICKETS.to_owned()));
    };
    let a = TestServer::start_with(shared).await;
    let b = TestServer::start_with(shared).await;
    let alice = token("alice", "", 600);
    let path = |t: &str| format!("/v2/sse?username=alice&ticket={t}");
    let ticket = ticket_for(&a, &alice).await;
    Sse::open(&b.url(&path(&ticket)), None).await;
    let (status, _, json) = call(&b, Method::GET, &path(&ticket), None, None).await;
    assert_eq!(status, 401, "used once on B: {json}");

    let own = jwt_server().await;
    let elsewhere = ticket_for(&a, &alice).await;
    let (status, _, json) = call(&own, Method::GET, &path(&elsewhere), None, None).await;
    assert_eq!(status, 401, "another ticket key: {json}");
    let (status, _, json) = call(
        &a,
        Method::GET,
        &path(&ticket_for(&own, &alice).await),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "a per-process key: {json}");
    a.stop().await;
    b.stop().await;
    own.stop().await;
}

/// Issue 9: neither a token nor a ticket reaches the log, also at debug level, whether the
/// request was taken or refused.
#[tokio::test]
async fn tokens_and_tickets_never_reach_the_log() {
    let server = crate::support::ChildServer::start(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--log",
        "debug",
    ])
    .await;
    let client = crate::support::client();
    let alice = token("alice", "", 600);
    let publisher = token("svc", "publish", 600);
    let expired = hs256(json!({ "sub": "alice", "exp": now() - 3600 }));
    let answer = client
        .post(server.url("/auth/ticket"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let (status, json) = crate::support::json_of(answer).await;
    assert_eq!(status, 200, "{json}");
    let ticket = json["ticket"].as_str().unwrap().to_owned();
    let mut stream = Sse::open(
        &server.url(&format!("/v2/sse?username=alice&ticket={ticket}")),
        None,
    )
    .await;
    let sent = client
        .post(server.url("/v2/message?username=alice"))
        .bearer_auth(&publisher)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    assert_eq!(stream.next().await.data, "hello");
    // Refused: a used ticket, an expired token, a token without the scope.
    let used = client
        .get(server.url(&format!("/v2/sse?username=alice&ticket={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), 401);
    for bearer in [&expired, &alice] {
        let refused = client
            .post(server.url("/v2/message?username=alice"))
            .bearer_auth(bearer)
            .body("no")
            .send()
            .await
            .unwrap();
        assert!(refused.status() == 401 || refused.status() == 403);
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("stream opened"),
        "no debug log captured: {log}"
    );
    for (what, secret) in [
        ("a token", alice.as_str()),
        ("a token", publisher.as_str()),
        ("an expired token", expired.as_str()),
        ("a ticket", ticket.as_str()),
    ] {
        // A token's signature part alone is enough to give it away.
        let tail = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(tail), "{what} is in the log:\n{log}");
    }
    server.stop().await;
}
