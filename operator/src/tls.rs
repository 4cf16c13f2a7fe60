//! Certificates for the webhooks and the policy stream.
//!
//! ```text
//! operator-managed:  Secret tollgate-operator-tls { ca.crt, ca.key, tls.crt, tls.key }
//!                      ─ missing, unreadable, or serving cert past 2/3 of its life ─> issue
//!                      ─> ServingCert (hot-swapped, no connection dropped)
//!                      ─> caBundle of the webhook configurations; CA PEM into injected sidecars
//! cert-manager:      --tls-dir (tls.crt, tls.key, ca.crt from its Secret) ─ polled ─> ServingCert
//!                    (cert-manager's CA injector writes the caBundle)
//! ```
//!
//! The CA lives ten years; the serving certificate 90 days and is renewed a third before its
//! end, signed by the same CA, so the caBundle and the sidecars' trust do not change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::health::Health;

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SANS_ANNOTATION: &str = "tollgate.dev/sans";

/// A CA and a serving certificate it signed, all PEM.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// The crypto the operator uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Issues a new CA.
pub fn issue_ca(now: OffsetDateTime) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Tollgate operator CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + CA_LIFETIME;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a serving certificate for `sans`, valid for `lifetime`, signed by the CA.
pub fn issue_serving(
    ca_cert: &str,
    ca_key: &str,
    sans: &[String],
    now: OffsetDateTime,
    lifetime: Duration,
) -> anyhow::Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key).context("the CA key does not parse")?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key).context("the CA does not parse")?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().map_or("tollgate", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + lifetime;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The validity window of a PEM certificate, as unix seconds.
pub fn validity(cert_pem: &str) -> anyhow::Result<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// A certificate is renewed once two thirds of its life have passed (or it does not parse).
pub fn needs_renewal(cert_pem: &str, now: OffsetDateTime) -> bool {
    match validity(cert_pem) {
        Ok((from, until)) => {
            let renew_at = until - (until - from) / 3;
            now.unix_timestamp() >= renew_at
        }
        Err(_) => true,
    }
}

/// Keeps `current` where it is still good; otherwise issues what is missing or due. Returns
/// `None` when nothing changes.
pub fn renew(
    current: Option<&Bundle>,
    sans: &[String],
    current_sans: Option<&str>,
    now: OffsetDateTime,
    lifetime: Duration,
) -> anyhow::Result<Option<Bundle>> {
    let ca_ok = current
        .is_some_and(|b| !needs_renewal(&b.ca_cert, now) && KeyPair::from_pem(&b.ca_key).is_ok());
    let (ca_cert, ca_key) = match current {
        Some(b) if ca_ok => (b.ca_cert.clone(), b.ca_key.clone()),
        _ => issue_ca(now)?,
    };
    let serving_ok = ca_ok
        && current.is_some_and(|b| {
            !needs_renewal(&b.cert, now) && current_sans == Some(sans.join(",").as_str())
        });
    if serving_ok {
        return Ok(None);
    }
    let (cert, key) = issue_serving(&ca_cert, &ca_key, sans, now, lifetime)?;
    Ok(Some(Bundle {
        ca_cert,
        ca_key,
        cert,
        key,
    }))
}

/// The certificate the HTTPS server presents, swapped in place on rotation: connections
/// already open keep theirs, new handshakes get the new one.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    /// The CA sidecars are told to trust (PEM).
    ca: ArcSwap<String>,
}

