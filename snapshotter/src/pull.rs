//! `shoal pull`: an image into containerd the way `ctr-remote rpull` does it, over containerd's
//! own API — the manifest and config are resolved through the node's registry mirror and written
//! to containerd's content store, every layer is prepared through the snapshotter with CRI's
//! labels (so the snapshotter reads it from the swarm and containerd fetches nothing), and the
//! image record is made. Everything written is held by a lease until the record holds it.
//!
//! A layer the snapshotter could not read itself (it answers with mounts instead) is unpacked
//! here into that snapshot's directory — with this pull's credentials, which the snapshotter
//! does not have — and committed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use shoal_seed::registry::{Credentials, Platform, Registry};
use tonic::Request;
use tonic::transport::Channel;

use crate::client::connect;
use crate::proto::content::content_client::ContentClient;
use crate::proto::content::{Info, InfoRequest, UpdateRequest, WriteAction, WriteContentRequest};
use crate::proto::images::images_client::ImagesClient;
use crate::proto::images::{CreateImageRequest, Image, UpdateImageRequest};
use crate::proto::leases::leases_client::LeasesClient;
use crate::proto::leases::{CreateRequest, DeleteRequest};
use crate::proto::snapshots::snapshots_client::SnapshotsClient;
use crate::proto::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest};
use crate::proto::types::Descriptor;
use crate::remote::{IMAGE_LAYERS, IMAGE_REF, LAYER_DIGEST, TARGET};

mod stage;

/// What to pull, and into which containerd.
pub struct Pull {
    /// containerd's socket.
    pub address: PathBuf,
    pub namespace: String,
    pub reference: String,
    pub platform: Platform,
    pub credentials: Credentials,
    pub snapshotter: String,
    /// The node's registry mirror.
    pub mirror: url::Url,
    /// The shoal snapshotter's own socket: the layers are made there first, so that containerd,
    /// which holds its metadata lock while its snapshotter prepares, only finds them made.
    pub stage_at: Option<PathBuf>,
    /// Lend `credentials` to the snapshotter for this image's layers (given on the command
    /// line: the snapshotter has no other way to them). Only to a socket owned by this user or
    /// root.
    pub lend: bool,
    /// Unpack every layer, even those the swarm could mount lazily (`--eager`).
    pub eager: bool,
}

/// One layer, done.
#[derive(Clone, Debug)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    /// Read by the snapshotter from the swarm (else unpacked here).
    pub by_snapshotter: bool,
    pub seconds: f64,
}

