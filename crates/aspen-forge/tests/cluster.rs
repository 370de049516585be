//! Repositories on a real cluster: created, listed, shown, protected and deleted through the
//! forge's own protocol, with rights scoped by repository name.

use aspen_client::ClientError;
use aspen_core::ErrorCode;
use aspen_core::capability::Capability;
use aspen_forge::ForgeClient;
use aspen_testkit::harness::TestCluster;

fn cap(right: &str, scope: &str) -> Capability {
    Capability::App { app: "forge".into(), right: right.into(), scope: scope.as_bytes().to_vec() }
}

fn code(err: &ClientError) -> Option<ErrorCode> {
    err.aspen().map(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_are_created_listed_protected_and_deleted() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let forge = ForgeClient::new(&client);
    let created = forge.create_repo("repos/aspen", "Aspen itself", "main").await.unwrap();
    assert_eq!((created.default_branch.as_str(), created.refs.len()), ("main", 0));
    forge.create_repo("repos/other", "", "trunk").await.unwrap();
    forge.create_repo("scratch", "", "main").await.unwrap();

    let err = forge.create_repo("repos/aspen", "", "main").await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    for bad in ["repos/../x", "x.git", "a//b", ""] {
        let err = forge.create_repo(bad, "", "main").await.unwrap_err();
        assert_eq!(code(&err), Some(ErrorCode::InvalidRequest), "{bad:?}: {err}");
    }
    let err = forge.create_repo("repos/bad-branch", "", "a..b").await.unwrap_err();
    assert!(err.to_string().contains("ref name"), "{err}");

    let (repos, more) = forge.list_repos("repos/", None, 10).await.unwrap();
    assert_eq!(repos.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["repos/aspen", "repos/other"]);
    assert!(!more);
    let (page, more) = forge.list_repos("", None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert!(more);
    let (rest, _) = forge.list_repos("", Some(&page[1].name), 10).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["scratch"]);

    let protected = forge.protect("repos/aspen", "main", true).await.unwrap();
    assert_eq!(protected.protected, ["main"]);
    assert_eq!(forge.protect("repos/aspen", "main", true).await.unwrap().protected, ["main"], "idempotent");
    assert!(forge.protect("repos/aspen", "main", false).await.unwrap().protected.is_empty());

    forge.delete_repo("scratch").await.unwrap();
    let err = forge.show_repo("scratch").await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = forge.delete_repo("scratch").await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forge_rights_are_scoped_by_repository_name() {
    let c = TestCluster::start(1).await;
    let root = ForgeClient::new(&c.node_client(0).await);
    root.create_repo("repos/a/x", "", "main").await.unwrap();
    root.create_repo("repos/b/y", "", "main").await.unwrap();

    let reader = ForgeClient::new(&c.client_with_caps(0, vec![cap("read", "repos/a/")]).await);
    assert_eq!(reader.show_repo("repos/a/x").await.unwrap().name, "repos/a/x");
    let err = reader.show_repo("repos/b/y").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    let err = reader.list_repos("repos/", None, 10).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "listing beyond its scope: {err}");
    assert_eq!(reader.list_repos("repos/a/", None, 10).await.unwrap().0.len(), 1);
    let err = reader.create_repo("repos/a/new", "", "main").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "read is not admin: {err}");
    let err = reader.protect("repos/a/x", "main", true).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");

    let admin = ForgeClient::new(&c.client_with_caps(0, vec![cap("admin", "repos/a/"), cap("read", "repos/a/")]).await);
    admin.create_repo("repos/a/new", "", "main").await.unwrap();
    let err = admin.create_repo("repos/b/new", "", "main").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    admin.delete_repo("repos/a/new").await.unwrap();
    let err = admin.delete_repo("repos/b/y").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");

    // A KV right is no forge right, and the forge's records are not the token's to read.
    let kv_only = c.client_with_caps(0, vec![Capability::Read(Vec::new())]).await;
    let err = ForgeClient::new(&kv_only).show_repo("repos/a/x").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
}
