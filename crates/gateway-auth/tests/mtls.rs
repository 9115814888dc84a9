//! mTLS identities from certificates generated here.

use std::sync::Arc;

use gateway_auth::{Authenticate, Consumer, Credential, MtlsAuth};
use gateway_core::ClientCertificate;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

fn cert(cn: Option<&str>, sans: Vec<SanType>) -> ClientCertificate {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.subject_alt_names = sans;
    let key = KeyPair::generate().unwrap();
    ClientCertificate::new(params.self_signed(&key).unwrap().der().to_vec())
}

fn check(auth: &MtlsAuth, cert: Option<ClientCertificate>) -> Credential {
    let mut req = http::Request::new(());
    if let Some(c) = cert {
        req.extensions_mut().insert(c);
    }
    let (mut parts, ()) = req.into_parts();
    auth.authenticate(&mut parts)
}

#[test]
fn the_identity_prefers_uri_then_dns_then_email_then_cn() {
    let spiffe = "spiffe://example.org/ns/prod/sa/orders";
    let auth = MtlsAuth::new().consumer(
        format!("uri:{spiffe}"),
        Arc::new(
            Consumer::new("orders-svc")
                .tier("gold")
                .roles(["orders.write"]),
        ),
    );
    let both = cert(
        Some("orders"),
        vec![
            SanType::DnsName("orders.internal".try_into().unwrap()),
            SanType::URI(spiffe.try_into().unwrap()),
        ],
    );
    let Credential::Valid(p) = check(&auth, Some(both)) else {
        panic!("refused")
    };
    assert_eq!(p.subject(), spiffe);
    assert_eq!(p.consumer(), Some("orders-svc"));
    assert_eq!(p.tier(), Some("gold"));
    assert!(p.has_role("orders.write"));
    assert_eq!(p.attributes()["cert.dns"], "orders.internal");
    assert!(
        !p.attributes().contains_key("cert.cn"),
        "no CN when SANs are present"
    );

    let dns = cert(
        Some("x"),
        vec![SanType::DnsName("billing.internal".try_into().unwrap())],
    );
    let Credential::Valid(p) = check(&auth, Some(dns)) else {
        panic!("refused")
    };
    assert_eq!(p.subject(), "billing.internal");
    assert_eq!(p.consumer(), None, "not mapped");
    let cn_only = cert(Some("legacy-client"), vec![]);
    let Credential::Valid(p) = check(&auth, Some(cn_only)) else {
        panic!("refused")
    };
    assert_eq!(p.subject(), "legacy-client");
}

#[test]
fn missing_nameless_and_garbage_certificates() {
    let auth = MtlsAuth::new();
    assert!(matches!(check(&auth, None), Credential::Absent));
    assert!(matches!(
        check(&auth, Some(cert(None, vec![]))),
        Credential::Invalid(_)
    ));
    assert!(matches!(
        check(
            &auth,
            Some(ClientCertificate::new(vec![0x30, 0x03, 1, 2, 3]))
        ),
        Credential::Invalid(_)
    ));
}

#[test]
fn a_common_name_never_stands_in_for_a_san() {
    let spiffe = "spiffe://example.org/ns/prod/sa/orders";
    let auth = MtlsAuth::new().consumer(
        format!("uri:{spiffe}"),
        Arc::new(Consumer::new("orders-svc")),
    );
    // A CN that spells the SPIFFE ID, and no SANs: its identity is the CN, not mapped.
    let Credential::Valid(p) = check(&auth, Some(cert(Some(spiffe), vec![]))) else {
        panic!("refused")
    };
    assert_eq!(p.consumer(), None);
    // E-mail SANs come after URI and DNS names.
    let email = cert(
        Some("x"),
        vec![SanType::Rfc822Name("ops@example.org".try_into().unwrap())],
    );
    let Credential::Valid(p) = check(&auth, Some(email)) else {
        panic!("refused")
    };
    assert_eq!(p.subject(), "ops@example.org");
}