impl ServingCert {
    pub fn new(cert_pem: &str, key_pem: &str, ca_pem: &str) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(ServingCert {
            current: ArcSwap::from_pointee(certified_key(cert_pem, key_pem)?),
            ca: ArcSwap::from_pointee(ca_pem.to_string()),
        }))
    }

    pub fn update(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> anyhow::Result<()> {
        self.current
            .store(Arc::new(certified_key(cert_pem, key_pem)?));
        self.ca.store(Arc::new(ca_pem.to_string()));
        Ok(())
    }

    pub fn ca_pem(&self) -> Arc<String> {
        self.ca.load_full()
    }

    /// A rustls server configuration that asks this resolver on every handshake.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the serving certificate is not PEM")?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the serving certificate file holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("the serving key is not a PEM private key")?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .context("the serving key is not usable")?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Where the operator's certificates come from.
pub enum CertSource {
    /// The operator issues and rotates them, in this Secret.
    Managed(Box<Managed>),
    /// cert-manager's Secret, mounted here.
    Files { dir: PathBuf },
}

/// The operator-managed certificates' settings.
pub struct Managed {
    pub client: Client,
    pub namespace: String,
    pub secret: String,
    pub sans: Vec<String>,
    pub lifetime: Duration,
    /// The webhook configurations whose caBundle the operator keeps current.
    pub mutating_webhook: Option<String>,
    pub validating_webhook: Option<String>,
}

impl CertSource {
    /// Loads (or issues) the certificate to start serving with.
    pub async fn load(&self) -> anyhow::Result<Arc<ServingCert>> {
        let bundle = self.current().await?;
        ServingCert::new(&bundle.cert, &bundle.key, &bundle.ca_cert)
    }

    async fn current(&self) -> anyhow::Result<Bundle> {
        match self {
            CertSource::Files { dir } => {
                let read = |name: &str| {
                    std::fs::read_to_string(dir.join(name))
                        .with_context(|| format!("cannot read {}", dir.join(name).display()))
                };
                Ok(Bundle {
                    ca_cert: read("ca.crt")?,
                    ca_key: String::new(),
                    cert: read("tls.crt")?,
                    key: read("tls.key")?,
                })
            }
            CertSource::Managed(m) => {
                let Managed {
                    client,
                    namespace,
                    secret,
                    sans,
                    lifetime,
                    mutating_webhook,
                    validating_webhook,
                } = &**m;
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let bundle = ensure_secret(&api, secret, sans, *lifetime).await?;
                publish_ca_bundle(
                    client,
                    mutating_webhook.as_deref(),
                    validating_webhook.as_deref(),
                    &bundle.ca_cert,
                )
                .await;
                Ok(bundle)
            }
        }
    }

    /// Re-reads (and, when managed, renews) every `every`, swapping the served certificate
    /// when it changed.
    pub async fn rotate(self, serving: Arc<ServingCert>, every: Duration, health: Arc<Health>) {
        const PART: &str = "the serving certificate's rotation";
        let mut last = None;
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            // A failure is tried again soon, not a whole period later.
            wait = every.min(Duration::from_secs(10));
            match self.current().await {
                Ok(bundle) if last.as_ref() != Some(&bundle) => {
                    match serving.update(&bundle.cert, &bundle.key, &bundle.ca_cert) {
                        Ok(()) => {
                            if last.is_some() {
                                tracing::info!("serving certificate rotated");
                            }
                            last = Some(bundle);
                            health.ok(PART);
                            wait = every;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "new serving certificate is unusable; keeping the old one");
                            health.fail(PART, format!("the new certificate is unusable: {e}"));
                        }
                    }
                }
                Ok(_) => {
                    health.ok(PART);
                    wait = every;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot refresh the serving certificate; keeping the old one");
                    health.fail(PART, format!("{e:#}"));
                }
            }
        }
    }
}

/// Reads the Secret, renews what is due, and writes it back; several replicas racing here
/// settle on one bundle through the API server's conflict checks.
async fn ensure_secret(
    api: &Api<Secret>,
    name: &str,
    sans: &[String],
    lifetime: Duration,
) -> anyhow::Result<Bundle> {
    for _ in 0..5 {
        let existing = api
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read Secret {name}"))?;
        let current = existing.as_ref().and_then(bundle_from_secret);
        let current_sans = existing
            .as_ref()
            .and_then(|s| s.metadata.annotations.as_ref())
            .and_then(|a| a.get(SANS_ANNOTATION))
            .map(String::as_str);
        let now = OffsetDateTime::now_utc();
        let Some(next) = renew(current.as_ref(), sans, current_sans, now, lifetime)? else {
            return Ok(current.expect("renew keeps only an existing bundle"));
        };
        let mut data = BTreeMap::new();
        for (k, v) in [
            ("ca.crt", &next.ca_cert),
            ("ca.key", &next.ca_key),
            ("tls.crt", &next.cert),
            ("tls.key", &next.key),
        ] {
            data.insert(k.to_string(), ByteString(v.clone().into_bytes()));
        }
        let annotations = BTreeMap::from([(SANS_ANNOTATION.to_string(), sans.join(","))]);
        let written = match existing {
            None => {
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.into()),
                        annotations: Some(annotations),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &secret).await.map(drop)
            }
            Some(old) => {
                // The resourceVersion makes this a compare-and-swap.
                let patch = serde_json::json!({
                    "metadata": {
                        "resourceVersion": old.metadata.resource_version,
                        "annotations": annotations,
                    },
                    "data": data,
                });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(drop)
            }
        };
        match written {
            Ok(()) => {
                tracing::info!(secret = name, "issued a serving certificate");
                return Ok(next);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot write Secret {name}")),
        }
    }
    anyhow::bail!("Secret {name} kept changing under the operator; is another writer fighting it?")
}

fn bundle_from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Some(Bundle {
        ca_cert: get("ca.crt")?,
        ca_key: get("ca.key")?,
        cert: get("tls.crt")?,
        key: get("tls.key")?,
    })
}

/// A webhook configuration whose webhooks each carry a `caBundle`.
trait WebhookConfig:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    fn ca_bundles(&mut self) -> Vec<&mut Option<ByteString>>;
}

