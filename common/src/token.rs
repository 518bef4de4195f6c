//! Bearer-token authentication (invariant 5: authority comes from the token).
//!
//! Tokens are JWTs signed with HS256: `sub` is the user, `device` the
//! device, `exp` is required. Identity never comes from a request field.

use imsg_proto::internal::v1::Caller;

use crate::ids::check_id;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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

/// Verifies (and, for local use, issues) tokens with one shared secret.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!("the JWT secret must be at least {MIN_SECRET_BYTES} bytes"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Ok(Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        })
    }

    /// A token for `user` on `device`, valid for `ttl_secs`.
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
        let now = unix_now();
        let claims = Claims {
            sub: user.to_owned(),
            device: device.to_owned(),
            iat: now,
            exp: now + ttl_secs,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// The caller a request's `authorization: Bearer <jwt>` names.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization metadata (Bearer token)"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => Status::unauthenticated("token expired"),
                ErrorKind::InvalidSignature => Status::unauthenticated("token signature invalid"),
                _ => Status::unauthenticated(format!("token invalid: {e}")),
            }
        })?;
        let claims = data.claims;
        check_id(&claims.sub).map_err(|e| Status::unauthenticated(format!("token claim sub: {e}")))?;
        check_id(&claims.device).map_err(|e| Status::unauthenticated(format!("token claim device: {e}")))?;
        // Unknown roles grant nothing.
        let roles = claims.roles.into_iter().filter(|r| ROLES.contains(&r.as_str())).collect();
        Ok(Caller { user_id: claims.sub, device_id: claims.device, roles })
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
            let claims = Claims { sub: "alice".into(), device: "phone".into(), iat: 1, exp: 2, roles: vec![] };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap()
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

    #[test]
    fn short_secrets_are_refused() {
        assert!(Authenticator::new("short").is_err());
    }
}
