//! Where the Dapr sidecar's gRPC API listens. Follows the Dapr SDK convention:
//! `DAPR_GRPC_ENDPOINT` (`host:port`, `http://host:port`, `dns:///host:port`) overrides
//! `127.0.0.1:$DAPR_GRPC_PORT`.

use http::Uri;

/// Why a `DAPR_GRPC_ENDPOINT` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "TLS endpoints ({0}) are not supported; the sidecar is reached in plaintext on the pod's loopback"
    )]
    Tls(String),
    #[error("unsupported scheme {0:?}; use host:port or http://host:port")]
    Scheme(String),
    #[error("{0:?} is not a host:port address")]
    Invalid(String),
}

/// Parses a `DAPR_GRPC_ENDPOINT` value into the `http://host:port` URI tonic dials.
/// Without a port, port 80 is assumed, as the Dapr SDKs do for plaintext.
pub fn parse(endpoint: &str) -> Result<Uri, EndpointError> {
    let trimmed = endpoint.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => match trimmed.strip_prefix("dns:") {
            Some(rest) => ("dns".to_owned(), rest),
            None => ("http".to_owned(), trimmed),
        },
    };
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = match scheme.as_str() {
        "http" => authority,
        // dns:///host:port names the default resolver; dns://server/host:port names another.
        "dns" => authority.rsplit('/').next().unwrap_or_default(),
        "https" => return Err(EndpointError::Tls(endpoint.to_owned())),
        other => return Err(EndpointError::Scheme(other.to_owned())),
    };
    if query
        .split('&')
        .any(|kv| kv.eq_ignore_ascii_case("tls=true"))
    {
        return Err(EndpointError::Tls(endpoint.to_owned()));
    }
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '@']) {
        return Err(EndpointError::Invalid(endpoint.to_owned()));
    }
    let uri: Uri = format!("http://{authority}")
        .parse()
        .map_err(|_| EndpointError::Invalid(endpoint.to_owned()))?;
    match uri.port_u16() {
        Some(_) => Ok(uri),
        None => format!("http://{authority}:80")
            .parse()
            .map_err(|_| EndpointError::Invalid(endpoint.to_owned())),
    }
}

/// The sidecar URI from the two settings: the endpoint when given, else loopback on `port`.
pub fn resolve(endpoint: Option<&Uri>, port: u16) -> Uri {
    match endpoint {
        Some(uri) => uri.clone(),
        None => Uri::builder()
            .scheme("http")
            .authority(format!("127.0.0.1:{port}"))
            .path_and_query("/")
            .build()
            .expect("loopback with a u16 port is a valid URI"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_sdk_forms() {
        for (input, want) in [
            ("localhost:50001", "http://localhost:50001/"),
            ("http://localhost:50001", "http://localhost:50001/"),
            ("HTTP://10.0.0.1:3", "http://10.0.0.1:3/"),
            ("dns:///dapr.local:50001", "http://dapr.local:50001/"),
            ("dns://8.8.8.8/dapr.local:50001", "http://dapr.local:50001/"),
            ("[::1]:50001", "http://[::1]:50001/"),
            ("http://sidecar?tls=false", "http://sidecar:80/"),
        ] {
            assert_eq!(parse(input).unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn refuses_tls_and_nonsense() {
        assert!(matches!(
            parse("https://dapr.example.com"),
            Err(EndpointError::Tls(_))
        ));
        assert!(matches!(
            parse("localhost:50001?tls=true"),
            Err(EndpointError::Tls(_))
        ));
        assert!(matches!(
            parse("unix:///tmp/dapr.sock"),
            Err(EndpointError::Scheme(_))
        ));
        for bad in ["", "http://", "host:notaport", "user@host:1", "a/b:1"] {
            assert!(
                matches!(parse(bad), Err(EndpointError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn falls_back_to_loopback_port() {
        assert_eq!(resolve(None, 50001).to_string(), "http://127.0.0.1:50001/");
        let endpoint = parse("sidecar:1").unwrap();
        assert_eq!(resolve(Some(&endpoint), 50001), endpoint);
    }
}
