//! Who is calling: anonymous, or the subject and claims of a verified bearer JWT.
//!
//! ```text
//! Authorization: Bearer <jwt> ─ kid ─> JWKS key ─ verify (alg, exp, iss, aud) ─> Identity
//! no token                                                                   ─> anonymous
//! a token that does not verify                                               ─> 401
//! ```
//!
//! `Authorization` itself is forwarded untouched: the server may need the token too.

use std::collections::HashSet;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use tollgate_api::Identity;

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
            v.leeway = 30;
            match &self.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                v.set_issuer(&[iss]);
            }
            v.required_spec_claims = HashSet::from(["exp".to_string()]);
            match decode::<serde_json::Map<String, Value>>(token, key, &v) {
                Ok(data) => return Ok(identity_from_claims(data.claims)),
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

/// The identity a token's claims describe; Kubernetes service account tokens name their
/// account in `sub` (`system:serviceaccount:NS:NAME`).
pub fn identity_from_claims(claims: serde_json::Map<String, Value>) -> Identity {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut who = Identity::subject(sub);
    who.claims = claims;
    who
}
