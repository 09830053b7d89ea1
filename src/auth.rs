//! Access control: who a request comes from and what it may do.
//!
//! - **Modes.** `--auth none` (the default) lets every request do everything, for the local
//!   demo; the server then serves only on loopback (see [`crate::config::Config::check_exposure`])
//!   and only to loopback `Host` names. `--auth jwt` requires a JSON Web Token on every route
//!   but `/healthz`, `/readyz` and `/auth/config`.
//! - **Tokens** are verified with the configured keys only: an HS256 secret and/or a PEM public
//!   key whose type fixes the algorithm (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA). The
//!   token's header may only pick among those, so `alg: none` and an HS256 token signed with a
//!   public key are refused. `exp` and `sub` are required; `nbf`, `iss` and `aud` are checked.
//! - **Claims.** `sub` is the identity; `scope` (space separated) may hold `publish` and `admin`.
//! - **Tickets** carry a token's identity into an `EventSource` URL: short-lived (30 s), single
//!   use, signed with the ticket key (`--ticket-secret`, shared by the instances behind one
//!   load balancer; without it a random key of this process, so a ticket is good only on the
//!   instance that issued it). A stream opened with one lives no longer than its token.
//!
//! Tokens and tickets are never logged.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How long a ticket may be redeemed after it was issued.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);
/// Shortest HS256 secret accepted (bytes), as RFC 7518 asks for HS256.
pub const MIN_SECRET_LEN: usize = 32;
/// Most tickets remembered as used at once (each only for its 30 s lifetime).
const MAX_USED_TICKETS: usize = 1_000_000;
/// The `typ` claim of a ticket, so no other token signed with the same key passes as one.
const TICKET_TYPE: &str = "sse-ticket";

/// `--auth`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No access control (loopback only): every request may do everything.
    #[default]
    None,
    /// JSON Web Tokens (bearer tokens, and tickets for streams).
    Jwt,
}

/// Who a request comes from and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The identity (`sub`); empty in `none` mode.
    pub sub: String,
    /// May publish to anyone (`publish` scope).
    pub publish: bool,
    /// May do everything (`admin` scope, or `none` mode).
    pub admin: bool,
    /// When the authorisation ends (the token's `exp`); `None` in `none` mode.
    pub expires: Option<SystemTime>,
}

impl Principal {
    /// The caller of the open (`none`) mode: allowed everything, for ever.
    pub fn open() -> Self {
        Self {
            sub: String::new(),
            publish: true,
            admin: true,
            expires: None,
        }
    }

    /// Whether the caller may read and change what belongs to `owner` (its streams, its
    /// reports). `owner` is compared as given; v4 passes the canonical lowercase UUID.
    pub fn may_act_as(&self, owner: &str) -> bool {
        self.admin || self.sub == owner
    }

    /// Whether the caller may publish messages to anyone and broadcast.
    pub fn may_publish(&self) -> bool {
        self.admin || self.publish
    }

