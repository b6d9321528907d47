//! `http://host[:port][/path]` URLs of the webhook that call records are POSTed to: parsed
//! once when the configuration is validated, used by the records' webhook task.

/// An `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address.
    pub host: String,
    /// Port (80 when the URL names none).
    pub port: u16,
    /// Path and query (`/` when the URL names none).
    pub path: String,
}

impl WebhookUrl {
    /// Parses `url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(if url.starts_with("https://") {
                "https is not built in: use an http:// URL (a local TLS-terminating forwarder)"
                    .into()
            } else {
                "must be an http:// URL".into()
            });
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("must name a host (and no user info)".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("bad port {port:?}"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err("must name a host and a non-zero port".into());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// The Host header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = WebhookUrl::parse("http://collector.local:8081/cdr?x=1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("collector.local", 8081, "/cdr?x=1")
        );
        let url = WebhookUrl::parse("http://10.0.0.5").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        let url = WebhookUrl::parse("http://[::1]:9000/r").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (url.host.as_str(), url.authority()),
            ("::1", "[::1]:9000".to_owned())
        );
        assert!(
            WebhookUrl::parse("https://x/")
                .unwrap_err()
                .contains("https")
        );
        assert!(WebhookUrl::parse("ftp://x/").is_err());
        assert!(WebhookUrl::parse("http://x:notaport/").is_err());
        assert!(WebhookUrl::parse("http:///path").is_err());
    }
}
