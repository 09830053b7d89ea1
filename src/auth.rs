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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Tickets already redeemed, until they expire (single use).
    used: Mutex<HashMap<String, u64>>,
}

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
        if config.mode == Mode::Jwt && keys.is_empty() {
            return Err(
                "--auth jwt needs a key to verify tokens: --jwt-secret (SSE_JWT_SECRET, HS256) \
                 or --jwt-public-key FILE (PEM: RSA, EC P-256 or Ed25519)"
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
            used: Mutex::new(HashMap::new()),
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The caller of a request with `authorization` (the header's value, if any) and
    /// `ticket` (the `ticket` query parameter, if any, honoured only where `tickets_ok`).
    /// In `none` mode everything is allowed.
    pub fn authenticate(
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
            return self.verify(token);
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

    /// Verifies a bearer token with the configured keys.
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

    #[test]
    fn tokens_carry_identity_and_scope() {
        let auth = jwt();
        let token = mint(SECRET, "alice", "publish", Duration::from_secs(60)).unwrap();
        let who = auth
            .authenticate(Some(format!("Bearer {token}").as_bytes()), None, false)
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
            auth.authenticate(None, None, true),
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Basic abc"), None, true),
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Bearer not-a-jwt"), None, true),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn tickets_are_single_use_and_carry_the_tokens_end() {
        let auth = jwt();
        let token = mint(SECRET, "alice", "", Duration::from_secs(600)).unwrap();
        let who = auth.verify(&token).unwrap();
        let (ticket, lifetime) = auth.issue_ticket(&who).unwrap();
        assert_eq!(lifetime, TICKET_LIFETIME);
        let redeemed = auth.authenticate(None, Some(&ticket), true).unwrap();
        assert_eq!(redeemed, who);
        assert!(
            matches!(auth.authenticate(None, Some(&ticket), true), Err(AuthError::Invalid(m)) if m.contains("already used"))
        );
        let (other, _) = auth.issue_ticket(&who).unwrap();
        assert!(
            auth.authenticate(None, Some(&other), false).is_err(),
            "only on streams"
        );
        // A ticket of another server (another ticket key) and a token are not tickets.
        let (foreign, _) = jwt().issue_ticket(&who).unwrap();
        assert!(auth.authenticate(None, Some(&foreign), true).is_err());
        assert!(auth.authenticate(None, Some(&token), true).is_err());
        // And a ticket is no bearer token.
        assert!(auth.verify(&other).is_err());
    }

    #[test]
    fn none_mode_allows_everything() {
        let auth = Auth::new(&AuthConfig::default()).unwrap();
        let who = auth.authenticate(None, None, false).unwrap();
        assert_eq!(who, Principal::open());
        assert!(who.may_act_as("anyone") && who.may_publish());
    }
}
