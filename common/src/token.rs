//! Bearer-token authentication (invariant 5: authority comes from the token).
//!
//! Tokens are JWTs: `sub` is the user, `device` the device, `exp` is
//! required, `nbf` is honoured, `roles` may grant `moderator` or `service`.
//! Identity never comes from a request field. Production tokens are signed
//! by the host application with RS256, ES256 or EdDSA and verified against
//! its published keys (a JWKS: [`Authenticator::set_key_set`], picked by
//! `kid`, replaced whole when the keys rotate); HS256 with a shared secret
//! stays for local development and tests. `iss` and `aud` are checked when
//! configured. Refusals say what is wrong with the token in a few words and
//! never echo the library's internals.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use imsg_proto::internal::v1::Caller;

use crate::ids::check_id;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm},
};
use serde::{Deserialize, Serialize};
use tonic::{Status, metadata::MetadataMap};

/// Shortest accepted HS256 secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    device: String,
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    /// What else the bearer may do (`moderator`, `service`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
}

/// The role of a moderator (the admin API of reports).
pub const ROLE_MODERATOR: &str = "moderator";
/// The role of the host application's backend (declaring relationships).
pub const ROLE_SERVICE: &str = "service";
/// Every role a token may grant.
pub const ROLES: [&str; 2] = [ROLE_MODERATOR, ROLE_SERVICE];

/// What the claims of every token must say beyond its signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// `iss` must be this, when set.
    pub issuer: Option<String>,
    /// `aud` must include this, when set.
    pub audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self { issuer: None, audience: None, leeway_secs: 5 }
    }
}

/// A verified token: who, and until when.
#[derive(Debug, Clone)]
pub struct Verified {
    pub caller: Caller,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

/// Verifies tokens (and, with a secret, issues HS256 ones for local use).
/// Cheap to clone: clones share the key set.
#[derive(Clone)]
pub struct Authenticator {
    secret: Option<(DecodingKey, EncodingKey)>,
    /// The published keys by `kid`, with the one algorithm each verifies.
    keys: Arc<RwLock<HashMap<String, (DecodingKey, Algorithm)>>>,
    rules: TokenRules,
}

impl Authenticator {
    /// HS256 with `secret` (local development and tests).
    pub fn new(secret: &str) -> Result<Self, String> {
        Self::with_rules(Some(secret), TokenRules::default())
    }

    /// An authenticator with an optional HS256 secret and claim rules; set
    /// the published keys with [`Self::set_key_set`].
    pub fn with_rules(secret: Option<&str>, rules: TokenRules) -> Result<Self, String> {
        let secret = match secret {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(format!("the JWT secret must be at least {MIN_SECRET_BYTES} bytes"));
            }
            Some(secret) => {
                Some((DecodingKey::from_secret(secret.as_bytes()), EncodingKey::from_secret(secret.as_bytes())))
            }
            None => None,
        };
        Ok(Self { secret, keys: Arc::default(), rules })
    }

    /// Replaces the published keys with those of a JWKS document (RS256,
    /// ES256 on P-256, EdDSA on Ed25519; each with a `kid`); answers how
    /// many there are. Tokens signed with a key no longer listed are
    /// refused from now on.
    pub fn set_key_set(&self, jwks_json: &str) -> Result<usize, String> {
        let set: JwkSet = serde_json::from_str(jwks_json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or("every key needs a `kid`")?;
            let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                (AlgorithmParameters::OctetKeyPair(_), None | Some(KeyAlgorithm::EdDSA)) => Algorithm::EdDSA,
                _ => return Err(format!("key {kid}: only RS256, ES256 (P-256) and EdDSA keys are accepted")),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
            // An Ed25519 public key is 32 bytes; jsonwebtoken's verifier
            // slices 32 and would panic on a shorter one (found by the
            // `tokens` fuzz target).
            if algorithm == Algorithm::EdDSA && key.try_get_as_bytes().map_or(true, |bytes| bytes.len() != 32) {
                return Err(format!("key {kid}: an Ed25519 key is 32 bytes"));
            }
            keys.insert(kid, (key, algorithm));
        }
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(count)
    }

    /// A token for `user` on `device`, valid for `ttl_secs` (HS256).
    pub fn issue(&self, user: &str, device: &str, ttl_secs: u64) -> Result<String, String> {
        self.issue_with_roles(user, device, ttl_secs, &[])
    }

    /// A token that also grants `roles` (each one of [`ROLES`]).
    pub fn issue_with_roles(&self, user: &str, device: &str, ttl_secs: u64, roles: &[&str]) -> Result<String, String> {
        check_id(user).map_err(|e| format!("user: {e}"))?;
        check_id(device).map_err(|e| format!("device: {e}"))?;
        if let Some(unknown) = roles.iter().find(|r| !ROLES.contains(r)) {
            return Err(format!("unknown role `{unknown}` (known: {})", ROLES.join(", ")));
        }
        let (_, encoding) = self.secret.as_ref().ok_or("issuing tokens needs the HS256 secret")?;
        let now = unix_now();
        let claims = Claims {
            sub: user.to_owned(),
            device: device.to_owned(),
            iat: now,
            exp: now + ttl_secs,
            nbf: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding).map_err(|e| e.to_string())
    }

