//! Image manifests and indexes (OCI image spec, and Docker's schema 2 with its manifest list):
//! the few fields a seed needs, parsed strictly enough that a layer it names is a real digest.

use serde::Deserialize;
use shoal_p2p::Digest;

/// What an image reference resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The digest of what the reference named (an index, or a single manifest).
    pub digest: Digest,
    /// One manifest per platform resolved (one for a single-manifest image).
    pub manifests: Vec<Manifest>,
}

impl Image {
    /// Every layer of every manifest, each once, in order.
    pub fn layers(&self) -> Vec<&Descriptor> {
        let mut seen = std::collections::HashSet::new();
        self.manifests
            .iter()
            .flat_map(|m| &m.layers)
            .filter(|d| seen.insert(d.digest))
            .collect()
    }
}

/// One platform's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The platform its index named it for (none for a single-manifest image).
    pub platform: Option<Platform>,
}

/// A blob a manifest names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// `os/architecture[/variant]`, as `--platform` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('/');
        let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
            return Err(format!("platform {s:?} is not os/architecture[/variant]"));
        };
        let variant = parts.next().map(str::to_owned);
        if os.is_empty() || architecture.is_empty() || parts.next().is_some() {
            return Err(format!("platform {s:?} is not os/architecture[/variant]"));
        }
        Ok(Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant,
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// An index's entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    pub digest: Digest,
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Entry {
    /// Whether a resolve for `platforms` (all when empty) takes this entry. Attestations and
    /// other non-images (platform `unknown/unknown`) are never taken when resolving all.
    pub fn wanted(&self, platforms: &[Platform]) -> bool {
        let Some(p) = &self.platform else {
            return platforms.is_empty();
        };
        if platforms.is_empty() {
            return p.os != "unknown" && p.architecture != "unknown";
        }
        platforms.iter().any(|want| {
            want.os == p.os
                && want.architecture == p.architecture
                && (want.variant.is_none() || want.variant == p.variant)
        })
    }
}

/// A parsed manifest or index.
pub(crate) enum Parsed {
    Manifest(Manifest),
    Index(Vec<Entry>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Entry>>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Parses a manifest or an index; the reason when it is neither (Docker's schema 1, say).
pub(crate) fn parse(body: &[u8]) -> Result<Parsed, String> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a manifest: {e}"))?;
    if raw.schema_version != Some(2) {
        return Err(format!(
            "schema version {:?} is not supported (only 2)",
            raw.schema_version
        ));
    }
    let media_type = raw.media_type.unwrap_or_default();
    match (raw.manifests, raw.config, raw.layers) {
        (Some(entries), None, None)
            if media_type.is_empty() || INDEX_TYPES.contains(&media_type.as_str()) =>
        {
            Ok(Parsed::Index(entries))
        }
        (None, Some(config), Some(layers)) if !INDEX_TYPES.contains(&media_type.as_str()) => {
            Ok(Parsed::Manifest(Manifest {
                media_type,
                config,
                layers,
                platform: None,
            }))
        }
        _ => Err(format!(
            "neither an image manifest nor an index ({media_type:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn manifests_and_indexes_parse_and_the_rest_is_refused() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"c","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}}]}}"#,
            digest('a'),
            digest('b')
        );
        let Ok(Parsed::Manifest(m)) = parse(m.as_bytes()) else {
            panic!("a manifest")
        };
        assert_eq!(m.layers[0].size, 3);
        let i = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[{{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            digest('c'),
            digest('d')
        );
        let Ok(Parsed::Index(entries)) = parse(i.as_bytes()) else {
            panic!("an index")
        };
        assert!(entries[0].wanted(&[]));
        assert!(!entries[1].wanted(&[]), "attestations are left out");
        assert!(entries[0].wanted(&["linux/arm64".parse().unwrap()]));
        assert!(!entries[0].wanted(&["linux/amd64".parse().unwrap()]));
        assert!(!entries[0].wanted(&["linux/arm64/v7".parse().unwrap()]));
        for bad in [
            r#"{"schemaVersion":1,"fsLayers":[]}"#.to_string(),
            "not json".into(),
            r#"{"schemaVersion":2,"layers":[{"digest":"sha256:zz","size":1}]}"#.to_string(),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
    }
}
