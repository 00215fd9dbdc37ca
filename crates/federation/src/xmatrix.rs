//! X-Matrix request authentication (Server-Server API, "Request Authentication"): the JSON
//! object a request's signature covers (method, URI, origin, destination and content), signing
//! it for outbound requests and checking it on inbound ones. Header parsing is ruma's
//! ([`ruma::api::federation::authentication::XMatrix`]); the signature itself is the room-version
//! crate's JSON signing, the same code that signs events.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, KeyPair, PublicKey, SignatureError,
    signing::{sign_json, verify_json},
};
use ruma::api::federation::authentication::XMatrix;

/// Why a request object could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RequestObjectError {
    #[error("the request body is not JSON: {0}")]
    NotJson(String),
}

/// The object an X-Matrix signature covers. `uri` is the path and query as sent; `content` is
/// the JSON body, absent when the body is empty.
pub fn request_object(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    body: &[u8],
) -> Result<CanonicalJsonObject, RequestObjectError> {
    let mut object = CanonicalJsonObject::new();
    object.insert(
        "method".to_owned(),
        CanonicalJsonValue::String(method.to_owned()),
    );
    object.insert("uri".to_owned(), CanonicalJsonValue::String(uri.to_owned()));
    object.insert(
        "origin".to_owned(),
        CanonicalJsonValue::String(origin.to_owned()),
    );
    object.insert(
        "destination".to_owned(),
        CanonicalJsonValue::String(destination.to_owned()),
    );
    if !body.is_empty() {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| RequestObjectError::NotJson(e.to_string()))?;
        let content = CanonicalJsonValue::try_from(value)
            .map_err(|e| RequestObjectError::NotJson(e.to_string()))?;
        object.insert("content".to_owned(), content);
    }
    Ok(object)
}

/// The `Authorization` header value for a request signed by `origin` with `key_id`.
pub fn authorization_header(
    object: &CanonicalJsonObject,
    origin: &str,
    destination: &str,
    key_id: &str,
    key: &KeyPair,
) -> Result<String, String> {
    let mut signed = object.clone();
    sign_json(&mut signed, origin, key_id, key).map_err(|e| e.to_string())?;
    let signature = match signed
        .get("signatures")
        .and_then(|s| match s {
            CanonicalJsonValue::Object(map) => map.get(origin),
            _ => None,
        })
        .and_then(|s| match s {
            CanonicalJsonValue::Object(map) => map.get(key_id),
            _ => None,
        }) {
        Some(CanonicalJsonValue::String(signature)) => signature.clone(),
        _ => return Err("signing added no signature".to_owned()),
    };
    let header = XMatrix::new(
        origin.try_into().map_err(|e| format!("origin: {e}"))?,
        destination
            .try_into()
            .map_err(|e| format!("destination: {e}"))?,
        key_id.try_into().map_err(|e| format!("key id: {e}"))?,
        ruma::serde::Base64::parse(&signature).map_err(|e| e.to_string())?,
    );
    Ok(header.to_string())
}

/// Checks the signature of an X-Matrix header over `object` (built with the header's origin
/// and the destination this server is) with `key`.
pub fn verify(
    object: &CanonicalJsonObject,
    header: &XMatrix,
    key: &PublicKey,
) -> Result<(), SignatureError> {
    let mut signed = object.clone();
    let mut per_key = CanonicalJsonObject::new();
    per_key.insert(
        header.key.to_string(),
        CanonicalJsonValue::String(STANDARD_NO_PAD.encode(header.sig.as_bytes())),
    );
    let mut signatures = CanonicalJsonObject::new();
    signatures.insert(
        header.origin.to_string(),
        CanonicalJsonValue::Object(per_key),
    );
    signed.insert(
        "signatures".to_owned(),
        CanonicalJsonValue::Object(signatures),
    );
    verify_json(&signed, header.origin.as_str(), header.key.as_str(), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let key = KeyPair::from_seed(&[7; 32]);
        let public = PublicKey::from_bytes(&key.public_key()).unwrap();
        let body = br#"{"b": 1, "a": [true]}"#;
        let object = request_object("PUT", "/_matrix/x?y=1", "a.org", "b.org", body).unwrap();
        let header = authorization_header(&object, "a.org", "b.org", "ed25519:k", &key).unwrap();
        let parsed = XMatrix::parse(&header).unwrap();
        assert_eq!(parsed.origin.as_str(), "a.org");
        assert_eq!(
            parsed.destination.as_deref().map(|d| d.as_str()),
            Some("b.org")
        );
        verify(&object, &parsed, &public).expect("positive control");
        for (method, uri, origin, destination, body) in [
            ("POST", "/_matrix/x?y=1", "a.org", "b.org", &body[..]),
            ("PUT", "/_matrix/x?y=2", "a.org", "b.org", &body[..]),
            ("PUT", "/_matrix/x?y=1", "a.org", "c.org", &body[..]),
            (
                "PUT",
                "/_matrix/x?y=1",
                "a.org",
                "b.org",
                &br#"{"b": 2}"#[..],
            ),
            ("PUT", "/_matrix/x?y=1", "a.org", "b.org", &b""[..]),
        ] {
            let other = request_object(method, uri, origin, destination, body).unwrap();
            assert!(
                verify(&other, &parsed, &public).is_err(),
                "{method} {uri} {destination}"
            );
        }
        let stranger = PublicKey::from_bytes(&KeyPair::from_seed(&[8; 32]).public_key()).unwrap();
        assert!(verify(&object, &parsed, &stranger).is_err());
    }

    #[test]
    fn bodies_that_are_not_json_are_refused() {
        assert!(request_object("PUT", "/", "a", "b", b"{nope").is_err());
        assert!(request_object("PUT", "/", "a", "b", b"").is_ok());
    }
}
