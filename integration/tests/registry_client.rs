//! The `orca-registry` client against Debian's docker-registry with TLS (a
//! test CA in a certs dir), basic auth, token auth (our ES256 token
//! server), a mirror for a fake host name, and a fake registry answering
//! 500s and garbage.
//!
//! Run: `cargo test -p orca-integration --test registry_client`
//! (needs docker-registry, skopeo, openssl, htpasswd; no root).

use std::collections::BTreeMap;

use bytes::Bytes;
use orca_integration::registry_auth::{
    Auth, FakeRegistry, Misbehaviour, Pki, SecureRegistry, TokenServer,
};
use orca_integration::Registry;
use orca_registry::{Client, Credentials, Error, HostsConfig, Platform, Reference, Repository};

fn hosts() -> HostsConfig {
    HostsConfig {
        system_roots: false,
        ..Default::default()
    }
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: user.into(),
        password: password.into(),
    }
}

/// Resolves busybox and downloads config + layers (verified), in parallel.
async fn pull_all(repo: &Repository) -> Result<(String, u64), Error> {
    let r = repo.resolve(&Platform::host()).await?;
    let mut descs = vec![r.image.config.clone()];
    descs.extend(r.image.layers.iter().cloned());
    let sizes = repo
        .for_each_blob(&descs, 3, |_, d, mut s| async move {
            let mut n = 0u64;
            while let Some(c) = s.next_chunk().await? {
                n += c.len() as u64;
            }
            assert_eq!(n, d.size);
            Ok::<_, Error>(n)
        })
        .await?;
    Ok((r.manifest.digest, sizes.iter().sum()))
}

