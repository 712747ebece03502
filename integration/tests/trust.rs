//! The trust boundary (issue 13): the upload server and the scheduler answer only members of
//! the cluster, and a member is who its certificate says, nothing more.

use std::sync::Arc;
use std::time::Duration;

use shoal_integration::cluster::{Cluster, ClusterCa};
use shoal_integration::origin::TestOrigin;
use shoal_integration::random_bytes;
use shoal_p2p::cluster::Cluster as Identity;
use shoal_p2p::peer::{PeerClient, PieceError};
use shoal_p2p::proto::scheduler_client::SchedulerClient;
use shoal_p2p::proto::{AnnounceRequest, AttachRequest, Host};
use shoal_p2p::{Digest, TaskId};

/// A scheduler client of `cluster` as `identity` (none: plaintext).
fn scheduler(
    cluster: &Cluster,
    identity: Option<&Arc<Identity>>,
) -> SchedulerClient<tonic::transport::Channel> {
    let url = format!("http://127.0.0.1:{}", cluster.scheduler_port);
    let channel =
        shoal_p2p::swarm::scheduler_channel(&url, Duration::from_secs(3), identity).unwrap();
    SchedulerClient::new(channel)
}

async fn attach(
    client: &mut SchedulerClient<tonic::transport::Channel>,
    id: &str,
    seed: bool,
) -> Result<(), tonic::Status> {
    let host = Host {
        id: id.into(),
        upload_addr: "127.0.0.1:9".into(),
        upload_slots: 1,
        seed,
        ..Default::default()
    };
    let call = client.attach(AttachRequest { host: Some(host) });
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
    }
}

/// Issue 13 (1, 3): anyone who could reach port 4000 read every piece of a private layer, and
/// anyone who could reach 8002 attached (as a seed, even). A stranger (no certificate, or one
/// from another CA) now gets neither; a member, the control, gets both.
#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_reads_no_piece_and_cannot_attach() {
    shoal_p2p::install_crypto_provider();
    let size = 3 << 20;
    let data = random_bytes(size);
    let origin = TestOrigin::builder()
        .file("/private", data.clone())
        .start()
        .await;
    let cluster = Cluster::builder().daemons(1).start().await;
    let url = origin.url("/private");
    let results = cluster.get_all(&url).await;
    assert!(results[0].1.status.success());
    let socket = cluster.daemons[0].data_dir.join("store").join("shoal.sock");
    let status = shoal_p2p::api::LocalClient::new(socket)
        .status()
        .await
        .unwrap();
    let upload = status.host.unwrap().upload_addr;
    let task = TaskId::for_url(&url.parse().unwrap(), &Default::default());
    let layout = shoal_p2p::piece::Layout::for_length(size as u64).unwrap();
    let range = layout.range(0);
    let expected = Digest::piece(&data[range.start as usize..range.end as usize]);

    let other_ca = ClusterCa::init(&cluster.dir().join("other-ca"));
    let stranger = other_ca.member("eve", &["seed"]);
    let member = cluster.ca().member("friend", &["node"]);
    let timeout = Duration::from_secs(5);
    let fetch = |client: PeerClient| {
        let (upload, task, range) = (upload.clone(), task.clone(), range.clone());
        async move { client.fetch_piece(&upload, &task, 0, range, expected).await }
    };
    // Plain HTTP, and TLS with another cluster's certificate: nothing.
    for (who, client) in [
        ("no certificate", PeerClient::new(timeout, None)),
        ("another CA's", PeerClient::new(timeout, Some(&stranger))),
    ] {
        assert_eq!(
            fetch(client).await.err(),
            Some(PieceError::Unreachable),
            "{who}"
        );
    }
    let piece = fetch(PeerClient::new(timeout, Some(&member)))
        .await
        .unwrap();
    assert_eq!(Digest::piece(&piece), expected, "a member reads the piece");
    // The same at the scheduler.
    for (who, identity) in [("no certificate", None), ("another CA's", Some(&stranger))] {
        let refused = attach(&mut scheduler(&cluster, identity), "eve", true).await;
        assert!(refused.is_err(), "{who} attached");
    }
    attach(&mut scheduler(&cluster, Some(&member)), "friend", false)
        .await
        .unwrap();
}

/// Issue 13 (3): one hand-made `Attach` with `seed = true` received other users' registry
/// credentials in seed jobs, and any host could speak for any other. A member is now only the
/// host its certificate names, and a seed only if the certificate says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_is_only_who_its_certificate_says() {
    let cluster = Cluster::builder().daemons(1).start().await;
    let mallory = cluster.ca().member("mallory", &["node"]);
    let mut client = scheduler(&cluster, Some(&mallory));
    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(
        code(attach(&mut client, "mallory", true).await),
        Some(tonic::Code::PermissionDenied),
        "a node's certificate made a seed"
    );
    assert_eq!(
        code(attach(&mut client, "seed", true).await),
        Some(tonic::Code::PermissionDenied),
        "attached as the real seed"
    );
    let announce = client
        .announce(AnnounceRequest {
            host_id: "d0".into(),
            task_id: format!("sha256:{}", "ab".repeat(32)),
            pieces: None,
            failure: None,
            withdrawn: false,
        })
        .await;
    assert_eq!(
        announce.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied),
        "announced for another host"
    );
    attach(&mut client, "mallory", false).await.unwrap();
}