/// What a pull tells as it goes.
pub enum Event<'a> {
    /// The image's layers (digest, size), bottom first, before any is made.
    Layers(&'a [(String, u64)]),
    /// One layer, done.
    Done(&'a Layer),
}

/// The image pulled.
#[derive(Debug)]
pub struct Pulled {
    /// The name containerd lists it by.
    pub name: String,
    /// The manifest's digest.
    pub digest: String,
    pub layers: Vec<Layer>,
}

type Failure = String;

/// Pulls; `tell` hears of the layers, and of each as it is done.
pub async fn pull(p: &Pull, tell: impl Fn(Event<'_>)) -> Result<Pulled, Failure> {
    let (registry_host, repository, reference) = parse(&p.reference)?;
    let name = match reference.contains(':') {
        true => format!("{registry_host}/{repository}@{reference}"),
        false => format!("{registry_host}/{repository}:{reference}"),
    };
    shoal_p2p::install_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let base = crate::client::through_mirror(&p.mirror, &registry_host);
    let registry = Registry::new(base, http, p.credentials.clone());
    let (served, manifest) = registry
        .platform_manifest(&repository, &reference, &p.platform)
        .await
        .map_err(|e| format!("{}: {e}", p.reference))?;
    let config = registry
        .small_blob(&repository, manifest.config.digest)
        .await
        .map_err(|e| format!("{}: config: {e}", p.reference))?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "{}: the config lists {} layers, the manifest {}",
            p.reference,
            diff_ids.len(),
            manifest.layers.len()
        ));
    }
    let chain = chain_ids(&diff_ids);
    let sizes: Vec<(String, u64)> = manifest
        .layers
        .iter()
        .map(|l| (l.digest.to_string(), l.size))
        .collect();
    tell(Event::Layers(&sizes));

    let channel = connect(&p.address).await?;
    let lease = format!("shoal-pull-{}", &served.digest.to_string()[7..19]);
    let meta = Meta {
        namespace: p.namespace.clone(),
        lease: lease.clone(),
    };
    let mut leases = LeasesClient::new(channel.clone());
    leases
        .create(meta.req(CreateRequest {
            id: lease.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".into(), expiry())]),
        }))
        .await
        .map_err(|e| format!("containerd lease: {}", e.message()))?;
    let result = async {
        let mut content = ContentClient::new(channel.clone());
        let top = chain.last().cloned().unwrap_or_default();
        let config_labels = [(
            format!("containerd.io/gc.ref.snapshot.{}", p.snapshotter),
            top,
        )];
        write_content(
            &mut content,
            &meta,
            &manifest.config.digest.to_string(),
            &config,
            config_labels,
        )
        .await?;
        let manifest_labels = [(
            "containerd.io/gc.ref.content.config".to_owned(),
            manifest.config.digest.to_string(),
        )];
        write_content(
            &mut content,
            &meta,
            &served.digest.to_string(),
            &served.body,
            manifest_labels,
        )
        .await?;

        let layer_digests: Vec<String> = manifest
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect();
        let labels = |i: usize| {
            let mut labels = HashMap::from([
                (TARGET.to_owned(), chain[i].clone()),
                (LAYER_DIGEST.to_owned(), layer_digests[i].clone()),
                (IMAGE_REF.to_owned(), name.clone()),
                // From this layer up, as containerd lists them (as many as a label holds).
                (IMAGE_LAYERS.to_owned(), layers_label(&layer_digests[i..])),
                (
                    "containerd.io/snapshot/cri.manifest-digest".to_owned(),
                    served.digest.to_string(),
                ),
            ]);
            if p.eager {
                labels.insert(crate::remote::EAGER.to_owned(), "true".to_owned());
            }
            labels
        };
        let parent_of = |i: usize| match i {
            0 => String::new(),
            i => chain[i - 1].clone(),
        };
        let mut staged = Vec::new();
        if let Some(socket) = &p.stage_at {
            let lend = p.lend.then_some(&p.credentials);
            staged = stage::stage(
                socket,
                &p.snapshotter,
                chain.len(),
                &labels,
                &parent_of,
                lend,
            )
            .await;
        }
        let mut snapshots = SnapshotsClient::new(channel.clone());
        let mut layers = Vec::new();
        for (i, desc) in manifest.layers.iter().enumerate() {
            let started = Instant::now();
            let (parent, labels) = (parent_of(i), labels(i));
            let key = format!("{lease}/{i} {}", chain[i]);
            let prepared = snapshots
                .prepare(meta.req(PrepareSnapshotRequest {
                    snapshotter: p.snapshotter.clone(),
                    key: key.clone(),
                    parent,
                    labels,
                }))
                .await;
            let by_snapshotter = match prepared {
                Err(s) if s.code() == tonic::Code::AlreadyExists => true,
                Err(s) => return Err(format!("layer {}: prepare: {}", desc.digest, s.message())),
                Ok(resp) => {
                    let dir = upper_dir(&resp.into_inner().mounts).ok_or_else(|| {
                        format!("layer {}: no directory to unpack into", desc.digest)
                    })?;
                    let resp = registry
                        .blob(&repository, desc.digest)
                        .await
                        .map_err(|e| format!("layer {}: {e}", desc.digest))?;
                    let diff_id = crate::remote::unpack_checked(resp, &layer_digests[i], dir)
                        .await
                        .map_err(|e| format!("layer {}: {e}", desc.digest))?;
                    if diff_id != diff_ids[i] {
                        return Err(format!(
                            "layer {} unpacks to {diff_id}, the config says {}",
                            desc.digest, diff_ids[i]
                        ));
                    }
                    snapshots
                        .commit(meta.req(CommitSnapshotRequest {
                            snapshotter: p.snapshotter.clone(),
                            name: chain[i].clone(),
                            key,
                            labels: HashMap::from([(TARGET.to_owned(), chain[i].clone())]),
                        }))
                        .await
                        .map_err(|e| format!("layer {}: commit: {}", desc.digest, e.message()))?;
                    false
                }
            };
            let layer = Layer {
                digest: layer_digests[i].clone(),
                size: desc.size,
                by_snapshotter,
                seconds: started.elapsed().as_secs_f64()
                    + staged.get(i).copied().unwrap_or_default(),
            };
            tell(Event::Done(&layer));
            layers.push(layer);
        }

        let image = Image {
            name: name.clone(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: served.media_type.clone(),
                digest: served.digest.to_string(),
                size: i64::try_from(served.body.len()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(channel.clone());
        match images
            .create(meta.req(CreateImageRequest {
                image: Some(image.clone()),
            }))
            .await
        {
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                images
                    .update(meta.req(UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                    }))
                    .await
                    .map_err(|e| format!("image record: {}", e.message()))?;
            }
            Err(s) => return Err(format!("image record: {}", s.message())),
            Ok(_) => {}
        }
        Ok(layers)
    }
    .await;
    let _ = leases
        .delete(meta.req(DeleteRequest {
            id: lease,
            sync: false,
        }))
        .await;
    Ok(Pulled {
        name,
        digest: served.digest.to_string(),
        layers: result?,
    })
}

