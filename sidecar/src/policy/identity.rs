//! Who is calling: anonymous, or the subject and claims of a verified bearer JWT.
//!
//! ```text
//! Authorization: Bearer <jwt> ─ kid ─> JWKS key ─ verify (alg, exp, nbf, iat, iss, aud, sub) ─> Identity
//! no token                                                                               ─> anonymous
//! a token that does not verify, or names no one                                          ─> 401
//! ```
//!
//! Times are checked with [`LEEWAY`] for clocks that disagree: `exp` must be ahead, `nbf` and
//! `iat` (where present) not ahead. `sub` must be a non-empty string: tokens that name no one
//! would otherwise all be one caller, sharing its approvals and identity-scoped counters.
//!
//! `Authorization` itself is forwarded untouched: the server may need the token too.

use std::collections::HashSet;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use tollgate_api::Identity;

/// How far a token's times may be off this clock (seconds).
pub const LEEWAY: u64 = 30;

/// Verifies bearer tokens against a key set.
pub struct Verifier {
    keys: Vec<(Option<String>, jsonwebtoken::Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Verifier {
    /// Builds a verifier from a JWKS document.
    pub fn from_jwks(
        jwks: &str,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Self> {
        let set: JwkSet = serde_json::from_str(jwks)
            .map_err(|e| anyhow::anyhow!("the JWKS is not a valid key set: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let Some(alg) = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse().ok())
            else {
                // Keys without `alg`: infer from the key type.
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => {
                        jsonwebtoken::Algorithm::RS256
                    }
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => match p.curve {
                        jsonwebtoken::jwk::EllipticCurve::P384 => jsonwebtoken::Algorithm::ES384,
                        _ => jsonwebtoken::Algorithm::ES256,
                    },
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
                        jsonwebtoken::Algorithm::EdDSA
                    }
                    _ => continue,
                };
                keys.push((jwk.common.key_id.clone(), alg, DecodingKey::from_jwk(jwk)?));
                continue;
            };
            keys.push((jwk.common.key_id.clone(), alg, DecodingKey::from_jwk(jwk)?));
        }
        anyhow::ensure!(!keys.is_empty(), "the JWKS holds no usable public key");
        Ok(Verifier {
            keys,
            issuer,
            audience,
        })
    }

    fn candidates<'a>(
        &'a self,
        head: &'a jsonwebtoken::Header,
    ) -> impl Iterator<Item = &'a (Option<String>, jsonwebtoken::Algorithm, DecodingKey)> {
        self.keys.iter().filter(move |(kid, alg, _)| {
            *alg == head.alg && (head.kid.is_none() || kid.is_none() || kid == &head.kid)
        })
    }

    fn verify(&self, token: &str, head: &jsonwebtoken::Header) -> Result<Identity, String> {
        let mut last_error = format!(
            "no key matches the token (alg {:?}, kid {:?})",
            head.alg, head.kid
        );
        for (_, alg, key) in self.candidates(head) {
            let mut v = Validation::new(*alg);
            v.leeway = LEEWAY;
            v.validate_nbf = true;
            match &self.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                v.set_issuer(&[iss]);
            }
            v.required_spec_claims = HashSet::from(["exp".to_string()]);
            match decode::<serde_json::Map<String, Value>>(token, key, &v) {
                Ok(data) => return identity_from_claims(data.claims, now()),
                Err(e) => last_error = format!("the bearer token does not verify: {e}"),
            }
        }
        Err(last_error)
    }
}

/// The caller of a request, checked by the first verifier holding a key for the token (the
/// cluster's service-account keys from the operator, then `--jwks`). With no verifier at all,
/// tokens are not read and every caller is anonymous.
pub fn identify(
    verifiers: &[Option<&Verifier>],
    authorization: Option<&str>,
) -> Result<Identity, String> {
    let none = verifiers.iter().all(Option::is_none);
    let (Some(header), false) = (authorization, none) else {
        return Ok(Identity::anonymous());
    };
    let Some(token) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
    else {
        // Not a bearer token (e.g. Basic auth for the server): the caller is anonymous.
        return Ok(Identity::anonymous());
    };
    let token = token.trim();
    let head = decode_header(token).map_err(|e| format!("the bearer token is malformed: {e}"))?;
    match verifiers
        .iter()
        .flatten()
        .find(|v| v.candidates(&head).next().is_some())
    {
        Some(v) => v.verify(token, &head),
        None => Err(format!(
            "no trusted key matches the token (alg {:?}, kid {:?})",
            head.alg, head.kid
        )),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The identity a verified token's claims describe, or why they describe no one; Kubernetes
/// service account tokens name their account in `sub` (`system:serviceaccount:NS:NAME`).
pub fn identity_from_claims(
    claims: serde_json::Map<String, Value>,
    now: u64,
) -> Result<Identity, String> {
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err("the bearer token's sub is empty: it names no one".into());
        }
        Some(other) => {
            return Err(format!(
                "the bearer token's sub is not a string ({other}): it names no one"
            ));
        }
        None => return Err("the bearer token has no sub: it names no one".into()),
    };
    match claims.get("iat") {
        None => {}
        Some(Value::Number(n)) if n.as_f64().is_some_and(|iat| iat <= (now + LEEWAY) as f64) => {}
        Some(Value::Number(n)) => {
            return Err(format!(
                "the bearer token was issued in the future (iat {n}, now {now}, leeway {LEEWAY} s)"
            ));
        }
        Some(other) => return Err(format!("the bearer token's iat is not a number ({other})")),
    }
    let mut who = Identity::subject(sub);
    who.claims = claims;
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn claims(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_token_that_names_no_one_is_refused_saying_so() {
        for (c, why) in [
            (json!({}), "has no sub"),
            (json!({ "sub": "" }), "sub is empty"),
            (json!({ "sub": 42 }), "sub is not a string (42)"),
            (json!({ "sub": null }), "sub is not a string (null)"),
            (json!({ "sub": ["alice"] }), "sub is not a string"),
        ] {
            let e = identity_from_claims(claims(c.clone()), NOW).expect_err(&c.to_string());
            assert!(e.contains(why), "{c}: {e}");
        }
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused_past_the_leeway() {
        let at = |iat: u64| identity_from_claims(claims(json!({ "sub": "a", "iat": iat })), NOW);
        assert!(at(NOW).is_ok() && at(NOW + LEEWAY).is_ok() && at(NOW - 3600).is_ok());
        let e = at(NOW + 3600).unwrap_err();
        assert!(
            e.contains("issued in the future") && e.contains("leeway 30 s"),
            "{e}"
        );
        let e = identity_from_claims(claims(json!({ "sub": "a", "iat": "yesterday" })), NOW)
            .unwrap_err();
        assert!(e.contains("iat is not a number"), "{e}");
    }

    #[test]
    fn a_named_caller_keeps_its_claims() {
        let who =
            identity_from_claims(claims(json!({ "sub": "alice", "groups": ["a"] })), NOW).unwrap();
        assert_eq!(who.claims["groups"], json!(["a"]));
    }
}