    /// The caller a request's `authorization: Bearer <jwt>` names.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.authenticate_until(metadata).map(|verified| verified.caller)
    }

    /// [`Self::authenticate`], with the token's expiry.
    pub fn authenticate_until(&self, metadata: &MetadataMap) -> Result<Verified, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization metadata (Bearer token)"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        self.verify(token)
    }

    /// Verifies a token: its signature by the key its header names, its
    /// claims by the rules.
    pub fn verify(&self, token: &str) -> Result<Verified, Status> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Status::unauthenticated("token malformed"))?;
        let keys;
        let (key, algorithm) = match (header.alg, &header.kid) {
            (Algorithm::HS256, _) => match &self.secret {
                Some((key, _)) => (key, Algorithm::HS256),
                None => return Err(Status::unauthenticated("token algorithm not accepted")),
            },
            (_, Some(kid)) => {
                keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
                match keys.get(kid) {
                    Some((key, algorithm)) if *algorithm == header.alg => (key, *algorithm),
                    Some(_) => return Err(Status::unauthenticated("token algorithm does not match its key")),
                    None => return Err(Status::unauthenticated("token signed by an unknown key")),
                }
            }
            (_, None) => return Err(Status::unauthenticated("token names no key (kid)")),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.rules.leeway_secs;
        match &self.rules.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.rules.issuer {
            validation.set_issuer(&[issuer]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            Status::unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not yet valid",
                ErrorKind::InvalidSignature => "token signature invalid",
                ErrorKind::InvalidAudience => "token audience not accepted",
                ErrorKind::InvalidIssuer => "token issuer not accepted",
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => "token claims incomplete",
                _ => "token invalid",
            })
        })?;
        let claims = data.claims;
        check_id(&claims.sub).map_err(|e| Status::unauthenticated(format!("token claim sub: {e}")))?;
        check_id(&claims.device).map_err(|e| Status::unauthenticated(format!("token claim device: {e}")))?;
        // Unknown roles grant nothing.
        let roles = claims.roles.into_iter().filter(|r| ROLES.contains(&r.as_str())).collect();
        Ok(Verified { caller: Caller { user_id: claims.sub, device_id: claims.device, roles }, expires_at: claims.exp })
    }
}

/// Keys and tokens for tests (here and in other crates' tests, with the
/// `test-keys` feature): Ed25519 keys from fixed seeds, their JWKS form.
#[cfg(any(test, feature = "test-keys"))]
pub mod testing {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    /// An Ed25519 key from a fixed seed: (signing key, its JWK as JSON).
    pub fn ed25519(seed: u8, kid: &str) -> (EncodingKey, serde_json::Value) {
        use base64::Engine as _;
        let signing = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        // PKCS#8 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix.
        let mut der =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        der.extend_from_slice(&[seed; 32]);
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
        let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA" });
        (EncodingKey::from_ed_der(&der), jwk)
    }

    /// A JWKS document of these keys.
    pub fn key_set(keys: &[&serde_json::Value]) -> String {
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// `claims` signed with `key` (EdDSA) under `kid`.
    pub fn sign(key: &EncodingKey, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, key).expect("signing a test token")
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", format!("Bearer {token}").parse().unwrap());
        map
    }

    #[test]
    fn issued_tokens_authenticate_as_their_user_and_device() {
        let auth = Authenticator::new("0123456789abcdef0123").unwrap();
        let token = auth.issue("alice", "phone", 60).unwrap();
        let caller = auth.authenticate(&metadata(&token)).unwrap();
        assert_eq!((caller.user_id.as_str(), caller.device_id.as_str()), ("alice", "phone"));
    }

