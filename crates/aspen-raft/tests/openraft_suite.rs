//! openraft's own storage conformance suite, run against the redb log store and state
//! machine.

use aspen_raft::TypeConfig;
use aspen_raft::storage::{LogStore, StateMachine, open_storage};
use openraft::StorageError;
use openraft::errors::ErrorSource;
use openraft::testing::log::{StoreBuilder, Suite};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let fail = |e: String| StorageError::read(ErrorSource::from_string(e));
        let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
        let storage = open_storage(dir.path()).map_err(|e| fail(e.to_string()))?;
        Ok((dir, storage.log, storage.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_storage_passes_the_openraft_suite() {
    Suite::test_all(RedbBuilder).await.expect("storage suite");
}