    fn scope(&self) -> String {
        let mut parts = Vec::new();
        if self.publish {
            parts.push("publish");
        }
        if self.admin {
            parts.push("admin");
        }
        parts.join(" ")
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all (401, `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Missing(String),
    /// Credentials that do not hold (401, `error="invalid_token"`).
    #[error("{0}")]
    Invalid(String),
    /// Valid credentials that do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
}

/// The claims this server reads (others are ignored).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

/// The claims of a ticket.
#[derive(Debug, Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    scope: String,
    /// When the ticket may no longer be redeemed.
    exp: u64,
    /// When the token it came from expires: the stream's end.
    token_exp: u64,
    /// Its unique id, for single use.
    jti: String,
    typ: String,
}

/// A configured verification key.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Settings of [`Auth::new`].
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The mode.
    pub mode: Mode,
    /// HS256 secret.
    pub secret: Option<String>,
    /// PEM text of a public key (RSA, EC P-256 or Ed25519).
    pub public_key_pem: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`.
    pub leeway: Duration,
    /// Ticket key shared by instances; `None`: a random key of this process.
    pub ticket_secret: Option<String>,
    /// A JWKS document of keys chosen by the tokens' `kid`.
    pub jwks_url: Option<String>,
}

/// The access control of one server.
pub struct Auth {
    mode: Mode,
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    ticket_encoding: EncodingKey,
    ticket_decoding: DecodingKey,
    /// Keys fetched from `--jwks-url`, by `kid`.
    jwks: Option<Jwks>,
    /// Tickets already redeemed, until they expire (single use).
    used: Mutex<HashMap<String, u64>>,
    /// Bearer tokens verified lately (see [`Verified`]).
    verified: Mutex<Verified>,
}

/// Bearer tokens whose signature and claims were checked lately, with what they grant: a
/// publisher sends the same token with every request, and checking its signature and parsing
/// its claims each time cost about a fifth of the CPU of a delivery. An entry is used only
/// within [`VERIFIED_FOR`] of its check and before its token's `exp` (with the leeway): then
/// the token is checked again, so an expiry or a key change takes effect within that time.
/// Only tokens that passed are kept, so this holds nothing a caller could not present anyway,
/// and at most [`VERIFIED_MAX_BYTES`] of them (the whole set is dropped when full).
#[derive(Default)]
struct Verified {
    tokens: HashMap<Box<str>, (Principal, Instant)>,
    bytes: usize,
}

/// How long a verified token is taken without checking it again.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most bytes of tokens kept verified.
const VERIFIED_MAX_BYTES: usize = 1 << 20;
/// Longer tokens are checked every time.
const VERIFIED_MAX_TOKEN: usize = 4096;

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The access control `config` asks for; a clear message when it cannot be set up (jwt
    /// mode without a key, a short secret, a key file that is not a supported public key).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.secret {
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "--jwt-secret must be at least {MIN_SECRET_LEN} bytes (it has {})",
                    secret.len()
                ));
            }
            keys.push(Key {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(pem) = &config.public_key_pem {
            keys.push(public_key(pem)?);
        }
        let jwks = match &config.jwks_url {
            Some(url) => Some(Jwks::new(url)?),
            None => None,
        };
        if config.mode == Mode::Jwt && keys.is_empty() && jwks.is_none() {
            return Err(
                "--auth jwt needs a key to verify tokens: --jwt-secret (SSE_JWT_SECRET, HS256), \
                 --jwt-public-key FILE (PEM: RSA, EC P-256 or Ed25519) or --jwks-url URL"
                    .to_owned(),
            );
        }
        let ticket_secret = match &config.ticket_secret {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(format!(
                    "--ticket-secret must be at least {MIN_SECRET_LEN} bytes (it has {})",
                    s.len()
                ));
            }
            Some(s) if Some(s) == config.secret.as_ref() => {
                return Err(
                    "--ticket-secret must differ from --jwt-secret (a ticket must never pass \
                     as a token)"
                        .to_owned(),
                );
            }
            Some(s) => s.as_bytes().to_vec(),
            None => random_secret(),
        };
        Ok(Self {
            mode: config.mode,
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            ticket_encoding: EncodingKey::from_secret(&ticket_secret),
            ticket_decoding: DecodingKey::from_secret(&ticket_secret),
            jwks,
            used: Mutex::new(HashMap::new()),
            verified: Mutex::new(Verified::default()),
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The caller of a request with `authorization` (the header's value, if any) and
    /// `ticket` (the `ticket` query parameter, if any, honoured only where `tickets_ok`).
    /// In `none` mode everything is allowed.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        ticket: Option<&str>,
        tickets_ok: bool,
    ) -> Result<Principal, AuthError> {
        if self.mode == Mode::None {
            return Ok(Principal::open());
        }
        if let Some(value) = authorization {
            let token = bearer(value)?;
            return self.verify_token(token).await;
        }
        match ticket {
            Some(ticket) if tickets_ok => self.redeem(ticket),
            Some(_) => Err(AuthError::Invalid(
                "tickets open streams only; send the token in Authorization: Bearer".to_owned(),
            )),
            None => Err(AuthError::Missing(if tickets_ok {
                "authentication required: Authorization: Bearer <token>, or ?ticket= from \
                 POST /auth/ticket"
                    .to_owned()
            } else {
                "authentication required: Authorization: Bearer <token>".to_owned()
            })),
        }
    }

    /// Verifies a bearer token: with the JWKS key its `kid` names, when `--jwks-url` is set
    /// and the token has a `kid`; else with the configured keys.
    pub async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.verified_lately(token) {
            return Ok(principal);
        }
        let principal = self.verify_token_now(token).await?;
        self.note_verified(token, &principal);
        Ok(principal)
    }

    /// What `token` grants, if it was verified within [`VERIFIED_FOR`] and has not expired.
    fn verified_lately(&self, token: &str) -> Option<Principal> {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        let (principal, at) = verified.tokens.get(token)?;
        let deadline = principal.expires.map(|exp| exp + self.leeway);
        if at.elapsed() < VERIFIED_FOR && deadline.is_none_or(|d| SystemTime::now() < d) {
            return Some(principal.clone());
        }
        if let Some((key, _)) = verified.tokens.remove_entry(token) {
            verified.bytes -= key.len();
        }
        None
    }

    fn note_verified(&self, token: &str, principal: &Principal) {
        if token.len() > VERIFIED_MAX_TOKEN {
            return;
        }
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.bytes + token.len() > VERIFIED_MAX_BYTES {
            *verified = Verified::default();
        }
        let previous = verified
            .tokens
            .insert(token.into(), (principal.clone(), Instant::now()));
        if previous.is_none() {
            verified.bytes += token.len();
        }
    }

    /// [`Auth::verify_token`] without the memory of tokens verified lately.
    async fn verify_token_now(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("malformed token: not a signed JWT (header unreadable)"))?;
        if let (Some(jwks), Some(kid)) = (&self.jwks, &header.kid) {
            let key = jwks.key(kid).await?;
            if key.algorithm != header.alg {
                return Err(invalid(&format!(
                    "token algorithm {:?} is not that of its key {kid:?} ({:?})",
                    header.alg, key.algorithm
                )));
            }
            return self.check(token, &key);
        }
        if self.keys.is_empty() {
            return Err(invalid(
                "token has no kid, and keys are known only by kid (JWKS)",
            ));
        }
        self.verify(token)
    }

    /// Verifies a bearer token with the configured (non-JWKS) keys.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("malformed token: not a signed JWT (header unreadable)"))?;
        let Some(key) = self.keys.iter().find(|k| k.algorithm == header.alg) else {
            return Err(invalid(&format!(
                "token algorithm {:?} is not accepted here (accepted: {})",
                header.alg,
                self.keys
                    .iter()
                    .map(|k| format!("{:?}", k.algorithm))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        self.check(token, key)
    }

    /// Checks `token`'s signature with `key` and its claims.
    fn check(&self, token: &str, key: &Key) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| invalid(&describe(e.kind())))?;
        let claims = data.claims;
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(invalid("token lacks the required sub or exp claim"));
        };
        if sub.is_empty() {
            return Err(invalid("token has an empty sub"));
        }
        let scopes: Vec<&str> = claims
            .scope
            .as_deref()
            .unwrap_or("")
            .split_ascii_whitespace()
            .collect();
        Ok(Principal {
            sub,
            publish: scopes.contains(&"publish"),
            admin: scopes.contains(&"admin"),
            expires: Some(UNIX_EPOCH + Duration::from_secs(exp)),
        })
    }

    /// A ticket for `caller`: `(ticket, lifetime)`.
    pub fn issue_ticket(&self, caller: &Principal) -> Result<(String, Duration), AuthError> {
        let now = unix_now();
        let token_exp = caller
            .expires
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now, |d| d.as_secs());
        let claims = TicketClaims {
            sub: caller.sub.clone(),
            scope: caller.scope(),
            exp: now + TICKET_LIFETIME.as_secs(),
            token_exp,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            typ: TICKET_TYPE.to_owned(),
        };
        let ticket = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.ticket_encoding,
        )
        .map_err(|e| AuthError::Invalid(format!("cannot issue a ticket: {e}")))?;
        Ok((ticket, TICKET_LIFETIME))
    }

    /// Redeems a ticket once, within its lifetime.
    fn redeem(&self, ticket: &str) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<TicketClaims>(ticket, &self.ticket_decoding, &validation)
            .map_err(|e| {
                invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        "ticket expired: get a new one from POST /auth/ticket"
                    }
                    _ => "invalid ticket (forged, damaged, or issued by another server)",
                })
            })?;
        let claims = data.claims;
        if claims.typ != TICKET_TYPE {
            return Err(invalid("invalid ticket (not a ticket)"));
        }
        let now = unix_now();
        {
            let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
            if used.len() >= MAX_USED_TICKETS / 2 {
                used.retain(|_, exp| *exp >= now);
            }
            if used.len() >= MAX_USED_TICKETS {
                return Err(invalid("too many tickets in use; try again shortly"));
            }
            if used.insert(claims.jti, claims.exp).is_some() {
                return Err(invalid(
                    "ticket already used: get a new one from POST /auth/ticket",
                ));
            }
        }
        if claims.token_exp <= now {
            return Err(invalid("the token this ticket came from has expired"));
        }
        let scopes: Vec<&str> = claims.scope.split_ascii_whitespace().collect();
        Ok(Principal {
            sub: claims.sub,
            publish: scopes.contains(&"publish"),
            admin: scopes.contains(&"admin"),
            expires: Some(UNIX_EPOCH + Duration::from_secs(claims.token_exp)),
        })
    }
}