impl WebhookConfig for MutatingWebhookConfiguration {
    fn ca_bundles(&mut self) -> Vec<&mut Option<ByteString>> {
        let hooks = self.webhooks.iter_mut().flatten();
        hooks.map(|w| &mut w.client_config.ca_bundle).collect()
    }
}

impl WebhookConfig for ValidatingWebhookConfiguration {
    fn ca_bundles(&mut self) -> Vec<&mut Option<ByteString>> {
        let hooks = self.webhooks.iter_mut().flatten();
        hooks.map(|w| &mut w.client_config.ca_bundle).collect()
    }
}

/// Writes the CA into every webhook of the named configurations, where it differs.
async fn publish_ca_bundle(
    client: &Client,
    mutating: Option<&str>,
    validating: Option<&str>,
    ca_pem: &str,
) {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    if let Some(name) = mutating {
        set_ca_bundle::<MutatingWebhookConfiguration>(client, name, &bundle).await;
    }
    if let Some(name) = validating {
        set_ca_bundle::<ValidatingWebhookConfiguration>(client, name, &bundle).await;
    }
}

/// Writes the CA into every webhook of a configuration, conditional on the version read. Every
/// replica does this at start: one whose write conflicts reads again, and finds the bundle
/// already there (another replica wrote the same CA) or writes it on the newer version.
async fn set_ca_bundle<K: WebhookConfig>(client: &Client, name: &str, bundle: &ByteString) {
    const ATTEMPTS: usize = 5;
    let api: Api<K> = Api::all(client.clone());
    for attempt in 1..=ATTEMPTS {
        let mut config = match api.get_opt(name).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::warn!(
                    webhook = name,
                    "webhook configuration not found; its caBundle is not managed"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(webhook = name, error = %e, "cannot read the webhook configuration");
                return;
            }
        };
        let mut changed = false;
        for slot in config.ca_bundles() {
            if slot.as_ref() != Some(bundle) {
                *slot = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let value = serde_json::to_value(&config).expect("a webhook configuration serialises");
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": config.meta().resource_version },
            "webhooks": value.get("webhooks"),
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(webhook = name, "caBundle updated");
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => {
                tracing::debug!(
                    webhook = name,
                    attempt,
                    "caBundle written meanwhile; reading it again"
                );
            }
            Err(e) => {
                tracing::warn!(webhook = name, error = %e, "cannot update the caBundle; retrying at the next check");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn sans() -> Vec<String> {
        vec!["tollgate-operator.tollgate-system.svc".into()]
    }

    #[test]
    fn a_missing_bundle_is_issued_and_a_fresh_one_is_kept() {
        let now = OffsetDateTime::now_utc();
        let issued = renew(None, &sans(), None, now, 90 * DAY).unwrap().unwrap();
        assert!(ServingCert::new(&issued.cert, &issued.key, &issued.ca_cert).is_ok());
        let joined = sans().join(",");
        let again = renew(Some(&issued), &sans(), Some(&joined), now, 90 * DAY).unwrap();
        assert_eq!(again, None, "a fresh bundle is kept as it is");
    }

    #[test]
    fn the_serving_cert_is_renewed_after_two_thirds_of_its_life_under_the_same_ca() {
        let start = OffsetDateTime::now_utc();
        let issued = renew(None, &sans(), None, start, 90 * DAY)
            .unwrap()
            .unwrap();
        let joined = sans().join(",");
        let day_59 = start + 59 * DAY;
        assert_eq!(
            renew(Some(&issued), &sans(), Some(&joined), day_59, 90 * DAY).unwrap(),
            None
        );
        let day_61 = start + 61 * DAY;
        let renewed = renew(Some(&issued), &sans(), Some(&joined), day_61, 90 * DAY)
            .unwrap()
            .expect("renewed");
        assert_eq!(
            renewed.ca_cert, issued.ca_cert,
            "the CA stays, so trust does not change"
        );
        assert_ne!(renewed.cert, issued.cert);
        let (_, until) = validity(&renewed.cert).unwrap();
        assert!(until > (day_61 + 89 * DAY).unix_timestamp());
    }

    #[test]
    fn changed_names_or_a_garbled_secret_are_reissued() {
        let now = OffsetDateTime::now_utc();
        let issued = renew(None, &sans(), None, now, 90 * DAY).unwrap().unwrap();
        let more = vec![sans()[0].clone(), "localhost".into()];
        assert!(
            renew(Some(&issued), &more, Some(&sans().join(",")), now, 90 * DAY)
                .unwrap()
                .is_some()
        );
        let garbled = Bundle {
            cert: "not a certificate".into(),
            ..issued.clone()
        };
        let fixed = renew(
            Some(&garbled),
            &sans(),
            Some(&sans().join(",")),
            now,
            90 * DAY,
        )
        .unwrap()
        .unwrap();
        assert_eq!(fixed.ca_cert, issued.ca_cert);
    }
}