/// The `cri.image-layers` label: the digests, as many as fit in one label (containerd refuses a
/// label whose key and value pass 4096 bytes, and cuts the list there as this does).
fn layers_label(digests: &[String]) -> String {
    let mut value = String::new();
    for d in digests {
        let more = usize::from(!value.is_empty()) + d.len();
        if IMAGE_LAYERS.len() + value.len() + more > crate::snapshots::MAX_LABEL_BYTES {
            break;
        }
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str(d);
    }
    value
}

/// containerd's namespace and this pull's lease, on every request.
struct Meta {
    namespace: String,
    lease: String,
}

impl Meta {
    fn req<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Ok(v) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", v);
        }
        if let Ok(v) = self.lease.parse() {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }
}

/// A lease that outlives a pull that died only by an hour.
fn expiry() -> String {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Writes a blob to containerd's content store in one message (it checks size and digest),
/// unless it is there already.
async fn write_content(
    content: &mut ContentClient<Channel>,
    meta: &Meta,
    digest: &str,
    data: &[u8],
    labels: impl IntoIterator<Item = (String, String)>,
) -> Result<(), Failure> {
    let labels: HashMap<String, String> = labels.into_iter().collect();
    let present = content
        .info(meta.req(InfoRequest {
            digest: digest.to_owned(),
        }))
        .await
        .is_ok();
    if present {
        // There already (pulled before, by another snapshotter say): it must still hold this
        // pull's references, or garbage collection takes the snapshots.
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = Info {
            digest: digest.to_owned(),
            labels: labels.clone(),
            ..Default::default()
        };
        content
            .update(meta.req(UpdateRequest {
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|e| format!("content {digest}: labels: {}", e.message()))?;
        return Ok(());
    }
    let message = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: format!("shoal-pull-{digest}"),
        total: i64::try_from(data.len()).unwrap_or(i64::MAX),
        expected: digest.to_owned(),
        offset: 0,
        data: data.to_vec(),
        labels,
    };
    let req = meta.req(futures_util::stream::iter([message]));
    let mut responses = match content.write(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(format!("content {digest}: {}", s.message())),
    };
    match responses.message().await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(format!("content {digest}: {}", s.message())),
    }
}

/// The directory a layer is unpacked into: a bind mount's source, or an overlay's upper dir.
fn upper_dir(mounts: &[crate::proto::types::Mount]) -> Option<PathBuf> {
    let m = mounts.first()?;
    match m.r#type.as_str() {
        "bind" => Some(PathBuf::from(&m.source)),
        "overlay" => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from),
        _ => None,
    }
}

/// `rootfs.diff_ids` of an image config.
fn diff_ids(config: &[u8]) -> Result<Vec<String>, Failure> {
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| format!("image config: {e}"))?;
    value["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("image config without rootfs.diff_ids")?
        .iter()
        .map(|d| {
            d.as_str()
                .map(str::to_owned)
                .ok_or_else(|| "a diff id that is not text".to_owned())
        })
        .collect()
}

/// The chain ids of a layer stack: the first layer's diff id, then
/// `sha256(parent chain id + " " + diff id)`.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        out.push(crate::remote::chain_id(out.last().map(String::as_str), d));
    }
    out
}

/// `host/repository[:tag|@digest]` → (host, repository, tag or digest).
pub fn parse(reference: &str) -> Result<(String, String, String), String> {
    let (registry, repository) = crate::remote::split_reference(reference)
        .ok_or_else(|| format!("{reference:?} is not an image reference"))?;
    let rest = reference.rsplit('/').next().unwrap_or(reference);
    let tag = match (reference.split_once('@'), rest.rsplit_once(':')) {
        (Some((_, digest)), _) => digest.to_owned(),
        (None, Some((_, tag))) => tag.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    Ok((registry, repository, tag))
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    #[test]
    fn the_layers_label_fits_in_a_label() {
        let digests: Vec<String> = (0..100).map(|i| format!("sha256:{i:064x}")).collect();
        let label = layers_label(&digests);
        assert!(IMAGE_LAYERS.len() + label.len() <= 4096);
        assert_eq!(label.split(',').count(), 56);
        assert_eq!(layers_label(&digests[..2]), digests[..2].join(","));
    }

    #[test]
    fn references_and_chain_ids() {
        assert_eq!(
            parse("127.0.0.1:5000/test/cat:v1").unwrap(),
            ("127.0.0.1:5000".into(), "test/cat".into(), "v1".into())
        );
        assert_eq!(parse("alpine").unwrap().2, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse(&format!("r.io/x@{d}")).unwrap().2, d);
        // containerd's own example: the chain id of two layers.
        let ids = chain_ids(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(ids[0], "sha256:a");
        assert_eq!(
            ids[1],
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(b"sha256:a sha256:b"))
            )
        );
    }
}