fn busybox_at(addr: &str) -> Reference {
    Reference::parse(&format!("{addr}/library/busybox:latest")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_needs_its_ca_from_the_certs_dir() {
    let pki = Pki::new();
    let reg = SecureRegistry::start(Auth::None, Some(&pki), None);
    let addr = reg.addr();
    let r = busybox_at(&addr);

    // With the CA in <certs>/<host:port>/ca.crt: verified HTTPS works.
    let certs = pki.certs_dir_for(&addr);
    let client = Client::new(HostsConfig {
        certs_dir: Some(certs.path().to_path_buf()),
        ..hosts()
    })
    .unwrap();
    let (digest, bytes) = pull_all(&client.repository(&r, Credentials::Anonymous))
        .await
        .expect("pull over TLS with the test CA");
    assert!(digest.starts_with("sha256:"));
    assert!(bytes > 100_000, "busybox layer downloaded ({bytes} bytes)");

    // Without it: a clear TLS error, no silent fallback to plain HTTP even
    // though the host is loopback.
    let empty = tempfile::tempdir().unwrap();
    let client = Client::new(HostsConfig {
        certs_dir: Some(empty.path().to_path_buf()),
        ..hosts()
    })
    .unwrap();
    let err = client
        .repository(&r, Credentials::Anonymous)
        .resolve(&Platform::host())
        .await
        .expect_err("an unknown CA must be refused");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Tls(_)),
        "want a TLS error, got {err:?}"
    );
    assert!(
        msg.contains("UnknownIssuer") || msg.contains("certificate"),
        "{msg}"
    );
    assert!(
        msg.contains("ca.crt"),
        "the error says where a CA goes: {msg}"
    );

    // Listed as insecure (Docker semantics): HTTPS without verification.
    let client = Client::new(HostsConfig {
        insecure: vec![addr.clone()],
        ..hosts()
    })
    .unwrap();
    let (d2, _) = pull_all(&client.repository(&r, Credentials::Anonymous))
        .await
        .expect("insecure registry over unverified HTTPS");
    assert_eq!(d2, digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry() {
    let reg = SecureRegistry::start(
        Auth::Basic {
            user: "alice".into(),
            password: "s3cret".into(),
        },
        None,
        None,
    );
    let addr = reg.addr();
    let r = busybox_at(&addr);
    let client = Client::new(hosts()).unwrap();

    let err = pull_all(&client.repository(&r, Credentials::Anonymous))
        .await
        .expect_err("anonymous pull of a basic-auth registry");
    assert!(err.is_unauthorized(), "{err:?}");
    assert_eq!(err.to_string(), "no basic auth credentials");

    let err = client
        .ping(&addr, &basic("alice", "wrong"))
        .await
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("login attempt to http://{addr}/v2/ failed with status: 401 Unauthorized")
    );
    client.ping(&addr, &basic("alice", "s3cret")).await.unwrap();

    let repo = client.repository(&r, basic("alice", "s3cret"));
    pull_all(&repo).await.expect("pull with basic credentials");

    // Push: a streamed (PATCH) blob and a monolithic one, then HEAD.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let desc = orca_registry::Descriptor::new(
        "application/octet-stream",
        &orca_integration::sha256_digest(&data),
        data.len() as u64,
    );
    assert_eq!(repo.blob_exists(&desc.digest).await.unwrap(), None);
    let chunks: Vec<Result<Bytes, Error>> = data
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    repo.push_blob_stream(&desc, Box::pin(futures_util::stream::iter(chunks)))
        .await
        .expect("streamed upload");
    assert_eq!(
        repo.blob_exists(&desc.digest).await.unwrap(),
        Some(data.len() as u64)
    );
    let small = b"hello registry".to_vec();
    let sdesc = orca_registry::Descriptor::new(
        "application/octet-stream",
        &orca_integration::sha256_digest(&small),
        small.len() as u64,
    );
    repo.push_blob(&sdesc, Bytes::from(small)).await.unwrap();
    assert!(repo.blob_exists(&sdesc.digest).await.unwrap().is_some());
    // A descriptor that does not match the data is refused before upload.
    let bad = orca_registry::Descriptor::new("x", &sdesc.digest, 3);
    assert!(repo
        .push_blob(&bad, Bytes::from_static(b"abc"))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_dance_pull_and_cross_repo_push() {
    let pki = Pki::new();
    let tokens = TokenServer::start(&pki, "bob", "hunter2");
    let reg = SecureRegistry::start(
        Auth::Token {
            realm: tokens.realm(),
        },
        None,
        Some(&pki),
    );
    let addr = reg.addr();
    let r = busybox_at(&addr);
    let client = Client::new(hosts()).unwrap();

    // Anonymous: the token server gives a token without access.
    let err = pull_all(&client.repository(&r, Credentials::Anonymous))
        .await
        .expect_err("anonymous token has no access");
    assert!(err.is_unauthorized(), "{err:?}");

    // Wrong password: the token server's refusal.
    let err = pull_all(&client.repository(&r, basic("bob", "nope")))
        .await
        .expect_err("wrong password");
    assert!(err.is_unauthorized(), "{err:?}");
    assert!(
        err.to_string().contains("incorrect username or password"),
        "{err}"
    );

    let repo = client.repository(&r, basic("bob", "hunter2"));
    let (digest, _) = pull_all(&repo).await.expect("pull with a bearer token");
    let seen = tokens.requests();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("bob service=orca-test-registry")
                && l.contains("repository:library/busybox:pull")),
        "token requests: {seen:?}"
    );
    // Tokens are cached per scope: one token for the whole pull.
    let bob_pulls = seen
        .iter()
        .filter(|l| l.starts_with("bob ") && l.ends_with("repository:library/busybox:pull"))
        .count();
    assert_eq!(bob_pulls, 1, "token requests: {seen:?}");
    client.ping(&addr, &basic("bob", "hunter2")).await.unwrap();
    assert!(client
        .ping(&addr, &basic("bob", "nope"))
        .await
        .unwrap_err()
        .is_unauthorized());

    // Push to another repository: layers mounted across repositories,
    // config and manifest re-used, then resolvable with the same digest.
    let resolved = repo.resolve(&Platform::host()).await.unwrap();
    let dst_ref = Reference::parse(&format!("{addr}/test/copy:v1")).unwrap();
    let dst = client.repository(&dst_ref, basic("bob", "hunter2"));
    for l in &resolved.image.layers {
        assert_eq!(dst.blob_exists(&l.digest).await.unwrap(), None);
        assert!(
            dst.mount_blob(l, "library/busybox").await.unwrap(),
            "mounted {}",
            l.digest
        );
        assert!(dst.blob_exists(&l.digest).await.unwrap().is_some());
    }
    let config = repo
        .fetch_blob_bytes(&resolved.image.config, 1 << 20)
        .await
        .unwrap();
    dst.push_blob(&resolved.image.config, config).await.unwrap();
    let pushed = dst
        .push_manifest(
            "v1",
            &resolved.manifest.media_type,
            resolved.manifest.bytes.clone(),
        )
        .await
        .unwrap();
    assert_eq!(pushed, resolved.manifest.digest);
    let back = dst.resolve(&Platform::host()).await.unwrap();
    assert_eq!(back.manifest.digest, digest);
    assert!(tokens
        .requests()
        .iter()
        .any(|l| l.contains("repository:test/copy:pull,push")
            && l.contains("repository:library/busybox:pull")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_a_fake_host_name() {
    let (mirror, _) = Registry::with_busybox();
    // A dead mirror first: skipped; then the live one serves.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let fake = "registry.orca-test.invalid";
    let client = Client::new(HostsConfig {
        mirrors: BTreeMap::from([(
            fake.to_string(),
            vec![
                format!("http://{dead_addr}"),
                format!("http://{}", mirror.addr()),
            ],
        )]),
        ..hosts()
    })
    .unwrap();
    let r = Reference::parse(&format!("{fake}/library/busybox")).unwrap();
    let repo = client.repository(&r, Credentials::Anonymous);
    let resolved = repo
        .resolve(&Platform::host())
        .await
        .expect("served by the mirror");
    assert_eq!(resolved.endpoint, mirror.addr());
    let (_, bytes) = pull_all(&repo).await.unwrap();
    assert!(bytes > 100_000);

    // Without the mirror, the fake host does not resolve: a clear error.
    let client = Client::new(hosts()).unwrap();
    let err = client
        .repository(&r, Credentials::Anonymous)
        .resolve(&Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.to_string().contains(fake), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_registries_give_clear_errors() {
    let client = Client::new(hosts()).unwrap();

    let fake = FakeRegistry::start(Misbehaviour::ServerError);
    let r = busybox_at(&fake.addr());
    let err = client
        .repository(&r, Credentials::Anonymous)
        .resolve(&Platform::host())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500), "{err:?}");
    assert!(
        err.to_string().contains("500 Internal Server Error"),
        "{err}"
    );
    assert!(err.to_string().contains("something broke"), "{err}");

    let fake = FakeRegistry::start(Misbehaviour::GarbageManifest);
    let r = busybox_at(&fake.addr());
    let err = client
        .repository(&r, Credentials::Anonymous)
        .resolve(&Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidResponse(_)), "{err:?}");
    assert!(err.to_string().contains("not JSON"), "{err}");

    let fake = FakeRegistry::start(Misbehaviour::WrongBlob);
    let r = busybox_at(&fake.addr());
    let repo = client.repository(&r, Credentials::Anonymous);
    let resolved = repo.resolve(&Platform::host()).await.unwrap();
    let err = repo
        .fetch_blob_bytes(&resolved.image.config, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
}
