//! Bearer tokens and key sets (`imsg_common::token::Authenticator`), from
//! arbitrary text: what every RPC's `authorization` header, a stream's
//! `refresh_token` frame and the host application's published JWKS hand
//! the gateway.
//!
//! Proves: neither `verify` (with an HS256 secret, or with a published
//! Ed25519 key and issuer and audience rules) nor `set_key_set` panics on
//! any input, and a token that verifies yields a caller whose user and
//! device are valid ids (storage keys and routing rely on it) and whose
//! roles are known ones (authority only comes from the token).
//!
//! Input: mode byte. 0: the rest is a token, verified by both fixed
//! authenticators. 1: the rest is a JWKS document, loaded into a fresh
//! authenticator, which then verifies a token signed by the fixed key.
//! 2: a JWKS document (piece), then a token (the rest): the document is
//! loaded into an authenticator that also has the HS256 secret, which then
//! verifies the token.

#![no_main]

use std::sync::OnceLock;

use imsg_common::{
    ids::check_id,
    token::{Authenticator, ROLES, TokenRules, testing},
};
use imsg_fuzz::{Input, tokens};
use libfuzzer_sys::fuzz_target;

struct Fixed {
    hs256: Authenticator,
    keyed: Authenticator,
    /// A token the fixed key signed (valid for a century).
    signed: String,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let (key, _) = testing::ed25519(tokens::KEY_SEED, tokens::KEY_ID);
        let claims = serde_json::json!({
            "sub": "alice", "device": "phone", "iat": 1, "exp": 4_000_000_000u64,
            "iss": tokens::ISSUER, "aud": tokens::AUDIENCE,
        });
        Fixed { hs256: tokens::hs256(), keyed: tokens::keyed(), signed: testing::sign(&key, tokens::KEY_ID, &claims) }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixed = fixed();
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => {
            let token = String::from_utf8_lossy(input.rest());
            verify(&fixed.hs256, &token);
            verify(&fixed.keyed, &token);
        }
        1 => {
            let auth = Authenticator::with_rules(None, TokenRules::default()).expect("no secret");
            if auth.set_key_set(&String::from_utf8_lossy(input.rest())).is_ok() {
                verify(&auth, &fixed.signed);
            }
        }
        _ => {
            let key_set = String::from_utf8_lossy(input.piece()).into_owned();
            let token = String::from_utf8_lossy(input.rest());
            let auth = tokens::hs256();
            let _ = auth.set_key_set(&key_set);
            verify(&auth, &token);
        }
    }
});

/// Verifies; whatever verifies must be a well-formed caller.
fn verify(auth: &Authenticator, token: &str) {
    if let Ok(verified) = auth.verify(token) {
        let caller = verified.caller;
        assert!(check_id(&caller.user_id).is_ok(), "a verified token's user is {:?}", caller.user_id);
        assert!(check_id(&caller.device_id).is_ok(), "a verified token's device is {:?}", caller.device_id);
        assert!(caller.roles.iter().all(|role| ROLES.contains(&role.as_str())), "unknown roles {:?}", caller.roles);
    }
}