    #[test]
    fn wrong_secret_expired_and_missing_tokens_are_unauthenticated() {
        let auth = Authenticator::new("0123456789abcdef0123").unwrap();
        let other = Authenticator::new("another-secret-of-enough-length").unwrap();
        let forged = other.issue("alice", "phone", 60).unwrap();
        assert_eq!(auth.authenticate(&metadata(&forged)).unwrap_err().code(), tonic::Code::Unauthenticated);
        let expired = {
            let claims =
                Claims { sub: "alice".into(), device: "phone".into(), iat: 1, exp: 2, nbf: None, roles: vec![] };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.secret.as_ref().unwrap().1).unwrap()
        };
        let status = auth.authenticate(&metadata(&expired)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"));
        assert_eq!(auth.authenticate(&MetadataMap::new()).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn roles_travel_in_the_token_and_unknown_ones_are_refused() {
        let auth = Authenticator::new("0123456789abcdef0123").unwrap();
        let token = auth.issue_with_roles("mod", "desk", 60, &[ROLE_MODERATOR]).unwrap();
        assert_eq!(auth.authenticate(&metadata(&token)).unwrap().roles, vec![ROLE_MODERATOR.to_string()]);
        assert!(auth.issue_with_roles("mod", "desk", 60, &["root"]).is_err());
        let plain = auth.issue("alice", "phone", 60).unwrap();
        assert!(auth.authenticate(&metadata(&plain)).unwrap().roles.is_empty());
    }

    use super::testing::{ed25519, key_set};

    fn signed(key: &EncodingKey, kid: &str, extra: serde_json::Value) -> String {
        let now = unix_now();
        let mut claims = serde_json::json!({ "sub": "alice", "device": "phone", "iat": now, "exp": now + 60 });
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        super::testing::sign(key, kid, &claims)
    }

    #[test]
    fn published_keys_verify_by_kid_and_a_rotation_retires_the_old_one() {
        let auth = Authenticator::with_rules(None, TokenRules::default()).unwrap();
        let (old, old_jwk) = ed25519(1, "2026-11");
        let (new, new_jwk) = ed25519(2, "2026-12");
        assert_eq!(auth.set_key_set(&key_set(&[&old_jwk])).unwrap(), 1);
        let by_old = signed(&old, "2026-11", serde_json::json!({}));
        assert_eq!(auth.verify(&by_old).unwrap().caller.user_id, "alice");
        let by_new = signed(&new, "2026-12", serde_json::json!({}));
        assert_eq!(auth.verify(&by_new).unwrap_err().message(), "token signed by an unknown key");
        // Rotation: both for a while, then the old one retired.
        auth.set_key_set(&key_set(&[&old_jwk, &new_jwk])).unwrap();
        assert!(auth.verify(&by_old).is_ok() && auth.verify(&by_new).is_ok());
        auth.set_key_set(&key_set(&[&new_jwk])).unwrap();
        assert_eq!(auth.verify(&by_old).unwrap_err().message(), "token signed by an unknown key");
        assert!(auth.verify(&by_new).is_ok());
        // A key under another key's kid does not verify.
        let forged = signed(&old, "2026-12", serde_json::json!({}));
        assert_eq!(auth.verify(&forged).unwrap_err().message(), "token signature invalid");
    }

    #[test]
    fn audience_issuer_and_not_before_are_checked_and_refusals_say_only_what() {
        let rules = TokenRules { issuer: Some("https://app".into()), audience: Some("imsg".into()), leeway_secs: 0 };
        let auth = Authenticator::with_rules(None, rules).unwrap();
        let (key, jwk) = ed25519(3, "k");
        auth.set_key_set(&key_set(&[&jwk])).unwrap();
        let good = serde_json::json!({ "iss": "https://app", "aud": "imsg" });
        assert!(auth.verify(&signed(&key, "k", good)).is_ok());
        let cases = [
            (serde_json::json!({ "iss": "https://app", "aud": "other" }), "token audience not accepted"),
            (serde_json::json!({ "iss": "https://evil", "aud": "imsg" }), "token issuer not accepted"),
            (
                serde_json::json!({ "iss": "https://app", "aud": "imsg", "nbf": unix_now() + 600 }),
                "token not yet valid",
            ),
        ];
        for (claims, said) in cases {
            assert_eq!(auth.verify(&signed(&key, "k", claims)).unwrap_err().message(), said);
        }
        // Without a secret, an HS256 token is refused whoever signed it.
        let hs = Authenticator::new("0123456789abcdef0123").unwrap().issue("alice", "phone", 60).unwrap();
        assert_eq!(auth.verify(&hs).unwrap_err().message(), "token algorithm not accepted");
        assert_eq!(auth.verify("not.a.token").unwrap_err().message(), "token malformed");
    }

    #[test]
    fn a_key_set_with_a_symmetric_or_unnamed_key_is_refused() {
        let auth = Authenticator::with_rules(None, TokenRules::default()).unwrap();
        let oct = serde_json::json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "s" });
        assert!(auth.set_key_set(&key_set(&[&oct])).is_err());
        let (_, mut unnamed) = ed25519(4, "x");
        unnamed.as_object_mut().unwrap().remove("kid");
        assert!(auth.set_key_set(&key_set(&[&unnamed])).is_err());
        // An Ed25519 key that is not 32 bytes (the verifier would panic).
        let short = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": "", "kid": "short" });
        assert_eq!(auth.set_key_set(&key_set(&[&short])).unwrap_err(), "key short: an Ed25519 key is 32 bytes");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Authenticator::new("short").is_err());
    }
}