/// Least time between two fetches of the JWKS document (a token with an unknown `kid` asks
/// for one): a flood of made-up `kid`s costs the key server one request per period.
const JWKS_REFETCH: Duration = Duration::from_secs(5);
/// Longest a fetch of the JWKS document may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// Keys from a JWKS document (`--jwks-url`), by `kid`, fetched when a token names a `kid` not
/// seen yet, at most once per [`JWKS_REFETCH`]. Each key's algorithm is fixed by its type
/// (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA); a key whose `alg` says otherwise is skipped.
struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: std::sync::RwLock<HashMap<String, std::sync::Arc<Key>>>,
    /// When the document was last fetched; held during a fetch, so there is one at a time.
    fetched: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl Jwks {
    fn new(url: &str) -> Result<Self, String> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("--jwks-url must be an http(s) URL: {url:?}"));
        }
        let client = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .connect_timeout(JWKS_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the JWKS client: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            keys: std::sync::RwLock::new(HashMap::new()),
            fetched: tokio::sync::Mutex::new(None),
        })
    }

    fn cached(&self, kid: &str) -> Option<std::sync::Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    async fn key(&self, kid: &str) -> Result<std::sync::Arc<Key>, AuthError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let mut fetched = self.fetched.lock().await;
        if let Some(key) = self.cached(kid) {
            return Ok(key); // fetched by the request we waited for
        }
        if fetched.is_none_or(|at| at.elapsed() >= JWKS_REFETCH) {
            *fetched = Some(std::time::Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), "JWKS fetched");
                    *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
                }
                Err(error) => tracing::warn!(%error, url = %self.url, "JWKS fetch failed"),
            }
        }
        drop(fetched);
        self.cached(kid)
            .ok_or_else(|| invalid("unknown token key id (kid)"))
    }

    async fn fetch(&self) -> Result<HashMap<String, std::sync::Arc<Key>>, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
        {
            return Err("document too large".to_owned());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading failed: {e}"))?;
        if body.len() > JWKS_MAX_BYTES {
            return Err("document too large".to_owned());
        }
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Some(algorithm) = jwk_algorithm(jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.insert(kid, std::sync::Arc::new(Key { algorithm, key }));
        }
        Ok(keys)
    }
}

/// The algorithm a JWK's type fixes; `None` for an unsupported key, or one whose `alg` names
/// another algorithm.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        Some(declared) if format!("{declared:?}") != format!("{algorithm:?}") => None,
        _ => Some(algorithm),
    }
}

/// Mints a token signed with `secret` (HS256), for `server_sent_events token`.
pub fn mint(secret: &str, sub: &str, scope: &str, ttl: Duration) -> Result<String, String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "--jwt-secret must be at least {MIN_SECRET_LEN} bytes (it has {})",
            secret.len()
        ));
    }
    if sub.is_empty() {
        return Err("--sub must not be empty".to_owned());
    }
    #[derive(Serialize)]
    struct Minted<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
        #[serde(skip_serializing_if = "str::is_empty")]
        scope: &'a str,
    }
    let now = unix_now();
    let claims = Minted {
        sub,
        exp: now + ttl.as_secs().max(1),
        iat: now,
        scope,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the token: {e}"))
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Result<&str, AuthError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| invalid("malformed Authorization header (not text)"))?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| invalid("malformed Authorization header: expected Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing(
            "unsupported authorization scheme: use Authorization: Bearer <token>".to_owned(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(invalid("malformed Authorization header: empty token"));
    }
    Ok(token)
}

fn public_key(pem: &str) -> Result<Key, String> {
    let bytes = pem.as_bytes();
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        return Ok(Key {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        return Ok(Key {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        return Ok(Key {
            algorithm: Algorithm::EdDSA,
            key,
        });
    }
    Err(
        "--jwt-public-key is not a PEM public key of a supported type (RSA, EC P-256, Ed25519)"
            .to_owned(),
    )
}

/// What is wrong with a token, for its 401 (no key material, no token text).
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".to_owned(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf is in the future)".to_owned(),
        ErrorKind::InvalidSignature => "bad token signature".to_owned(),
        ErrorKind::InvalidIssuer => "wrong token issuer (iss)".to_owned(),
        ErrorKind::InvalidAudience => "wrong token audience (aud)".to_owned(),
        ErrorKind::InvalidAlgorithm => "token algorithm is not accepted here".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the required {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("token claim {claim} has the wrong type"),
        _ => "malformed token".to_owned(),
    }
}

fn invalid(message: &str) -> AuthError {
    AuthError::Invalid(message.to_owned())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 random bytes (from the OS, through UUID v4's generator).
fn random_secret() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn jwt() -> Auth {
        Auth::new(&AuthConfig {
            mode: Mode::Jwt,
            secret: Some(SECRET.to_owned()),
            leeway: Duration::from_secs(30),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn set_up_refusals_are_clear() {
        let no_key = Auth::new(&AuthConfig {
            mode: Mode::Jwt,
            ..AuthConfig::default()
        });
        assert!(no_key.unwrap_err().contains("--jwt-secret"));
        let short = Auth::new(&AuthConfig {
            mode: Mode::Jwt,
            secret: Some("short".to_owned()),
            ..AuthConfig::default()
        });
        assert!(short.unwrap_err().contains("at least 32 bytes"));
        let bad_pem = Auth::new(&AuthConfig {
            mode: Mode::Jwt,
            public_key_pem: Some("not a key".to_owned()),
            ..AuthConfig::default()
        });
        assert!(bad_pem.unwrap_err().contains("PEM"));
        let same = Auth::new(&AuthConfig {
            mode: Mode::Jwt,
            secret: Some(SECRET.to_owned()),
            ticket_secret: Some(SECRET.to_owned()),
            ..AuthConfig::default()
        });
        assert!(same.unwrap_err().contains("differ"));
    }

    #[tokio::test]
    async fn a_verified_token_is_taken_again_until_it_expires() {
        let auth = Auth::new(&AuthConfig {
            mode: Mode::Jwt,
            secret: Some(SECRET.to_owned()),
            leeway: Duration::ZERO,
            ..AuthConfig::default()
        })
        .unwrap();
        let token = mint(SECRET, "alice", "publish", Duration::from_secs(2)).unwrap();
        let first = auth.verify_token(&token).await.unwrap();
        assert_eq!(auth.verified_lately(&token), Some(first.clone()));
        assert_eq!(auth.verify_token(&token).await.unwrap(), first);
        // A refused token is never kept.
        let forged = mint(
            "another secret of at least 32 bytes!",
            "alice",
            "admin",
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(auth.verify_token(&forged).await.is_err());
        assert_eq!(auth.verified_lately(&forged), None);
        // Past its exp, the token is checked again, and refused as expired.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert_eq!(auth.verified_lately(&token), None);
        assert_eq!(
            auth.verify_token(&token).await,
            Err(invalid("token expired"))
        );
    }

    #[tokio::test]
    async fn tokens_carry_identity_and_scope() {
        let auth = jwt();
        let token = mint(SECRET, "alice", "publish", Duration::from_secs(60)).unwrap();
        let who = auth
            .authenticate(Some(format!("Bearer {token}").as_bytes()), None, false)
            .await
            .unwrap();
        assert_eq!(
            (who.sub.as_str(), who.publish, who.admin),
            ("alice", true, false)
        );
        assert!(who.may_act_as("alice") && !who.may_act_as("bob") && who.may_publish());
        let plain = mint(SECRET, "bob", "", Duration::from_secs(60)).unwrap();
        let who = auth.verify(&plain).unwrap();
        assert!(!who.may_publish());
        let wrong = mint(
            "another secret of thirty-two bytes!!",
            "bob",
            "",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(auth.verify(&wrong), Err(invalid("bad token signature")));
        assert!(matches!(
            auth.authenticate(None, None, true).await,
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Basic abc"), None, true).await,
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Bearer not-a-jwt"), None, true)
                .await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn tickets_are_single_use_and_carry_the_tokens_end() {
        let auth = jwt();
        let token = mint(SECRET, "alice", "", Duration::from_secs(600)).unwrap();
        let who = auth.verify(&token).unwrap();
        let (ticket, lifetime) = auth.issue_ticket(&who).unwrap();
        assert_eq!(lifetime, TICKET_LIFETIME);
        let redeemed = auth.authenticate(None, Some(&ticket), true).await.unwrap();
        assert_eq!(redeemed, who);
        assert!(
            matches!(auth.authenticate(None, Some(&ticket), true).await, Err(AuthError::Invalid(m)) if m.contains("already used"))
        );
        let (other, _) = auth.issue_ticket(&who).unwrap();
        assert!(
            auth.authenticate(None, Some(&other), false).await.is_err(),
            "only on streams"
        );
        // A ticket of another server (another ticket key) and a token are not tickets.
        let (foreign, _) = jwt().issue_ticket(&who).unwrap();
        assert!(auth.authenticate(None, Some(&foreign), true).await.is_err());
        assert!(auth.authenticate(None, Some(&token), true).await.is_err());
        // And a ticket is no bearer token.
        assert!(auth.verify(&other).is_err());
    }

    #[tokio::test]
    async fn none_mode_allows_everything() {
        let auth = Auth::new(&AuthConfig::default()).unwrap();
        let who = auth.authenticate(None, None, false).await.unwrap();
        assert_eq!(who, Principal::open());
        assert!(who.may_act_as("anyone") && who.may_publish());
    }
}
